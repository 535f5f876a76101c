"""`memrl` command line: train / eval / plot.

    memrl train [--out RUN_DIR] [--device auto] [--seed 1] ...      defaults solve DelayedCue-200; without --out,
                                                                    a new directory runs/ENV-H-CONTROLLER-N
    memrl train --out RUN_DIR --overwrite                           replace the run in RUN_DIR (else refused)
    memrl train --env CartPole-v1 --target-return 475               any gymnasium id (or module:Class), judged by
                                                                    returns; defaults: config.GYMNASIUM_DEFAULTS
    memrl train --resume RUN_DIR                                    continue exactly from RUN_DIR/checkpoint.pt
                                                                    (torch-native envs; gymnasium envs re-seed)
    memrl eval RUN_DIR/checkpoint.pt --episodes 1000 --seed 0 --json
    memrl plot RUN_DIR                                              writes RUN_DIR/curves.png
    torchrun --nproc-per-node=N -m memrl train ...                   data-parallel (docs/distributed.md)

Bad arguments, flags, paths and checkpoints are found before training starts and reported as one line
`memrl CMD: error: ...` (exit code 2). An exception raised once training runs keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import sys
import time

from .config import Config, ConfigError, defaults_for, field_docs

# train flags exposed on the command line: (flag, config field)
_TRAIN_FLAGS = ["env", "env_workers", "device", "out", "seed", "total_steps", "num_envs", "controller", "horizon", "num_cues", "noise",
                "target_success", "target_return", "eval_episodes", "lr", "update_epochs", "num_minibatches", "rollout_len", "burn_in",
                "ent_coef", "gate_coef", "target_kl", "d_model", "eval_interval", "checkpoint_interval",
                "curriculum_start", "curriculum_factor", "curriculum_success", "gate_penalty_after",
                "debug_nan_at_update"]
# what a resume cannot change: the shapes of the checkpoint's model, optimizer state and envs
_RESUME_FIXED = ("env", "env_workers", "num_envs", "num_cues", "controller", "memory", "d_model", "n_layers", "d_state", "headdim",
                 "expand", "mem_slots", "mem_dim", "head_hidden")
_CHECKPOINT_ERRORS = (ValueError, OSError, RuntimeError, EOFError, pickle.UnpicklingError)  # unreadable or not ours


class UsageError(Exception):
    """Bad arguments, flags, paths or checkpoints: reported as one line `memrl CMD: error: ...`, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(field: str) -> str:
    return "--no-memory" if field == "memory" else "--" + field.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memrl", description="Memory RL: PseudoMode memory + Mamba2 + recurrent PPO")
    sub = p.add_subparsers(dest="cmd", required=True)
    docs, defaults = field_docs(), {f.name: f.default for f in dataclasses.fields(Config)}
    t = sub.add_parser("train", help="train PPO (defaults solve DelayedCue-200)",
                       description="Train until greedy evaluation at the full horizon reaches --target-success (or "
                                   "its mean return --target-return) or --total-steps env steps are spent. A "
                                   "gymnasium --env has no horizon curriculum and other defaults (rollouts of 128 "
                                   "steps, 16 envs, 4 minibatches, 4 epochs, 100 eval episodes) unless given.")
    for name in _TRAIN_FLAGS:
        default = defaults[name]
        t.add_argument(_flag(name), type=type(default), default=None,
                       help=docs[name] + (f" (default {default})" if default != "" else ""))
    t.add_argument("--no-memory", action="store_true", help="disable the PseudoMode memory")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR/checkpoint.pt exactly (appends to its logs)")
    t.add_argument("--overwrite", action="store_true",
                   help="if --out already holds a run, delete the files memrl wrote there first (else refused)")
    t.add_argument("--no-progress", action="store_true",
                   help="no tqdm counter on a terminal (the per-evaluation and per-stage lines stay)")
    t.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, launch the acting loop's kernels eagerly instead of replaying one CUDA graph")
    t.add_argument("--no-update-graph", action="store_true",
                   help="on CUDA, launch the PPO minibatch step's kernels eagerly instead of replaying a CUDA graph")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    e = sub.add_parser("eval", help="evaluate a checkpoint on fresh episodes (greedy actions)", formatter_class=fmt,
                       description="Evaluate a checkpoint on fresh episodes of its full horizon.")
    e.add_argument("checkpoint", help="a checkpoint.pt written by memrl train")
    e.add_argument("--episodes", type=int, default=1000, help="fresh episodes to run (>= 1)")
    e.add_argument("--seed", type=int, default=0, help="seed of the episodes (and of the actions with --sample)")
    e.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    e.add_argument("--sample", action="store_true", help="sample actions instead of taking the argmax")
    e.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    pl = sub.add_parser("plot", help="write RUN_DIR/curves.png from RUN_DIR/metrics.jsonl", formatter_class=fmt,
                        description="Write the learning curves of a run to RUN_DIR/curves.png.")
    pl.add_argument("run_dir", help="a run directory of memrl train (with its metrics.jsonl)")
    return p


def _resolve(device: str):
    from .config import resolve_device
    try:
        return resolve_device(device)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _config(values: dict, given: dict, source: str | None = None) -> Config:
    """Config(**values); a field out of range -> UsageError naming its flag (or the checkpoint it came from)."""
    try:
        return Config(**values)
    except ConfigError as err:
        if source is None or err.field in given:
            raise UsageError(err.flag_message()) from None
        raise UsageError(f"{err} (in the config of {source})") from None


def _overrides(args) -> dict:
    overrides = {n: getattr(args, n) for n in _TRAIN_FLAGS if getattr(args, n) is not None}
    for flag, field in (("no_memory", "memory"), ("no_cuda_graph", "cuda_graph"), ("no_update_graph", "update_graph"),
                        ("no_progress", "progress")):
        if getattr(args, flag):
            overrides[field] = False
    if args.resume:
        overrides.setdefault("out", args.resume)
        if args.overwrite and os.path.abspath(overrides["out"]) == os.path.abspath(args.resume):
            raise UsageError(f"--overwrite would delete the run that --resume {args.resume} continues; give a "
                             f"new --out to continue it elsewhere")
    return overrides


def _train(args) -> int:
    """Under torchrun (WORLD_SIZE > 1) every rank runs this; only rank 0 prints, logs, plots and writes files."""
    from . import distributed as dist

    overrides = _overrides(args)
    # a resume's config is the checkpoint's; a new run takes the env's defaults where no flag is given
    cfg = None if args.resume else _config({**defaults_for(overrides.get("env", Config.env)), **overrides}, overrides)
    # the process group exists before the checkpoint can be broadcast, so a resume starts it for --device (or auto)
    device = _resolve(cfg.device if cfg else overrides.get("device", "auto"))
    try:
        dist.init(device)
    except ValueError as err:  # e.g. more processes than GPUs
        raise UsageError(str(err)) from None
    try:
        code = _train_ranks(args, dist, overrides, cfg)
    except BaseException:
        dist.teardown(wait=False)
        raise
    dist.teardown(wait=code != 130)  # after Ctrl-C (130) the ranks may have stopped at different points
    return code


def _read_resume(run_dir: str, overrides: dict, dist):
    """(checkpoint, config) of a resume, checked before anything starts."""
    from .ppo import PPOTrainer

    path = os.path.join(run_dir, "checkpoint.pt")
    if not dist.broadcast_object(os.path.exists(path)):  # rank 0's file decides for all ranks
        raise UsageError(f"--resume {run_dir}: no checkpoint at {path}")
    try:
        ckpt = PPOTrainer.read_checkpoint(path)
    except ValueError as err:  # another world size (the same on every rank)
        raise UsageError(str(err)) from None
    except _CHECKPOINT_ERRORS as err:
        raise UsageError(f"--resume {run_dir}: cannot read {path}: {err}") from None
    saved = ckpt["config"]
    for name in _RESUME_FIXED:
        if name in overrides and overrides[name] != saved[name]:
            raise UsageError(f"--resume {run_dir}: {_flag(name)} ({overrides[name]}) differs from the run's {name} "
                             f"= {saved[name]}; a resumed run keeps its model and env shapes (start a new run)")
    cfg = _config({**saved, **overrides}, overrides, path)
    _resolve(cfg.device)
    return ckpt, cfg


def _pick_run_dir(args, cfg: Config) -> str:
    """The run directory: a resume's own (appended to), a new one without --out, else --out if it holds no run
    (or --overwrite cleared it)."""
    from .rundir import clear_run, new_run_dir, run_files

    if args.resume and os.path.abspath(cfg.out) == os.path.abspath(args.resume):
        return args.resume
    if not cfg.out:
        task = f"{cfg.env}-{cfg.horizon}" if cfg.torch_native else cfg.env.replace(":", "-").replace("/", "-")
        return new_run_dir(f"{task}-{cfg.controller}")
    found = run_files(cfg.out)
    if found and not args.overwrite:
        raise UsageError(f"--out {cfg.out} already holds a run ({', '.join(found)}); continue it with --resume "
                         f"{cfg.out}, replace it with --overwrite, or leave out --out for a new directory")
    clear_run(cfg.out)
    return cfg.out


def _train_ranks(args, dist, overrides: dict, cfg: Config | None) -> int:
    from .ppo import PPOTrainer
    from .ppo.logger import RunLogger
    from .progress import Progress

    main_rank = dist.is_main()
    say = print if main_rank else (lambda *a, **k: None)
    ckpt_state = None
    if args.resume:
        ckpt_state, cfg = _read_resume(args.resume, overrides, dist)
    answer = None
    if main_rank:  # rank 0's filesystem decides (and only rank 0 writes)
        try:
            answer = _pick_run_dir(args, cfg)
        except UsageError as err:
            answer = err
    answer = dist.broadcast_object(answer)
    if isinstance(answer, UsageError):
        raise answer
    run_dir = answer
    cfg = dataclasses.replace(cfg, out=run_dir)
    trainer = PPOTrainer(cfg, run_dir=run_dir)
    if ckpt_state is not None:
        trainer.load_state_dict(ckpt_state)
        say(f"resumed {args.resume} at update {trainer.update_idx}, {trainer.env_steps} env steps")
        if not trainer.env.checkpointable:
            say(f"resume is not exact: the state of gymnasium env {cfg.env} cannot be saved, so its envs start fresh "
                f"episodes (re-seeded) and the recurrent state starts from zero; model, optimizer and counters are "
                f"restored")
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    logger = progress = None
    if main_rank:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({**cfg.to_dict(), **({"world_size": trainer.world} if trainer.world > 1 else {})}, f, indent=1)
        logger = RunLogger(run_dir, cfg.tensorboard)
        progress = Progress(trainer, bar=cfg.progress)
    ranks = f" x {trainer.world} ranks" if trainer.world > 1 else ""
    from .envs.gym_vector import GymVectorEnv
    kind = "gymnasium" if isinstance(trainer.env, GymVectorEnv) else "torch-native"
    task = f"{cfg.env}-{cfg.horizon}" if trainer.curriculum else f"{cfg.env} ({kind}, {trainer.env.obs_dim} obs)"
    say(f"memrl train: {task}, {cfg.controller}{' + PseudoMode memory' if cfg.memory else ''}, "
        f"{cfg.num_envs} envs{ranks}, rollouts of {trainer.rollout_len} steps, device {trainer.device}, "
        f"run dir {run_dir}")
    steps0 = trainer.env_steps
    t_start = time.perf_counter()
    try:
        code = _loop(trainer, logger, progress, ckpt, say)
        wall = time.perf_counter() - t_start
        if logger is not None:  # the session's training time: the done line below and the plot's title
            logger.log("session", trainer.env_steps, {"wall": wall, "session_steps": trainer.env_steps - steps0,
                                                      "code": code})
    finally:
        trainer.close()
        if logger is not None:
            logger.close()
    if main_rank:
        _report(trainer, ckpt, wall, trainer.env_steps - steps0)
    return code


def _loop(trainer, logger, progress, ckpt: str, say) -> int:
    """Train until solved or out of steps; the exit code (0, 3 after a non-finite value, 130 after Ctrl-C)."""
    from .ppo import NonFiniteError

    cfg = trainer.cfg
    try:
        while trainer.env_steps < cfg.total_steps and not trainer.solved:
            before = trainer.train_horizon
            stats = trainer.train_step()
            if logger is not None:
                logger.log("train", trainer.env_steps, stats)
            if progress is not None:
                progress.update(trainer, stats, before)
            if trainer.update_idx % cfg.checkpoint_interval == 0 or trainer.solved:
                trainer.save(ckpt)
    except NonFiniteError as err:  # raised on every rank alike (the finite checks are collective)
        kept = (f"The last good checkpoint is kept at {ckpt} (not overwritten)" if os.path.exists(ckpt) else
                "No checkpoint was written")
        say(f"\nmemrl train: error: training stopped: {err}. {kept}.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        say(f"\nmemrl train: interrupted; the last checkpoint is {ckpt}", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    trainer.save(ckpt)
    return 0


def _eval_summary(trainer) -> str:
    """The done line's evaluation: at the full horizon, or why there is none."""
    cfg, ev, h = trainer.cfg, trainer.last_eval, trainer.train_horizon
    stage = f"the curriculum stopped at horizon {h} of {cfg.horizon}"
    if ev is None:
        return "not evaluated" + (f" ({stage})" if h < cfg.horizon else "")
    at = ev.get("horizon", cfg.horizon)  # checkpoints of older runs: always the full horizon
    if ev["success_rate"] is None:  # an env without a success metric
        return f"eval mean return {ev['mean_return']:.3f} on {ev['episodes']} fresh episodes"
    text = f"eval success {ev['success_rate']:.3f} on {ev['episodes']} fresh episodes"
    if at == cfg.horizon:
        return text
    return f"not evaluated at horizon {cfg.horizon} ({stage}; last {text} at horizon {at})"


def _report(trainer, ckpt: str, wall: float, steps: int) -> None:
    from .plot import NothingToPlot, plot_run

    try:
        png = plot_run(trainer.run_dir)
    except NothingToPlot as err:
        png = f"none ({err})"
    except Exception as err:  # plotting is a convenience: never lose a finished run over it
        png = f"(no plot: {type(err).__name__}: {err})"
    mem = ""
    if trainer.device.type == "cuda":
        import torch
        mem = f", peak GPU memory {torch.cuda.max_memory_allocated(trainer.device) / 2**30:.1f} GiB"
    print(f"done: {trainer.env_steps} env steps ({steps} in {wall:.1f} s this session, {steps / max(wall, 1e-9):.0f} "
          f"steps/s overall{mem}), {_eval_summary(trainer)}, solved={trainer.solved}; checkpoint "
          f"{ckpt if os.path.exists(ckpt) else 'none'}; curves {png}")


def _eval(args) -> int:
    from .ppo import evaluate_policy, load_policy

    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    device = _resolve(args.device)
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"no checkpoint at {args.checkpoint}")
    try:
        model, cfg = load_policy(args.checkpoint, device)
    except _CHECKPOINT_ERRORS as err:
        raise UsageError(f"cannot read checkpoint {args.checkpoint}: {err}") from None
    res = evaluate_policy(model, dict(horizon=cfg.horizon, num_cues=cfg.num_cues, noise=cfg.noise), args.episodes,
                          args.seed, device, greedy=not args.sample, env_name=cfg.env)
    res.update({"checkpoint": args.checkpoint, "seed": args.seed, "device": str(device), "env": cfg.env,
                "horizon": cfg.horizon, "controller": cfg.controller, "memory": cfg.memory})
    if args.json:
        print(json.dumps(res))
    elif res["success_rate"] is None:
        print(f"{res['env']}: mean return {res['mean_return']:.4f} over {res['episodes']} episodes (seed {args.seed}, "
              f"{device})")
    else:
        print(f"{res['env']}-{res['horizon']}: success {res['success_rate']:.4f}, mean return "
              f"{res['mean_return']:.4f} over {res['episodes']} episodes (seed {args.seed}, {device})")
    return 0


def _plot(args) -> int:
    from .plot import NothingToPlot, plot_run

    try:
        print(plot_run(args.run_dir))
    except (NothingToPlot, OSError) as err:
        raise UsageError(str(err)) from None
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "plot": _plot}[args.cmd](args)
    except UsageError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises it alike; rank 0 says it
            print(f"memrl {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
