"""Learning curves of a run: RUN_DIR/metrics.jsonl -> RUN_DIR/curves.png."""
from __future__ import annotations

import json
import os

from .ppo.logger import read_metrics


class NothingToPlot(ValueError):
    """The run logged no training rows (or has no metrics.jsonl)."""


def training_time(rows: list[dict]) -> str:
    """The training wall time of the run's sessions ("session" rows: the figure `memrl train` prints as done)."""
    walls = [r["wall"] for r in rows if r["kind"] == "session"]
    if not walls:
        return "training wall time not logged"
    return f"{sum(walls):.1f} s training wall time" + (f" in {len(walls)} sessions" if len(walls) > 1 else "")


def figure(run_dir: str):
    """The curves figure (success, or episode returns for an env without success; explained variance, gate mean, approx-KL vs env steps); NothingToPlot if the
    run logged no training rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        raise NothingToPlot(f"nothing logged: no {os.path.join(run_dir, 'metrics.jsonl')}")
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    if not train:
        raise NothingToPlot(f"{run_dir}/metrics.jsonl has no training rows to plot")
    cfg_path = os.path.join(run_dir, "config.json")
    horizon = None  # the full horizon, from config.json (without one, every evaluation counts as full-horizon)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            horizon = json.load(f)["horizon"]
    x = [r["env_steps"] / 1e6 for r in train]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    ax = axes[0, 0]
    if not any(r.get("success") == r.get("success") for r in train):  # all NaN: an env without success (returns)
        _plot_returns(ax, x, train)
    else:
        _plot_success(ax, x, train, horizon)
    axes[0, 1].plot(x, [r["explained_var"] for r in train])
    axes[0, 1].set_ylabel("explained variance")
    axes[1, 0].plot(x, [r["gate_mean"] for r in train])
    axes[1, 0].set_ylabel("write-gate mean")
    axes[1, 1].plot(x, [r["approx_kl"] for r in train])
    axes[1, 1].set_ylabel("approx KL")
    for a in axes[1]:
        a.set_xlabel("env steps (M)")
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: {train[-1]['env_steps'] / 1e6:.2f}M steps, "
                 f"{training_time(rows)}")
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # the bottom strip holds the legend, off the curves
    return fig


def _plot_success(ax, x, train, horizon) -> None:
    """Rollout and evaluation success, and the curriculum's training horizon (memory tasks)."""
    ax.plot(x, [r["success"] for r in train], label="rollout success (sampled actions)")
    for full, style, color, label in ((True, "o-", "tab:orange", "eval (greedy, fresh episodes)"),
                                      (False, "x", "tab:purple", "eval at a curriculum horizon")):
        ev = [r for r in train if "eval_success" in r
              and (horizon is None or r.get("eval_horizon", horizon) >= horizon) == full]
        if ev:
            ax.plot([r["env_steps"] / 1e6 for r in ev], [r["eval_success"] for r in ev], style, color=color,
                    label=label)
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    if any("train_horizon" in r for r in train):
        twin = ax.twinx()
        twin.step(x, [r.get("train_horizon", float("nan")) for r in train], where="post", color="tab:green", lw=1,
                  alpha=0.7, label="training horizon (curriculum, right axis)")
        twin.set_ylabel("training horizon", color="tab:green", fontsize=8)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)


def _plot_returns(ax, x, train) -> None:
    """Mean episode return of the rollouts and of the evaluations (envs without a success metric)."""
    ax.plot(x, [r["return"] for r in train], label="rollout mean episode return (sampled actions)")
    ev = [r for r in train if "eval_return" in r]
    if ev:
        ax.plot([r["env_steps"] / 1e6 for r in ev], [r["eval_return"] for r in ev], "o-", color="tab:orange",
                label="eval mean return (greedy, fresh episodes)")
    ax.set_ylabel("episode return")


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the curves PNG (see figure). Returns its path."""
    fig = figure(run_dir)
    import matplotlib.pyplot as plt

    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
