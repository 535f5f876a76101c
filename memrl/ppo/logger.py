"""Run logging: one JSON object per line in RUN_DIR/metrics.jsonl, plus TensorBoard when installed."""
from __future__ import annotations

import json
import math
import os


class RunLogger:
    def __init__(self, run_dir: str, tensorboard: bool = True):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=os.path.join(run_dir, "tb"))
            except (ImportError, ModuleNotFoundError):
                self.tb = None

    def log(self, kind: str, step: int, metrics: dict) -> None:
        row = {"kind": kind, "env_steps": int(step)}
        row.update({k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    """All rows of RUN_DIR/metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
