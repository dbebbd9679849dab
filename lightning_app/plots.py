"""CA-vs-ASR plot of a chain of runs (poisoned model → defenses)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ca_vs_asr_plot(rows: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """One point per run (ASR on x, CA top-1 on y); a defense's point has an arrow from its step-0 model."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, summary in rows:
        x, y = summary.get("asr"), summary.get("ca_top1")
        if x is None or y is None:
            continue
        before = summary.get("before")
        # a run from scratch has a random model at step 0: only defenses get a before → after arrow
        if before and before.get("asr") is not None and summary.get("module") != "CLIPPretraining":
            ax.annotate("", xy=(x, y), xytext=(before["asr"], before["ca_top1"]),
                        arrowprops={"arrowstyle": "->", "color": "0.6"})
        ax.scatter([x], [y], s=50, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("attack success rate (lower is better)")
    ax.set_ylabel("zero-shot clean accuracy, top-1")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
