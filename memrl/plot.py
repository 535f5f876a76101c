"""Learning curves of a run: RUN_DIR/metrics.jsonl -> RUN_DIR/curves.png."""
from __future__ import annotations

import os

from .ppo.logger import read_metrics


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the curves PNG (success, return, gate mean, approx-KL vs env steps). Returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in train if "eval_success" in r]
    if not train:
        raise ValueError(f"{run_dir}/metrics.jsonl has no training rows to plot")
    x = [r["env_steps"] / 1e6 for r in train]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    ax = axes[0, 0]
    ax.plot(x, [r["success"] for r in train], label="rollout (sampled actions)")
    if evals:
        ax.plot([r["env_steps"] / 1e6 for r in evals], [r["eval_success"] for r in evals], "o-",
                label="eval (greedy, fresh episodes)")
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    if any("train_horizon" in r for r in train):
        twin = ax.twinx()
        twin.step(x, [r.get("train_horizon", float("nan")) for r in train], where="post", color="tab:green", lw=1,
                  alpha=0.7)
        twin.set_ylabel("training horizon (curriculum)", color="tab:green", fontsize=8)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="center right", fontsize=8)
    axes[0, 1].plot(x, [r["explained_var"] for r in train])
    axes[0, 1].set_ylabel("explained variance")
    axes[1, 0].plot(x, [r["gate_mean"] for r in train])
    axes[1, 0].set_ylabel("write-gate mean")
    axes[1, 1].plot(x, [r["approx_kl"] for r in train])
    axes[1, 1].set_ylabel("approx KL")
    for a in axes[1]:
        a.set_xlabel("env steps (M)")
    wall = train[-1].get("wall", float("nan"))
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: {train[-1]['env_steps'] / 1e6:.2f}M steps, "
                 f"{wall:.0f} s training wall time")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
