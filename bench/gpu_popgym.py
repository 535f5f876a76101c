"""memrl on the POPGym ports on one GPU: each env trained from scratch at --num-envs envs for --limit-s seconds.

    python3 bench/gpu_popgym.py [--envs popgym-RepeatPreviousEasy-v0,...] [--num-envs 4096] [--limit-s 120]
                                [memrl train flags ...]

Per env: MMER (the max over training of the mean return on fresh evaluation episodes, POPGym's metric), the
training wall time when it was first reached and when the evaluation return first came within 10% of the
distance from the first evaluation to the best ("to 0.9": returns may be negative, so 0.9 x best would not
do), the command's whole wall time (kernel compilation and graph capture included), env steps and env-steps/s.
Writes $OUT/gpu_popgym.json (or ./gpu_popgym.json) and prints a markdown table. One seed (--seed, default 0).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memrl.ppo.logger import read_metrics  # noqa: E402

EASY = ",".join(f"popgym-{e}Easy-v0" for e in ("RepeatPrevious", "RepeatFirst", "Autoencode", "CountRecall",
                                                  "PositionOnlyCartPole", "NoisyPositionOnlyCartPole"))


def summarise(rows: list, command_wall: float) -> dict:
    evals = [r for r in rows if isinstance(r.get("eval_return"), (int, float))]
    steps = max((r.get("env_steps", 0) for r in rows), default=0)
    sps = [r["sps"] for r in rows if "sps" in r]
    if not evals:
        return {"mmer": float("nan"), "evals": 0, "env_steps": steps, "command_wall_s": command_wall}
    best = max(evals, key=lambda r: r["eval_return"])
    first = evals[0]["eval_return"]
    near = first + 0.9 * (best["eval_return"] - first)
    reach = next(r for r in evals if r["eval_return"] >= near)
    return {"mmer": best["eval_return"], "wall_at_best_s": best["wall"], "wall_to_0.9_s": reach["wall"],
            "final_return": evals[-1]["eval_return"], "first_return": first, "evals": len(evals),
            "env_steps": steps, "train_wall_s": rows[-1].get("wall", float("nan")), "command_wall_s": command_wall,
            "median_sps": sorted(sps)[len(sps) // 2] if sps else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default=EASY)
    ap.add_argument("--num-envs", type=int, default=4096)
    ap.add_argument("--limit-s", type=float, default=120.0, help="wall time per env (the command's, SIGINT then)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", default="/tmp/gpu_popgym")
    args, extra = ap.parse_known_args()
    out_dir = os.environ.get("OUT", ".")
    results = []
    for env in args.envs.split(","):
        run = os.path.join(args.runs, env)
        cmd = [sys.executable, "-m", "memrl", "train", "--env", env, "--device", args.device, "--num-envs",
               str(args.num_envs), "--seed", str(args.seed), "--out", run, "--overwrite", "--no-progress", *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            log, _ = proc.communicate(timeout=args.limit_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # memrl stops on Ctrl-C and keeps what it logged
            log, _ = proc.communicate(timeout=60)
        wall = time.perf_counter() - t0
        logged = os.path.exists(os.path.join(run, "metrics.jsonl"))
        row = {"env": env, "command": " ".join(cmd[1:]), **summarise(read_metrics(run) if logged else [], wall)}
        results.append(row)
        print(f"{env}: {json.dumps({k: v for k, v in row.items() if k != 'command'})}", flush=True)
        if not logged or proc.returncode not in (0, -signal.SIGINT, 130):
            print(f"exit code {proc.returncode}; its output's end:\n{log[-2000:]}", flush=True)
    import torch
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "num_envs": args.num_envs,
            "limit_s": args.limit_s, "seed": args.seed,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    with open(os.path.join(out_dir, "gpu_popgym.json"), "w") as f:
        json.dump({"meta": meta, "rows": results}, f, indent=1)
    print(meta)
    print("| env | MMER | training s to 0.9 | training s to best | command wall s | env steps | env-steps/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['env']} | {r['mmer']:.3f} | {r.get('wall_to_0.9_s', float('nan')):.1f} | "
              f"{r.get('wall_at_best_s', float('nan')):.1f} | {r['command_wall_s']:.0f} | {r['env_steps']:,} | "
              f"{r.get('median_sps', float('nan')):,.0f} |")


if __name__ == "__main__":
    main()
