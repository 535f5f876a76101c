"""Data-parallel training throughput: env-steps/s of whole PPO train steps (rollout + update), all ranks together.

    torchrun --nproc-per-node=N bench/ddp_speed.py [--device cuda] [--envs 4096] [--horizon 200] [--steps 5]

Every rank steps `--envs` envs (weak scaling: the global batch grows with N). With N = 1 torchrun sets
WORLD_SIZE=1 and the trainer runs its plain single-process path, the baseline. Curriculum off (rollouts of
`--horizon` steps), evaluation off; two warm-up train steps (compilation, autotuning, graph capture), then
`--steps` timed ones. Rank 0 prints one line and appends it as JSON to $OUT/ddp_speed.jsonl (or ./).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memrl import distributed as dist  # noqa: E402
from memrl.config import Config  # noqa: E402
from memrl.ppo import PPOTrainer  # noqa: E402
from timing import sync  # noqa: E402  (bench/ is the script's directory, first on sys.path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--envs", type=int, default=4096)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    dist.init(args.device)
    cfg = Config(num_envs=args.envs, horizon=args.horizon, curriculum_start=0, device=args.device, progress=False,
                 tensorboard=False, eval_interval=10**9, eval_trigger=2.0)
    trainer = PPOTrainer(cfg)
    for _ in range(2):
        trainer.train_step()
    sync(trainer.device)
    dist.sum_values(0.0)  # all ranks start the clock together
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    sync(trainer.device)
    seconds = dist.mean_values(time.perf_counter() - t0)[0]
    world = trainer.world
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    ref = flat.clone()
    if world > 1:
        torch.distributed.broadcast(ref, src=0)
    params_identical = bool(torch.equal(flat, ref)) and dist.all_true(bool(torch.equal(flat, ref)))
    sps = args.envs * world * trainer.rollout_len * args.steps / seconds
    row = {"world_size": world, "envs_per_rank": args.envs, "horizon": args.horizon, "device": str(trainer.device),
           "gpu": torch.cuda.get_device_name() if trainer.device.type == "cuda" else None,
           "seconds_per_train_step": seconds / args.steps, "params_identical_across_ranks": params_identical, "env_steps_per_s": sps, "per_rank": sps / world,
           "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    if dist.is_main():
        print(f"world {world} x {args.envs} envs, H={args.horizon} on {row['gpu'] or row['device']}: "
              f"{seconds / args.steps * 1e3:.1f} ms per train step, {sps / 1e6:.3f} M env-steps/s "
              f"({sps / world / 1e6:.3f} M per rank); parameters identical on all ranks: {params_identical}", flush=True)
        with open(os.path.join(os.environ.get("OUT", "."), "ddp_speed.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    dist.teardown()


if __name__ == "__main__":
    main()
