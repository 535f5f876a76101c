"""memrl training throughput on one device: acting (eager vs CUDA graph), PPO update, whole train step.

    python3 bench/memrl_speed.py [--device cuda] [--envs 512,4096] [--controllers mamba2,gru] [--horizon 200]

Each row builds a trainer with the default model and PPO settings (DelayedCue, curriculum off so rollouts
are `horizon` steps), warms it up (first rollout: kernel compilation, autotuning, graph capture; timed
separately), then times `--repeats` rollouts, PPO updates and full train steps (rollout + update), each
synchronised. env-steps/s = num_envs x horizon / seconds. Prints a table and writes JSON to
$OUT/memrl_speed.json (or ./memrl_speed.json).
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

from memrl.config import Config  # noqa: E402
from memrl.ppo import PPOTrainer  # noqa: E402
from timing import sync as _sync  # noqa: E402  (bench/ is the script's directory, first on sys.path)


def _timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), sum(times) / len(times)


def measure(controller: str, num_envs: int, horizon: int, device: str, graph: bool, repeats: int) -> dict:
    cfg = Config(controller=controller, num_envs=num_envs, horizon=horizon, curriculum_start=0, device=device,
                 cuda_graph=graph, progress=False, tensorboard=False)
    torch.manual_seed(0)
    trainer = PPOTrainer(cfg)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    steps = num_envs * trainer.rollout_len
    t0 = time.perf_counter()
    roll = trainer.collect_rollout()
    _sync(dev)
    first = time.perf_counter() - t0
    trainer.update(roll)  # warm the update's kernels
    _sync(dev)
    act_min, act_mean = _timed(trainer.collect_rollout, dev, repeats)
    upd_min, upd_mean = _timed(lambda: trainer.update(roll), dev, repeats)
    step_min, step_mean = _timed(trainer.train_step, dev, repeats)
    row = {"controller": controller, "memory": cfg.memory, "num_envs": num_envs, "horizon": horizon,
           "device": str(dev), "cuda_graph": trainer.actor.use_cuda_graph, "first_rollout_s": first,
           "acting_s": act_mean, "acting_sps": steps / act_min, "update_s": upd_mean, "update_sps": steps / upd_min,
           "train_step_s": step_mean, "train_step_sps": steps / step_min,
           "graphs_captured": trainer.actor.captures}
    if dev.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--envs", default="512,4096")
    ap.add_argument("--controllers", default="mamba2,gru")
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-eager", action="store_true", help="skip the eager-acting rows on CUDA")
    args = ap.parse_args()
    rows = []
    for controller in args.controllers.split(","):
        for n in map(int, args.envs.split(",")):
            graphs = [True] if args.no_eager else [True, False]
            for graph in graphs:
                row = measure(controller, n, args.horizon, args.device, graph, args.repeats)
                rows.append(row)
                print(f"{controller:7s} envs={n:5d} graph={str(row['cuda_graph']):5s} first={row['first_rollout_s']:6.2f}s "
                      f"acting={row['acting_sps'] / 1e6:7.3f}M/s ({row['acting_s'] * 1e3:7.1f} ms) "
                      f"update={row['update_sps'] / 1e6:7.3f}M/s ({row['update_s'] * 1e3:7.1f} ms) "
                      f"train_step={row['train_step_sps'] / 1e6:7.3f}M/s  mem={row.get('peak_mem_gb', 0):.2f}GB",
                      flush=True)
                if row["device"] == "cpu":
                    break  # no graphs on CPU: one row
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    out = os.path.join(os.environ.get("OUT", "."), "memrl_speed.json")
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print("wrote", out, meta)


if __name__ == "__main__":
    main()
