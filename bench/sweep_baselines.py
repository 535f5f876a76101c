"""Baseline sweep: run `memrl train` for controller x memory x horizon x seed, then evaluate every run on fresh
episodes and print a Markdown table. Not a pytest file (no test_ prefix): run it directly.

    python bench/sweep_baselines.py --device cuda --parallel 8 --gpus 0,1,2,3,4,5,6,7
    python bench/sweep_baselines.py --horizons 10 --configs gru --budget-steps 20000 --device cpu   # smoke
    python bench/sweep_baselines.py --dry-run            # print the commands only
    python bench/sweep_baselines.py ... -- --num-envs 256 --lr 1e-3   # anything after -- goes to every train

Configs are `<controller>` (no memory) or `<controller>+mem` (PseudoMode memory), controller in
mamba2 | gru | lstm. Each run gets its own directory RUNS_DIR/<env>-h<H>-<config>-s<seed>/ holding what
`memrl train` writes there plus train.log (its stdout/stderr), eval.json (`memrl eval --json` on
--eval-episodes fresh episodes) and sweep_result.json (this script's row; --skip-existing reuses it).
RUNS_DIR/results.md and RUNS_DIR/results.json collect all rows.

What it relies on from memrl (checked at start where it can be):
  * `python -m memrl train` flags --out --device --seed --controller --horizon --total-steps --target-success
    --no-memory [--no-progress] [--env]; a missing optional flag is dropped, a missing required one stops
    the sweep before anything runs;
  * the run directory gets checkpoint.pt and metrics.jsonl (one JSON object per line with "env_steps",
    optionally "wall" and "eval_success"); the last stdout line of train starts "done: <N> env steps" and
    the header says "device <dev>,";
  * `python -m memrl eval CHECKPOINT --episodes N --seed S --device D --json` prints one JSON object as
    its last line with "success_rate", "episodes" and "device".
Anything missing is reported in the row's status instead of stopping the sweep.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

CONTROLLERS = ("mamba2", "gru", "lstm")
DEFAULT_CONFIGS = "mamba2+mem,mamba2,gru+mem,gru,lstm+mem,lstm"
REQUIRED_FLAGS = ("--out", "--device", "--seed", "--controller", "--horizon", "--total-steps", "--target-success",
                  "--no-memory")
EVAL_SEED = 20_251_127  # fresh episodes: never a training or in-training eval seed


@dataclass
class Run:
    env: str
    horizon: int
    controller: str
    memory: bool
    seed: int
    run_dir: str
    command: list = field(default_factory=list)
    # filled in after the run
    status: str = "not run"
    returncode: int | None = None
    success: float = float("nan")
    eval_episodes: int = 0
    env_steps: int | None = None
    wall_s: float = float("nan")
    train_wall_s: float = float("nan")
    device: str = ""
    solved_in_training: bool | None = None

    @property
    def config(self) -> str:
        return self.controller + ("+mem" if self.memory else "")


# ----------------------------------------------------------------------------------------------- planning
def parse_configs(text: str) -> list[tuple[str, bool]]:
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        controller, _, suffix = item.partition("+")
        if controller not in CONTROLLERS or suffix not in ("", "mem"):
            raise SystemExit(f"--configs: bad config {item!r}; use <controller> or <controller>+mem with "
                             f"controller in {'|'.join(CONTROLLERS)}")
        out.append((controller, suffix == "mem"))
    if not out:
        raise SystemExit("--configs: no config given")
    return out


def parse_ints(name: str, text: str, minimum: int) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise SystemExit(f"{name}: expected integers >= {minimum}, got {text!r}")
    return values


def train_help() -> str:
    res = subprocess.run([sys.executable, "-m", "memrl", "train", "--help"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"`python -m memrl train --help` failed:\n{res.stderr}")
    return res.stdout


def plan(args, help_text: str) -> list[Run]:
    missing = [f for f in REQUIRED_FLAGS if f not in help_text]
    if missing:
        raise SystemExit(f"`memrl train` lacks the flags {missing}; this sweep needs them")
    if args.env != "DelayedCue" and "--env" not in help_text:
        raise SystemExit(f"--env {args.env}: `memrl train` has no --env flag yet, so only DelayedCue can be swept")
    extra = list(args.train_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    runs = []
    for horizon in parse_ints("--horizons", args.horizons, 2):
        for controller, memory in parse_configs(args.configs):
            for seed in parse_ints("--seeds", args.seeds, 0):
                name = f"{args.env}-h{horizon}-{controller}{'_mem' if memory else ''}-s{seed}"
                run = Run(args.env, horizon, controller, memory, seed, os.path.join(args.runs_dir, name))
                cmd = [sys.executable, "-m", "memrl", "train", "--out", run.run_dir, "--device", args.device,
                       "--seed", str(seed), "--controller", controller, "--horizon", str(horizon),
                       "--total-steps", str(args.budget_steps), "--target-success", str(args.target_success)]
                if args.env != "DelayedCue":
                    cmd += ["--env", args.env]
                cmd.append("--overwrite")  # a re-run replaces that run (--skip-existing keeps it instead)
                if not memory:
                    cmd.append("--no-memory")
                if "--no-progress" in help_text:
                    cmd.append("--no-progress")
                run.command = cmd + extra
                runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------- running
def _child_env(gpu: str | None, threads: int | None) -> dict:
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


def _run_logged(cmd: list, log_path: str, env: dict, timeout: float | None) -> tuple[int | None, float]:
    """Run cmd with stdout+stderr appended to log_path; kill its process group on timeout. (returncode, wall s)."""
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGINT first: `memrl train` stops cleanly and keeps its last periodic checkpoint. The group is
            # the child's own session, so only what this script started is signalled.
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    return rc, time.perf_counter() - t0


def read_train_results(run: Run) -> None:
    """env_steps, trainer wall time and device from the run directory (metrics.jsonl, train.log)."""
    rows = []
    try:
        with open(os.path.join(run.run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
    except OSError:
        pass
    steps = [r for r in rows if isinstance(r.get("env_steps"), (int, float))]
    if steps:
        run.env_steps = int(steps[-1]["env_steps"])
        if isinstance(steps[-1].get("wall"), (int, float)):
            run.train_wall_s = float(steps[-1]["wall"])
    log = ""
    try:
        with open(os.path.join(run.run_dir, "train.log"), errors="replace") as f:
            log = f.read()
    except OSError:
        pass
    done = re.findall(r"^done: (\d+) env steps.*solved=(True|False)", log, re.M)
    if done:
        run.env_steps = int(done[-1][0])
        run.solved_in_training = done[-1][1] == "True"
    dev = re.findall(r"device (\S+?), run dir", log)
    if dev:
        run.device = dev[-1]


def evaluate_run(run: Run, args, env: dict) -> None:
    ckpt = os.path.join(run.run_dir, "checkpoint.pt")
    if not os.path.exists(ckpt):
        run.status += ", no checkpoint"
        return
    cmd = [sys.executable, "-m", "memrl", "eval", ckpt, "--episodes", str(args.eval_episodes), "--seed",
           str(EVAL_SEED), "--device", args.device, "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    with open(os.path.join(run.run_dir, "eval.log"), "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("{")]
    if res.returncode != 0 or not lines:
        run.status += f", eval failed (rc {res.returncode})"
        return
    out = json.loads(lines[-1])
    with open(os.path.join(run.run_dir, "eval.json"), "w") as f:
        json.dump(out, f, indent=1)
    run.success = float(out.get("success_rate", float("nan")))
    run.eval_episodes = int(out.get("episodes", 0))
    run.device = run.device or str(out.get("device", ""))


def execute(run: Run, args, gpus: "queue.Queue | None", threads: int | None) -> Run:
    cached = os.path.join(run.run_dir, "sweep_result.json")
    if args.skip_existing and os.path.exists(cached):
        with open(cached) as f:
            old = json.load(f)
        if old.get("command") == run.command:
            return Run(**old)
    gpu = gpus.get() if gpus is not None else None
    try:
        os.makedirs(run.run_dir, exist_ok=True)
        env = _child_env(gpu, threads)
        rc, run.wall_s = _run_logged(run.command, os.path.join(run.run_dir, "train.log"), env, args.timeout)
        run.returncode = rc
        read_train_results(run)
        if rc is None:
            run.status = f"timeout ({args.timeout:.0f} s)"
        elif rc == 0:
            run.status = "solved" if run.solved_in_training else "budget spent"
        else:
            run.status = f"train failed (rc {rc}, see train.log)"
        evaluate_run(run, args, env)
    finally:
        if gpus is not None:
            gpus.put(gpu)
    if gpu is not None:
        run.device += f" (GPU {gpu})"
    with open(cached, "w") as f:
        json.dump(asdict(run), f, indent=1)
    return run


# ----------------------------------------------------------------------------------------------- report
def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(runs: list[Run], target: float) -> str:
    head = ("| env | H | config | seed | success (fresh eps) | env steps | wall s | steps/s | device | status "
            "| command |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in runs:
        rate = "-" if math.isnan(r.train_wall_s) or not r.env_steps else \
            f"{r.env_steps / max(r.train_wall_s, 1e-9):,.0f}"
        succ = "-" if math.isnan(r.success) else f"{r.success:.3f} / {r.eval_episodes}" + (
            " ✓" if r.success >= target else "")
        cmd = shlex.join(["python", *r.command[1:]])
        rows.append(f"| {r.env} | {r.horizon} | {r.config} | {r.seed} | {succ} | {_fmt(r.env_steps, ',d')} | "
                    f"{_fmt(r.wall_s, '.1f')} | {rate} | {r.device or '-'} | {r.status} | `{cmd}` |")
    return "\n".join([head, *rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default="runs/sweep", help="parent of the run directories (default runs/sweep)")
    p.add_argument("--device", default="auto", help="passed to train and eval: auto, cpu, cuda, mps (default auto)")
    p.add_argument("--env", default="DelayedCue", help="task (needs `memrl train --env` unless DelayedCue)")
    p.add_argument("--horizons", default="200,1000", help="comma-separated (default 200,1000)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated (default {DEFAULT_CONFIGS})")
    p.add_argument("--budget-steps", type=int, default=20_000_000, help="--total-steps of every run (default 2e7)")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds (default 1)")
    p.add_argument("--target-success", type=float, default=0.99, help="stop a run at this eval success")
    p.add_argument("--eval-episodes", type=int, default=1000, help="fresh episodes for the final eval")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once (default 1)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids handed out to parallel runs "
                                                "(CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3")
    p.add_argument("--threads", type=int, default=0, help="OMP threads per run (default: cores / parallel)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a training is killed")
    p.add_argument("--skip-existing", action="store_true", help="reuse a run's sweep_result.json if its command "
                                                                 "is unchanged")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra flags for every `memrl train`")
    args = p.parse_args(argv)
    if args.parallel < 1 or args.budget_steps < 1 or args.eval_episodes < 1:
        raise SystemExit("--parallel, --budget-steps and --eval-episodes must be >= 1")

    runs = plan(args, train_help())
    if args.dry_run:
        print("\n".join(shlex.join(r.command) for r in runs))
        return 0
    gpus = None
    if args.gpus:
        gpus = queue.Queue()
        for g in (s.strip() for s in args.gpus.split(",") if s.strip()):
            gpus.put(g)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else None)
    os.makedirs(args.runs_dir, exist_ok=True)
    print(f"sweep: {len(runs)} runs, {args.parallel} at a time, budget {args.budget_steps:,} steps, "
          f"python = {sys.executable}", flush=True)
    results: dict[int, Run] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(execute, r, args, gpus, threads): i for i, r in enumerate(runs)}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results[futures[fut]] = r
            print(f"  {r.env}-{r.horizon} {r.config} seed {r.seed}: {r.status}, success {_fmt(r.success, '.3f')}, "
                  f"{_fmt(r.env_steps, ',d')} steps, {_fmt(r.wall_s, '.1f')} s", flush=True)
    ordered = [results[i] for i in range(len(runs))]
    table = markdown_table(ordered, args.target_success)
    preamble = (f"Sweep of {time.strftime('%Y-%m-%d %H:%M %Z')} on {platform.node()}: budget {args.budget_steps:,} env "
                f"steps per run, target success {args.target_success}, final eval on {args.eval_episodes} fresh "
                f"episodes (greedy, eval seed {EVAL_SEED}); `python` = {sys.executable}.\n\n")
    with open(os.path.join(args.runs_dir, "results.md"), "w") as f:
        f.write(preamble + table + "\n")
    with open(os.path.join(args.runs_dir, "results.json"), "w") as f:
        json.dump([asdict(r) for r in ordered], f, indent=1)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
