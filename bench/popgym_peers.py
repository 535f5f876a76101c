"""memrl beside sb3-contrib's RecurrentPPO on POPGym envs, same machine, same wall budget, run side by side.

For each env the contenders (default memrl and RecurrentPPO; --contenders adds memrl's GRU / LSTM baselines) train
at the same time, one CPU thread each (so both see the same machine and the
same load), for --budget-min minutes of wall time; each evaluates on fresh episodes as it goes. The metric is
POPGym's MMER: the max over training of the mean evaluation return (POPGym scales returns to [-1, 1]).

    python bench/popgym_peers.py --envs popgym-RepeatPreviousEasy-v0,popgym-RepeatFirstEasy-v0 --budget-min 10

Needs the `popgym` and `sb3-contrib` packages (pip install popgym sb3-contrib). Writes OUT/<env>/<contender>/ and
OUT/peers.json, and prints a markdown table. One seed per run: say so when quoting it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time


def sb3_worker(env_id: str, out: str, budget_s: float, seed: int, eval_every: int, eval_episodes: int) -> None:
    """RecurrentPPO with its defaults (MlpLstmPolicy) on 8 envs; every eval_every steps the deterministic policy's
    mean return on fresh episodes goes to out/evals.jsonl; stops at the wall budget."""
    import gymnasium as gym
    import numpy as np
    import popgym  # noqa: F401  (registers the popgym-* ids)
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    start = time.perf_counter()
    log = open(os.path.join(out, "evals.jsonl"), "a")

    def evaluate(model) -> float:
        env = gym.make(env_id)
        if flat:
            env = gym.wrappers.FlattenObservation(env)
        total = 0.0
        for ep in range(eval_episodes):
            obs, _ = env.reset(seed=10_000 + ep)
            state, start_flag, done, ret = None, np.ones((1,), dtype=bool), False, 0.0
            while not done:
                action, state = model.predict(obs, state=state, episode_start=start_flag, deterministic=True)
                obs, r, term, trunc, _ = env.step(action)
                ret += float(r)
                done = term or trunc
                start_flag = np.zeros((1,), dtype=bool)
            total += ret
        return total / eval_episodes

    class Budget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval = eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += eval_every
                log.write(json.dumps({"env_steps": self.num_timesteps, "eval_return": evaluate(self.model),
                                      "wall": time.perf_counter() - start}) + "\n")
                log.flush()
            return time.perf_counter() - start < budget_s

    # sb3 takes Box and Discrete observations; a Tuple/Dict (Autoencode's) is flattened to one vector, discrete
    # parts one-hot (the encoding memrl's gymnasium adapter uses), and so is a MultiDiscrete (CountRecall's:
    # sb3-contrib 2.x's LSTM policy fails on it, "input_size should be of type int, got: int64")
    flat = not isinstance(gym.make(env_id).observation_space, (gym.spaces.Box, gym.spaces.Discrete))
    venv = make_vec_env(env_id, n_envs=8, seed=seed, wrapper_class=gym.wrappers.FlattenObservation if flat else None)
    model = RecurrentPPO("MlpLstmPolicy", venv, seed=seed, device="cpu")
    model.learn(total_timesteps=10**9, callback=Budget())
    log.write(json.dumps({"env_steps": model.num_timesteps, "eval_return": evaluate(model),
                          "wall": time.perf_counter() - start, "final": True}) + "\n")


def read_jsonl(path: str) -> list:
    rows = []
    if os.path.exists(path):
        for line in open(path):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by the stop
    return rows


def summary(rows: list, wall: float, budget_s: float) -> dict:
    """MMER etc. over the rows logged within the budget (by the run's own wall clock, "wall")."""
    rows = [r for r in rows if r.get("wall", 0.0) <= budget_s or r.get("final")]
    evals = [r for r in rows if isinstance(r.get("eval_return"), (int, float))]
    steps = max((r.get("env_steps", 0) for r in rows), default=0)
    return {"mmer": max((r["eval_return"] for r in evals), default=float("nan")),
            "final_return": evals[-1]["eval_return"] if evals else float("nan"), "evals": len(evals),
            "env_steps": steps, "wall_s": wall}


MEMRL_CONTENDERS = {  # name -> extra `memrl train` flags
    "memrl": [],                                           # Mamba2 + PseudoMode memory (the defaults)
    "memrl GRU": ["--controller", "gru", "--no-memory"],   # memrl's recurrent baselines, as POPGym's GRU / LSTM
    "memrl LSTM": ["--controller", "lstm", "--no-memory"],
}
SB3 = "sb3 RecurrentPPO"


def run_env(env_id: str, out: str, budget_s: float, seed: int, memrl_args: list, contenders: list) -> dict:
    """Train every contender on env_id at the same time, one process and CPU thread each, for budget_s of wall."""
    os.makedirs(out, exist_ok=True)
    env1 = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmds, dirs, commands = [], [], {}
    for name in contenders:
        d = os.path.join(out, name.replace(" ", "_"))
        os.makedirs(d, exist_ok=True)
        if name == SB3:
            cmd = [sys.executable, __file__, "--sb3-worker", env_id, "--out", d, "--budget-min", str(budget_s / 60),
                   "--seed", str(seed)]
        else:
            cmd = [sys.executable, "-m", "memrl", "train", "--env", env_id, "--device", "cpu", "--seed", str(seed),
                   "--out", d, "--overwrite", "--no-progress", *MEMRL_CONTENDERS[name], *memrl_args]
            commands[name] = " ".join(cmd[1:])
        cmds.append(cmd)
        dirs.append(d)
    t0 = time.perf_counter()
    logs = [open(os.path.join(out, f"{name.replace(' ', '_')}.log"), "w") for name in contenders]
    # SIGINT stops memrl (it keeps what it logged); a shell's background job would hand it an ignored SIGINT
    procs = [subprocess.Popen(cmd, env=env1, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
             for cmd, log in zip(cmds, logs)]
    walls = [None] * len(procs)
    while any(w is None for w in walls):
        for i, p in enumerate(procs):
            if walls[i] is None and p.poll() is not None:
                walls[i] = time.perf_counter() - t0
        for name, p in zip(contenders, procs):
            if name != SB3 and time.perf_counter() - t0 > budget_s and p.poll() is None:
                p.send_signal(signal.SIGINT)  # memrl stops on Ctrl-C and keeps what it logged
        if time.perf_counter() - t0 > budget_s + 300:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    walls[i] = time.perf_counter() - t0
        time.sleep(1)
    row = {"env": env_id, "memrl_commands": commands}
    for name, d, wall in zip(contenders, dirs, walls):
        rows = read_jsonl(os.path.join(d, "evals.jsonl" if name == SB3 else "metrics.jsonl"))
        row[name] = summary(rows, wall, budget_s)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="popgym-RepeatPreviousEasy-v0")
    ap.add_argument("--budget-min", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/popgym_peers")
    ap.add_argument("--sb3-worker", metavar="ENV_ID", help=argparse.SUPPRESS)
    ap.add_argument("--sb3-eval-every", type=int, default=20_000)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--contenders", default=f"memrl,{SB3}",
                    help=f"comma list, run side by side: {', '.join([*MEMRL_CONTENDERS, SB3])}")
    args, memrl_args = ap.parse_known_args()
    contenders = [c.strip() for c in args.contenders.split(",")]
    unknown = [c for c in contenders if c not in (*MEMRL_CONTENDERS, SB3)]
    if unknown:
        ap.error(f"--contenders: unknown {unknown}; choose from {[*MEMRL_CONTENDERS, SB3]}")
    if args.sb3_worker:
        return sb3_worker(args.sb3_worker, args.out, args.budget_min * 60, args.seed, args.sb3_eval_every,
                          args.eval_episodes)
    rows = [run_env(e, os.path.join(args.out, e), args.budget_min * 60, args.seed, memrl_args, contenders)
            for e in args.envs.split(",")]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, 1 thread per contender"
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump({"machine": machine, "budget_min": args.budget_min, "seed": args.seed, "rows": rows}, f, indent=1)
    print(f"{machine}; {args.budget_min:g} min wall each, run side by side; seed {args.seed}")
    print("| env | contender | MMER | final eval return | evals | env steps | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for name in contenders:
            s = r[name]
            print(f"| {r['env']} | {name} | {s['mmer']:.3f} | {s['final_return']:.3f} | {s['evals']} | "
                  f"{s['env_steps']:,} | {s['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
