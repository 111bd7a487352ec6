"""Training curves of a PPO run as one PNG: what PPO maximises (score and score - β·KL), KL, the value function
(loss, explained variance), entropy, clip fraction, distinct-2, response length."""

from __future__ import annotations

from typing import Any

import pandas as pd

# (title, [(column, label, style)]); a panel is drawn when any of its columns is present
PANELS: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("reward: score and score − β·KL", [("score_mean", "score", "-"), ("reward_total", "score − β·KL", "--")]),
    ("KL(tuned ‖ base) per sequence", [("kl_k1", "k1 (unbiased, can be < 0)", "-"), ("kl_k3", "k3 (≥ 0)", "--")]),
    ("value loss", [("value_loss", "value loss", "-")]),
    ("value explained variance", [("explained_var", "explained variance", "-")]),
    ("policy entropy (nats/token)", [("entropy", "entropy", "-")]),
    ("clip fraction", [("clipfrac", "policy", "-"), ("vf_clipfrac", "value", "--")]),
    ("distinct-2 (rollouts)", [("distinct_2", "distinct-2", "-")]),
    ("response length (tokens)", [("response_len", "length", "-")]),
]
EVAL = {"score_mean": "score_mean", "kl_k1": "kl", "distinct_2": "distinct_2"}


def draw_training_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None) -> Any:
    """The 2×4 panel figure (a matplotlib Figure); β is named in the KL panel's title (a constant β is no curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(15, 6), constrained_layout=True)
    for ax, (title, series) in zip(axes.flat, PANELS, strict=True):
        for column, label, style in series:
            if column in metrics:
                ax.plot(metrics["step"], metrics[column], style, color="#3465a4", lw=1.4, label=label)
            if evals is not None and len(evals) and column in EVAL and EVAL[column] in evals:
                ax.plot(evals["step"], evals[EVAL[column]], "o-", color="#cc0000", lw=1.2, ms=4, label="eval set")
        if "kl_k1" in [c for c, _, _ in series] and "kl_coef" in metrics:
            beta = metrics["kl_coef"]
            title += f"; β {beta.iloc[0]:.3g}" + ("" if beta.nunique() == 1 else f" → {beta.iloc[-1]:.3g}")
        if "explained_var" in [c for c, _, _ in series]:
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
    return fig
