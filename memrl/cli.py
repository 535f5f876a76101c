"""`memrl` command line: train / eval / plot.

    memrl train [--out RUN_DIR] [--device auto] [--seed 1] ...      defaults solve DelayedCue-200
    memrl train --resume RUN_DIR                                    continue exactly from RUN_DIR/checkpoint.pt
    memrl eval RUN_DIR/checkpoint.pt --episodes 1000 --seed 0 --json
    memrl plot RUN_DIR                                              writes RUN_DIR/curves.png
    torchrun --nproc-per-node=N -m memrl train ...                   data-parallel (docs/distributed.md)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import Config, field_docs

# train flags exposed on the command line: (flag, config field)
_TRAIN_FLAGS = ["env", "device", "out", "seed", "total_steps", "num_envs", "controller", "horizon", "num_cues", "noise",
                "target_success", "eval_episodes", "lr", "update_epochs", "num_minibatches", "rollout_len", "burn_in",
                "ent_coef", "gate_coef", "target_kl", "d_model", "eval_interval", "checkpoint_interval",
                "curriculum_start", "gate_penalty_after", "debug_nan_at_update"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memrl", description="Memory RL: PseudoMode memory + Mamba2 + recurrent PPO")
    sub = p.add_subparsers(dest="cmd", required=True)
    docs, defaults = field_docs(), Config()
    t = sub.add_parser("train", help="train PPO (defaults solve DelayedCue-200)")
    for name in _TRAIN_FLAGS:
        default = getattr(defaults, name)
        kw = {"choices": ["mamba2", "gru", "lstm"]} if name == "controller" else {}
        kw = {"choices": ["auto", "cpu", "cuda", "mps"]} if name == "device" else kw
        kw = {"choices": ["DelayedCue", "TMaze", "RepeatFirst"]} if name == "env" else kw
        t.add_argument("--" + name.replace("_", "-"), type=type(default), default=None,
                       help=f"{docs[name]} (default {default})", **kw)
    t.add_argument("--no-memory", action="store_true", help="disable the PseudoMode memory")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR/checkpoint.pt exactly")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, launch the acting loop's kernels eagerly instead of replaying one CUDA graph")
    e = sub.add_parser("eval", help="evaluate a checkpoint on fresh episodes (greedy actions)")
    e.add_argument("checkpoint")
    e.add_argument("--episodes", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    e.add_argument("--sample", action="store_true", help="sample actions instead of taking the argmax")
    e.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    pl = sub.add_parser("plot", help="write RUN_DIR/curves.png from RUN_DIR/metrics.jsonl")
    pl.add_argument("run_dir")
    return p


def _train(args) -> int:
    """Under torchrun (WORLD_SIZE > 1) every rank runs this; only rank 0 prints, logs, plots and writes files."""
    from . import distributed as dist
    from .config import resolve_device

    dist.init(resolve_device(args.device or Config.device))  # gloo only for cpu; NCCL + cuda:LOCAL_RANK for cuda
    try:
        code = _train_ranks(args, dist)
    except BaseException:
        dist.teardown(wait=False)
        raise
    dist.teardown(wait=code != 130)  # after Ctrl-C (130) the ranks may have stopped at different points
    return code


def _train_ranks(args, dist) -> int:
    from .ppo import NonFiniteError, PPOTrainer
    from .ppo.logger import RunLogger
    from .plot import plot_run

    main_rank = dist.is_main()
    say = print if main_rank else (lambda *a, **k: None)
    overrides = {n: getattr(args, n) for n in _TRAIN_FLAGS if getattr(args, n) is not None}
    if args.no_memory:
        overrides["memory"] = False
    if args.no_cuda_graph:
        overrides["cuda_graph"] = False
    if args.no_progress:
        overrides["progress"] = False
    if args.resume:
        path = os.path.join(args.resume, "checkpoint.pt")
        if not dist.broadcast_object(os.path.exists(path)):  # rank 0's file decides for all ranks
            say(f"memrl: no checkpoint at {path}", file=sys.stderr)
            return 2
        overrides.setdefault("out", args.resume)
        try:
            trainer = PPOTrainer.from_checkpoint(path, run_dir=overrides["out"], **overrides)
        except ValueError as err:  # e.g. another world size (the same on every rank)
            if main_rank:
                print(f"memrl: {err}", file=sys.stderr)
            return 2
        say(f"resumed {path} at update {trainer.update_idx}, {trainer.env_steps} env steps")
    else:
        trainer = PPOTrainer(Config(**overrides), run_dir=overrides.get("out", Config.out))
    cfg = trainer.cfg
    run_dir = trainer.run_dir
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    logger = None
    if main_rank:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({**cfg.to_dict(), **({"world_size": trainer.world} if trainer.world > 1 else {})}, f, indent=1)
        logger = RunLogger(run_dir, cfg.tensorboard)
    ranks = f" x {trainer.world} ranks" if trainer.world > 1 else ""
    say(f"memrl train: {cfg.env}-{cfg.horizon}, {cfg.controller}{' + PseudoMode memory' if cfg.memory else ''}, "
        f"{cfg.num_envs} envs{ranks}, rollouts of {trainer.rollout_len} steps, device {trainer.device}, "
        f"run dir {run_dir}")
    bar = None
    if cfg.progress and main_rank:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=trainer.env_steps, unit="step", unit_scale=True, dynamic_ncols=True)
    code = 0
    steps0 = trainer.env_steps
    t_start = time.perf_counter()
    try:
        while trainer.env_steps < cfg.total_steps and not trainer.solved:
            stats = trainer.train_step()
            if logger is not None:
                logger.log("train", trainer.env_steps, stats)
            if bar is not None:
                bar.update(trainer.env_steps - bar.n)
                post = {"ret": f"{stats['return']:.2f}", "succ": f"{stats['success']:.2f}",
                        "gate": f"{stats['gate_mean']:.3f}", "kl": f"{stats['approx_kl']:.4f}",
                        "sps": f"{stats['sps']:.0f}", "H": trainer.train_horizon}
                if "eval_success" in stats:
                    post["eval"] = f"{stats['eval_success']:.3f}"
                bar.set_postfix(post)
            if trainer.update_idx % cfg.checkpoint_interval == 0 or trainer.solved:
                trainer.save(ckpt)
    except NonFiniteError as err:  # raised on every rank alike (the finite checks are collective)
        say(f"\nmemrl: training stopped: {err}. The last good checkpoint is kept at {ckpt} "
            f"(not overwritten).", file=sys.stderr)
        code = 3
    except KeyboardInterrupt:
        say(f"\nmemrl: interrupted; the last checkpoint is {ckpt}", file=sys.stderr)
        code = 130
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    if code == 0:
        trainer.save(ckpt)
    wall = time.perf_counter() - t_start
    if not main_rank:
        return code
    try:
        png = plot_run(run_dir)
    except Exception as err:  # plotting is a convenience: never lose a run over it
        png = f"(no plot: {err})"
    sps = (trainer.env_steps - steps0) / max(wall, 1e-9)
    mem = ""
    if trainer.device.type == "cuda":
        import torch
        mem = f", peak GPU memory {torch.cuda.max_memory_allocated(trainer.device) / 2**30:.1f} GiB"
    print(f"done: {trainer.env_steps} env steps ({trainer.env_steps - steps0} in {wall:.1f} s this session, {sps:.0f} "
          f"steps/s overall{mem}), {_eval_summary(trainer)}, solved={trainer.solved}; checkpoint {ckpt}; "
          f"curves {png}")
    return code


def _eval_summary(trainer) -> str:
    """The done line's evaluation: at the full horizon, or why there is none."""
    cfg, ev, h = trainer.cfg, trainer.last_eval, trainer.train_horizon
    stage = f"the curriculum stopped at horizon {h} of {cfg.horizon}"
    if ev is None:
        return "not evaluated" + (f" ({stage})" if h < cfg.horizon else "")
    at = ev.get("horizon", cfg.horizon)  # checkpoints of older runs: always the full horizon
    text = f"eval success {ev['success_rate']:.3f} on {ev['episodes']} fresh episodes"
    if at == cfg.horizon:
        return text
    return f"not evaluated at horizon {cfg.horizon} ({stage}; last {text} at horizon {at})"


def _eval(args) -> int:
    from .config import resolve_device
    from .ppo import evaluate_policy, load_policy

    device = resolve_device(args.device)
    model, cfg = load_policy(args.checkpoint, device)
    res = evaluate_policy(model, dict(horizon=cfg.horizon, num_cues=cfg.num_cues, noise=cfg.noise), args.episodes,
                          args.seed, device, greedy=not args.sample, env_name=cfg.env)
    res.update({"checkpoint": args.checkpoint, "seed": args.seed, "device": str(device), "env": cfg.env,
                "horizon": cfg.horizon, "controller": cfg.controller, "memory": cfg.memory})
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['env']}-{res['horizon']}: success {res['success_rate']:.4f}, mean return "
              f"{res['mean_return']:.4f} over {res['episodes']} episodes (seed {args.seed}, {device})")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "train":
            return _train(args)
        if args.cmd == "eval":
            return _eval(args)
        from .plot import plot_run
        print(plot_run(args.run_dir))
        return 0
    except (ValueError, FileNotFoundError) as err:  # bad arguments or paths: one line, not a traceback
        print(f"memrl {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
