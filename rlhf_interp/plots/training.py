"""Training curves of a PPO run (score, KL, KL coefficient, entropy, clipfrac, distinct-2) as one PNG."""

from __future__ import annotations

from typing import Any

import pandas as pd

PANELS = [
    ("score_mean", "reward score (rollouts)"),
    ("kl_k1", "KL(tuned ‖ base) per sequence"),
    ("kl_coef", "KL coefficient β"),
    ("entropy", "policy entropy (nats/token)"),
    ("clipfrac", "clip fraction"),
    ("distinct_2", "distinct-2 (rollouts)"),
]


def draw_training_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None) -> Any:
    """The 2×3 panel figure (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), constrained_layout=True)
    for ax, (column, title) in zip(axes.flat, PANELS, strict=True):
        if column in metrics:
            ax.plot(metrics["step"], metrics[column], color="#3465a4", lw=1.5, label="rollout")
        if evals is not None and column == "score_mean" and len(evals):
            ax.plot(evals["step"], evals["score_mean"], "o-", color="#cc0000", lw=1.2, ms=4, label="eval set")
            ax.legend(fontsize=8)
        if evals is not None and column == "kl_k1" and len(evals):
            ax.plot(evals["step"], evals["kl"], "o-", color="#cc0000", lw=1.2, ms=4, label="eval set")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
    return fig

