"""What `memrl train` shows while it runs.

One line on stdout per evaluation and per curriculum stage change, always (with --no-progress, or with stderr
redirected, these lines are all there is). On a terminal, also a tqdm counter of env steps on stderr (no total:
the run stops at the target success long before --total-steps) whose description is the curriculum stage
(training horizon / full horizon) and whose postfix holds the latest evaluation and the target.
"""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, trainer, bar: bool = True, stream=None):
        self.cfg = trainer.cfg
        stream = stream or sys.stderr
        self.bar = None
        self.eval = "-"
        if bar and stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(initial=trainer.env_steps, unit="step", unit_scale=True, dynamic_ncols=True, file=stream,
                            desc=self._stage(trainer))

    def _stage(self, trainer) -> str:
        return f"H {trainer.train_horizon}/{self.cfg.horizon}" if trainer.curriculum else self.cfg.env

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar
        else:
            print(line, flush=True)

    def update(self, trainer, stats: dict, horizon_before: int) -> None:
        """After trainer.train_step() returned `stats`; horizon_before: the training horizon before that step."""
        cfg = self.cfg
        head = f"update {stats['update']}, {trainer.env_steps} env steps, {trainer.wall_time:.1f} s"
        if "eval_return" in stats and "eval_success" not in stats:  # an env without a success metric: returns
            ev = trainer.last_eval
            what = "solved" if trainer.solved else "not solved"
            self.eval = f"{ev['mean_return']:.3g}"
            self._say(f"{head}: eval mean return {ev['mean_return']:.3f} on {ev['episodes']} fresh episodes ({what}; "
                      f"target {cfg.target_return:g})")
        elif "eval_success" in stats:
            ev, h = trainer.last_eval, stats["eval_horizon"]
            what = "curriculum stage" if h < cfg.horizon else "solved" if trainer.solved else "not solved"
            self.eval = f"{ev['success_rate']:.3f}@{h}"
            self._say(f"{head}: eval success {ev['success_rate']:.3f} on {ev['episodes']} fresh episodes at horizon "
                      f"{h} ({what}; target {cfg.target_success:g} at horizon {cfg.horizon})")
        if trainer.train_horizon != horizon_before:
            self._say(f"{head}: rollout success {stats['success']:.3f} at horizon {horizon_before} -> curriculum "
                      f"horizon {trainer.train_horizon} of {cfg.horizon}")
        if self.bar is not None:
            self.bar.set_description_str(self._stage(trainer), refresh=False)
            target = f"{cfg.target_success:g}@{cfg.horizon}" if trainer.curriculum else f"{cfg.target_return:g}"
            self.bar.set_postfix({"succ": f"{stats['success']:.2f}", "eval": self.eval,
                                  "target": target, "ret": f"{stats['return']:.2f}",
                                  "gate": f"{stats['gate_mean']:.3f}", "kl": f"{stats['approx_kl']:.4f}",
                                  "sps": f"{stats['sps']:.0f}"}, refresh=False)
            self.bar.update(trainer.env_steps - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
