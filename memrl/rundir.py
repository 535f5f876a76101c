"""Run directories of `memrl train`: the files a run writes, a new directory per run, and no mixing of two runs."""
from __future__ import annotations

import os
import re

RUNS = "runs"
"""Parent of the new run directories made when no --out is given."""
RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "metrics.jsonl", "config.json", "curves.png")
"""Files memrl writes in a run directory (and TensorBoard events under tb/)."""
MARKERS = ("checkpoint.pt", "metrics.jsonl", "config.json")
"""A directory holding any of these holds a run."""
TB_EVENTS = re.compile(r"events\.out\.tfevents\..*")


def run_files(run_dir: str) -> list[str]:
    """The MARKERS present in run_dir (empty: no run there)."""
    return [name for name in MARKERS if os.path.exists(os.path.join(run_dir, name))]


def new_run_dir(stem: str, parent: str = RUNS) -> str:
    """Create and return parent/stem-N, N one more than the largest N of an existing parent/stem-N (from 1)."""
    os.makedirs(parent, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"-(\d+)")
    taken = [int(m.group(1)) for m in map(pattern.fullmatch, os.listdir(parent)) if m]
    n = max(taken, default=0) + 1
    while True:
        path = os.path.join(parent, f"{stem}-{n}")
        try:
            os.mkdir(path)  # fails if another run took the name meanwhile
            return path
        except FileExistsError:
            n += 1


def clear_run(run_dir: str) -> list[str]:
    """Delete the files memrl writes in run_dir (RUN_FILES, tb/ events; tb/ itself if then empty), nothing else.
    Returns the paths deleted."""
    gone = [os.path.join(run_dir, name) for name in RUN_FILES if os.path.isfile(os.path.join(run_dir, name))]
    tb = os.path.join(run_dir, "tb")
    if os.path.isdir(tb):
        gone += [os.path.join(tb, name) for name in os.listdir(tb) if TB_EVENTS.fullmatch(name)]
    for path in gone:
        os.remove(path)
    if os.path.isdir(tb) and not os.listdir(tb):
        os.rmdir(tb)
    return gone
