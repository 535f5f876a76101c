"""memrl training throughput on one device: acting (eager vs CUDA graph), PPO update, whole train step.

    python3 bench/memrl_speed.py [--device cuda] [--envs 512,4096] [--controllers mamba2,gru] [--horizon 200]
                                 [--modes graph,eager-update,eager] [--profile]

Modes on CUDA: graph = acting and the PPO minibatch step replayed as CUDA graphs (the default), eager-update =
acting graphed, update eager (--no-update-graph), eager = both eager. --profile adds, per row, a torch.profiler
picture of one update and one rollout: the share of the wall time the GPU is busy (kernels) against host gaps,
and the top kernels.

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


MODES = {"graph": (True, True), "eager-update": (True, False), "eager": (False, False)}  # (acting, update) graphed


def profile(fn, device, top: int = 6) -> dict:
    """One call of fn under torch.profiler: wall ms, GPU-busy ms (kernels, memcpy, memset: self device time),
    their ratio, and the top kernels by device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    _sync(device)
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall = time.perf_counter() - t0
    # device-side events only (kernels, memcpy, memset): an eager op's CPU event carries its kernels' time too
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    busy = sum(e.self_device_time_total for e in events) / 1e3  # us -> ms
    events.sort(key=lambda e: -e.self_device_time_total)
    # host time of the trainer's phases (record_function labels "memrl.*" in memrl/ppo/trainer.py)
    phases = {e.key: round(e.cpu_time_total / 1e3, 2) for e in prof.key_averages()
              if e.key.startswith("memrl.") and e.device_type == DeviceType.CPU}
    return {"wall_ms": wall * 1e3, "gpu_busy_ms": busy, "busy_share": busy / (wall * 1e3), "host_ms": phases,
            "top": [(e.key[:70], round(e.self_device_time_total / 1e3, 2), e.count) for e in events[:top]]}


def measure(controller: str, num_envs: int, horizon: int, device: str, mode: str, repeats: int,
            with_profile: bool = False) -> dict:
    graph, update_graph = MODES[mode]
    cfg = Config(controller=controller, num_envs=num_envs, horizon=horizon, curriculum_start=0, device=device,
                 cuda_graph=graph, update_graph=update_graph, progress=False, tensorboard=False)
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
    trainer.update(roll)  # warm the update's kernels (and, graphed, capture it)
    trainer.update(roll)
    _sync(dev)
    act_min, act_mean = _timed(trainer.collect_rollout, dev, repeats)
    upd_min, upd_mean = _timed(lambda: trainer.update(roll), dev, repeats)
    step_min, step_mean = _timed(trainer.train_step, dev, repeats)
    row = {"controller": controller, "memory": cfg.memory, "num_envs": num_envs, "horizon": horizon,
           "device": str(dev), "mode": mode, "cuda_graph": trainer.actor.use_cuda_graph,
           "update_graph": trainer.updater.use_cuda_graph, "first_rollout_s": first,
           "acting_s": act_mean, "acting_sps": steps / act_min, "update_s": upd_mean, "update_sps": steps / upd_min,
           "train_step_s": step_mean, "train_step_sps": steps / step_min,
           "update_share": upd_min / (act_min + upd_min),
           "graphs_captured": trainer.actor.captures, "update_graphs_captured": trainer.updater.captures}
    if dev.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        if with_profile:
            row["profile_update"] = profile(lambda: trainer.update(roll), dev)
            row["profile_rollout"] = profile(trainer.collect_rollout, dev)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--envs", default="512,4096")
    ap.add_argument("--controllers", default="mamba2,gru")
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="graph,eager-update,eager", help=f"of {', '.join(MODES)} (CUDA)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler summary of one update and one rollout")
    args = ap.parse_args()
    rows = []
    for controller in args.controllers.split(","):
        for n in map(int, args.envs.split(",")):
            for mode in args.modes.split(","):
                row = measure(controller, n, args.horizon, args.device, mode, args.repeats, args.profile)
                rows.append(row)
                print(f"{controller:7s} envs={n:5d} {mode:12s} first={row['first_rollout_s']:6.2f}s "
                      f"acting={row['acting_sps'] / 1e6:7.3f}M/s ({row['acting_s'] * 1e3:7.1f} ms) "
                      f"update={row['update_sps'] / 1e6:7.3f}M/s ({row['update_s'] * 1e3:7.1f} ms) "
                      f"train_step={row['train_step_sps'] / 1e6:7.3f}M/s  update share={row['update_share']:.0%} "
                      f"mem={row.get('peak_mem_gb', 0):.2f}GB", flush=True)
                for part in ("profile_update", "profile_rollout"):
                    if part in row:
                        p = row[part]
                        print(f"    {part}: wall {p['wall_ms']:.1f} ms, GPU busy {p['gpu_busy_ms']:.1f} ms "
                              f"({p['busy_share']:.0%}); host ms per phase: {p['host_ms']}; top: "
                              + "; ".join(f"{k} {ms} ms x{c}" for k, ms, c in p["top"]), flush=True)
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
