"""One function per figure: each takes the tables and returns (png bytes, caption) or None when its table is absent.

Matplotlib's Agg backend only; figures are sized for a laptop screen and readable in print (light background).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

Tables = dict[str, pd.DataFrame]
Figure = tuple[bytes, str]
COLORS = {"base": "#4c72b0", "tuned": "#dd8452", "delta": "#55a868", "delta_activation": "#8172b3",
          "delta_readout": "#937860"}


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _heat(ax: plt.Axes, data: pd.DataFrame, title: str, center: float | None = 0.0, fmt: str = ".2f") -> None:
    """One heatmap on its own scale (kept for figures added by others; the built-in ones use `_heatmaps`)."""
    annot = data.size <= 64
    sns.heatmap(data, ax=ax, cmap="RdBu_r" if center is not None else "viridis", center=center, annot=annot,
                fmt=fmt, cbar=True, linewidths=0.3, annot_kws={"fontsize": 7})
    ax.set_title(title, fontsize=10)


def _int_labels(values: pd.Index) -> list[str]:
    """Tick labels of layers/heads as integers ("3", not "3.0": a column with NaN rows reads back as float)."""
    return [str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer() else str(v)
            for v in values]


def _gap(t: Tables) -> float:
    """The mean base->tuned metric gap (from logit_diff's "(mean)" delta row), NaN when absent."""
    df = t.get("logit_diff")
    if df is None or df.empty:
        return float("nan")
    row = df[(df.prompt == "(mean)") & (df.model == "delta")]
    return float(row.metric.iloc[0]) if len(row) else float("nan")


def _heatmaps(panels: list[tuple[str, pd.DataFrame]], *, nrows: int = 1, floor: float = 0.0, percent: bool = False,
              diverging: bool = True, label: str = "", figsize: tuple[float, float] = (10, 3.6),
              xlabel: str = "head", ylabel: str = "layer", xticklabels: list[str] | None = None) -> plt.Figure:
    """Panels of layer x head (or layer x position) grids on ONE colour scale per figure.

    The scale is symmetric around 0 for signed values and at least `floor` wide, so numerical noise (1e-6) stays
    white instead of saturating, and an all-zero panel looks empty. Cells are annotated with 2 significant digits
    (or as % when `percent`) when they matter at this scale (|v| >= 2% of it); others stay blank.
    """
    from rlhf_interp.report.numbers import pct, sig

    ncols = -(-len(panels) // nrows)
    values = np.concatenate([g.to_numpy(dtype=float).ravel() for _, g in panels]) if panels else np.zeros(1)
    finite = values[np.isfinite(values)]
    vmax = max(float(np.abs(finite).max()) if finite.size else 0.0, floor, 1e-12)
    vmin = -vmax if diverging else 0.0
    cmap = "RdBu_r" if diverging else "Purples"
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, constrained_layout=True)
    image = None
    for k, (title, grid) in enumerate(panels):
        ax = axes.flat[k]
        data = grid.to_numpy(dtype=float)
        image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(data.shape[1]))
        ax.set_xticklabels(xticklabels if xticklabels is not None else _int_labels(grid.columns), fontsize=8,
                           rotation=45 if xticklabels is not None else 0, ha="right" if xticklabels is not None
                           else "center")
        ax.set_yticks(range(data.shape[0]))
        ax.set_yticklabels(_int_labels(grid.index), fontsize=8)
        if k // ncols == nrows - 1:
            ax.set_xlabel(xlabel)
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
        if data.size <= 160:
            for (i, j), v in np.ndenumerate(data):
                if np.isfinite(v) and abs(v) >= 0.02 * vmax:
                    text = pct(v) if percent else sig(v, 2)
                    ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                            color="white" if abs(v) > 0.6 * vmax else "#222")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, pad=0.01)
        bar.set_label(label, fontsize=9)
        if percent:
            bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    return fig


def reward_hist(t: Tables) -> Figure | None:
    df = t.get("behaviour")
    if df is None or df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(df.reward.min(), df.reward.max(), 25)
    for model in ("base", "tuned"):
        sub = df[df.model == model].reward
        ax.hist(sub, bins=bins, alpha=0.6, color=COLORS[model], label=f"{model} (mean {sub.mean():+.2f})")
    ax.set_xlabel("reward of a sampled continuation")
    ax.set_ylabel("samples")
    ax.legend()
    return _png(fig), ("Reward of sampled continuations, base vs tuned (same prompts, same sampling seed). A shift "
                       "to the right is what RLHF optimised; a pile-up at the maximum can signal reward hacking.")


def token_kl_heatmap(t: Tables) -> Figure | None:
    df = t.get("token_kl")
    if df is None or df.empty:
        return None
    grid = df.pivot(index="sample", columns="pos", values="kl")
    grid = grid.iloc[:48]
    fig, ax = plt.subplots(figsize=(9, 0.12 * len(grid) + 1.5))
    sns.heatmap(grid, ax=ax, cmap="magma_r", cbar_kws={"label": "KL (nats)"})
    ax.set_xlabel("response token position")
    ax.set_ylabel("tuned sample")
    return _png(fig), ("Exact per-token KL(tuned ‖ base) along the tuned model's own samples (rows: samples, "
                       "columns: response positions; blank after EOS). Where the tuned model departs from the base.")


def token_shift_bars(t: Tables) -> Figure | None:
    df = t.get("token_shift")
    if df is None or df.empty:
        return None
    rose = df[df.direction == "rose"].head(12)
    fell = df[df.direction == "fell"].head(12)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, part, color, title in ((axes[0], rose, "#55a868", "promoted"), (axes[1], fell, "#c44e52", "suppressed")):
        ax.barh([repr(s) for s in part.token][::-1], part.delta_logprob[::-1], color=color)
        ax.set_title(f"most {title} next tokens", fontsize=10)
        ax.set_xlabel("Δ log-prob (tuned − base), mean over prompts")
    return _png(fig), ("Next-token log-probabilities after the prompts that RLHF raised and lowered most.")


def logit_lens_lines(t: Tables) -> Figure | None:
    df = t.get("logit_lens")
    if df is None or df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for model in ("base", "tuned"):
        sub = df[df.model == model]
        ax.plot(sub.layer, sub.metric, "o-", color=COLORS[model], label=model)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(sorted(df.layer.unique()))
    ax.set_xticklabels(["emb" if x < 0 else str(x) for x in sorted(df.layer.unique())])
    ax.set_xlabel("residual stream after layer")
    ax.set_ylabel("metric")
    ax.legend()
    return _png(fig), ("Logit lens: the metric read from the residual stream after each layer (each model through its "
                       "own final LayerNorm and unembedding). Where along the depth the two models part.")


def dla_layer_bars(t: Tables) -> Figure | None:
    df = t.get("dla_layers")
    if df is None or df.empty:
        return None
    df = df[df.component.isin(["embed", "pos_embed", "attn", "mlp"])].copy()
    df["label"] = [c if pd.isna(L) else f"{c}{int(L)}" for c, L in zip(df.component, df.layer, strict=True)]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    sns.barplot(df, x="label", y="attribution", hue="model", palette=COLORS, ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("")
    return _png(fig), ("Direct logit attribution of the metric to the embeddings, each attention layer and each MLP, "
                       "for base, tuned and their difference (each model read with its own unembedding; the parts sum "
                       "to the metric).")


def dla_head_heatmaps(t: Tables) -> Figure | None:
    df = t.get("dla_heads")
    if df is None or df.empty:
        return None
    gap = _gap(t)
    panels = [(model, df[df.model == model].pivot(index="layer", columns="head", values="attribution"))
              for model in ("base", "tuned", "delta")]
    fig = _heatmaps(panels, floor=0.05 * abs(gap) if np.isfinite(gap) else 0.0, label="attribution (metric units)",
                    figsize=(13, 3.6))
    return _png(fig), ("Direct logit attribution per attention head (rows: layers, columns: heads), in metric units, "
                       "one colour scale for the three panels (at least ±5% of the gap wide, so noise stays white).")


def ablation_heatmaps(t: Tables) -> Figure | None:
    df = t.get("ablation")
    if df is None or df.empty:
        return None
    heads = df[(df.component == "head") & (df.kind == "mean")]
    gap = _gap(t)
    panels = [(f"{model}: mean-ablate head", heads[heads.model == model].pivot(index="layer", columns="head",
                                                                              values="effect"))
              for model in ("base", "tuned")]
    fig = _heatmaps(panels, floor=0.05 * abs(gap) if np.isfinite(gap) else 0.0, label="Δ metric")
    return _png(fig), ("Change of the metric when one head is mean-ablated, in each model (negative: the head pushed "
                       "the metric up), one colour scale for both panels. Zero-ablation and MLP rows are in "
                       "ablation.csv.")


def patching_layer_heatmaps(t: Tables) -> Figure | None:
    from rlhf_interp.report.numbers import pct

    df = t.get("patching_layers")
    if df is None or df.empty:
        return None
    comps = ["resid_pre", "attn_out", "mlp_out"]
    panels, labels = [], None
    for direction in ("tuned_to_base", "base_to_tuned"):
        for comp in comps:
            sub = df[(df.direction == direction) & (df.component == comp)]
            panels.append((f"{direction.replace('_to_', ' → ')}: {comp}",
                           sub.pivot(index="layer", columns="pos", values="effect")))
            if labels is None and len(sub):
                labels = [f"{int(p)}:{tok!r}" for p, tok in sub.drop_duplicates("pos")[["pos", "token"]].values]
    fig = _heatmaps(panels, nrows=2, floor=0.05, percent=True, label="share of the gap recovered", figsize=(13, 7),
                    xlabel="position: token", xticklabels=labels)
    un = df[df.component == "unembed"]
    note = "; ".join(f"{r.direction}: {pct(r.effect)}" for r in un.itertuples())
    return _png(fig), ("Cross-model activation patching by layer and position: share of the base→tuned metric gap "
                       "recovered when one activation of the receiver is replaced by the donor's (top row: tuned into "
                       f"base; bottom: base into tuned), one colour scale. Swapping the unembedding alone: {note}.")


def patching_head_heatmaps(t: Tables) -> Figure | None:
    df = t.get("patching_heads")
    if df is None or df.empty:
        return None
    panels = [(direction.replace("_to_", " → "), df[df.direction == direction].pivot(index="layer", columns="head",
                                                                                      values="effect"))
              for direction in ("tuned_to_base", "base_to_tuned")]
    fig = _heatmaps(panels, floor=0.05, percent=True, label="share of the gap recovered")
    return _png(fig), ("Patching one head's whole output (z·W_O, all positions) from the donor: share of the gap "
                       "recovered (rows: layers, columns: heads; one colour scale, at least ±5% wide). hook_z-only "
                       "effects are in patching_heads.csv.")


def attribution_scatter(t: Tables) -> Figure | None:
    df = t.get("attribution_patching")
    if df is None or df.empty or "exact" not in df:
        return None
    df = df.dropna(subset=["exact"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for kind, marker in (("head", "o"), ("layer", ".")):
        sub = df[df.kind == kind]
        r = sub.approx.corr(sub.exact) if len(sub) > 2 else float("nan")
        # r is undefined when either side is constant (e.g. all-zero effects): say so instead of "r = nan"
        label = f"{kind} (r = {r:.2f})" if np.isfinite(r) else f"{kind} (r undefined: {len(sub)} points, no spread)"
        ax.scatter(sub.exact, sub.approx, marker=marker, alpha=0.7, label=label)
    lim = [min(df.exact.min(), df.approx.min()), max(df.exact.max(), df.approx.max())]
    ax.plot(lim, lim, color="grey", lw=0.8)
    ax.set_xlabel("exact patching effect")
    ax.set_ylabel("attribution patching estimate")
    ax.legend()
    return _png(fig), ("Attribution patching (gradient estimate) against exact patching, per cell. Points on the "
                       "diagonal: the linear estimate is trustworthy for this pair.")


def attention_heatmap(t: Tables) -> Figure | None:
    df = t.get("attention_diff")
    if df is None or df.empty:
        return None
    fig = _heatmaps([("JS divergence", df.pivot(index="layer", columns="head", values="js_divergence"))],
                    floor=0.01, diverging=False, label="nats", figsize=(5.5, 3.6))
    return _png(fig), ("How much each head's attention pattern changed: mean Jensen–Shannon divergence (nats, max "
                       "ln 2 ≈ 0.69) between base and tuned patterns over the prompts (scale at least 0.01 wide).")


def weight_bars(t: Tables) -> Figure | None:
    df = t.get("weight_diff")
    if df is None or df.empty:
        return None
    df = df.copy()
    df["label"] = [c + ("" if pd.isna(L) else f" L{int(L)}") + ("" if pd.isna(h) else f"H{int(h)}")
                   for c, L, h in zip(df.component, df.layer, df["head"], strict=True)]
    top = df.nlargest(20, "rel_change")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh(top.label[::-1], top.rel_change[::-1], color="#8172b3")
    ax.set_xlabel("‖W_tuned − W_base‖ / ‖W_base‖")
    return _png(fig), ("The 20 weight components that changed most (relative Frobenius norm of the raw checkpoint "
                       "tensors, no norm folding): each query head's QK and OV circuits, MLP in/out, every norm's "
                       "gain and bias, embeddings and unembedding (`measure` in the table says what each row is).")


def direction_lines(t: Tables) -> Figure | None:
    df = t.get("direction")
    if df is None or df.empty or "method" not in df:
        return None
    by = {m: g.sort_values("layer") for m, g in df.groupby("method")}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    styles = {"full_difference": ("s--", "#4c72b0", "full activation difference"),
              "fitted_direction": ("o-", "#da8bc3", "along the fitted direction (held out)")}
    for method, (fmt, color, label) in styles.items():
        if method in by:
            ax.plot(by[method].layer, by[method].recovery, fmt, color=color, label=label)
    if "random_direction" in by:
        r = by["random_direction"]
        n = int(r.n_draws.max()) if len(r) else 0
        ax.plot(r.layer, r.recovery, "^:", color="#8c8c8c", label=f"random directions, same size (mean of {n})")
        ax.fill_between(r.layer, r.recovery - 2 * r.recovery_sd, r.recovery + 2 * r.recovery_sd, color="#8c8c8c",
                        alpha=0.2, label="random: ± 2 sd")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("fraction of the gap recovered")
    fitted = by.get("fitted_direction")
    if fitted is not None:
        ax2.plot(fitted.layer, fitted.cosine_readout, "o-", color="#937860", label="cosine with the metric read-out")
        ax2.plot(fitted.layer, fitted.share_along, "d--", color="#55a868", label="share of ‖Δx‖² along it")
        ax2.set_ylim(-1.05, 1.05)
        ax2.axhline(0, color="black", lw=0.5)
    for a in (ax, ax2):
        a.set_xlabel("layer (resid_post, metric position)")
        a.set_xticks(sorted(df.layer.unique()))
        a.legend(fontsize=7)
    return _png(fig), ("The direction RLHF moved the residual where the metric is read (mean tuned − base difference, "
                       "fitted on one half of the prompts and patched into base on the other): the fraction of the "
                       "metric gap it recovers beside the full difference and random directions moved by the same "
                       "amounts (left); its cosine with the metric's read-out direction and the share of the "
                       "difference it carries (right).")


def adl_figure(t: Tables) -> Figure | None:
    norms, df = t.get("adl_norm"), t.get("adl")
    if norms is None or norms.empty or df is None:
        return None
    steer = t.get("adl_steering")
    n = 2 if steer is not None and len(steer) else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    ax.bar(norms.layer, norms.rel_norm, color="#8172b3")
    for r in norms.itertuples():
        top = df[(df.layer == r.layer) & (df.direction == "promoted")].sort_values("rank").token.head(3)
        ax.text(r.layer, r.rel_norm, "\n".join(repr(x) for x in top), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("‖mean δ‖ / mean ‖base resid‖")
    ax.set_xticks(norms.layer)
    ax.margins(y=0.35)
    if n == 2:
        ax2 = axes[0, 1]
        ax2.plot(steer.alpha, steer.reward_mean, "o-", color=COLORS["tuned"], label="reward (steered base)")
        beh = t.get("behaviour_summary")
        if beh is not None and len(beh) == 2:
            for model in ("base", "tuned"):
                ax2.axhline(float(beh[beh.model == model].reward_mean.iloc[0]), color=COLORS[model], ls=":",
                            label=f"{model} samples")
        ax2.set_xlabel(f"α (added α·δ at layer {int(steer.layer.iloc[0])})")
        ax2.set_ylabel("mean reward")
        ax3 = ax2.twinx()
        ax3.plot(steer.alpha, steer.kl_vs_base, "s--", color="grey", label="KL(steered ‖ base)")
        ax3.set_ylabel("KL per sequence (nats)")
        ax2.legend(fontsize=7, loc="upper left")
    return _png(fig), ("Activation Difference Lens: size of the mean tuned − base residual difference on text "
                       "unrelated to the prompts (first tokens of the diff corpus), per layer, labelled with the "
                       "tokens its logit lens promotes most; right: steering the base model by α times that "
                       "difference.")


def amplification_figure(t: Tables) -> Figure | None:
    df = t.get("amplification")
    if df is None or df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.3))
    ax.plot(df.alpha, df.reward_mean, "o-", color=COLORS["tuned"], label="reward")
    ax.plot(df.alpha, df.distinct_2, "s-", color="#55a868", label="distinct-2")
    ax.set_xlabel("α  (logits_tuned + α·(logits_tuned − logits_base))")
    ax2 = ax.twinx()
    ax2.plot(df.alpha, df.kl_vs_tuned, "^--", color="grey", label="KL(sampler ‖ tuned)")
    ax2.set_ylabel("nats per sequence")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="upper right")
    return _png(fig), ("Logit-diff amplification: sampling with the tuned − base logit difference amplified by α "
                       "(α = 0: tuned sampling). Rising tokens per α are in amplification_tokens.csv and the samples "
                       "in amplification_samples.csv.")


def diff_mining_bars(t: Tables) -> Figure | None:
    df = t.get("diff_mining")
    if df is None or df.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, direction, color in ((axes[0], "promoted", "#55a868"), (axes[1], "suppressed", "#c44e52")):
        part = df[df.direction == direction].head(12)
        ax.barh([repr(s) for s in part.token][::-1], part.fraction[::-1], color=color)
        ax.set_title(f"most often {direction} (top-K by Δ log-prob)", fontsize=10)
        ax.set_xlabel("fraction of positions")
    return _png(fig), ("Diff mining: at every position of the diff corpus and the prompts, the tokens whose log-prob "
                       "difference (tuned − base) is among the top K; tokens ranked by how often they recur.")


COMPARE_FIGURES: list[tuple[str, str, Callable[[Tables], Figure | None]]] = [
    ("reward_hist", "Behaviour: rewards", reward_hist),
    ("token_kl", "Behaviour: per-token KL", token_kl_heatmap),
    ("token_shift", "Promoted and suppressed tokens", token_shift_bars),
    ("logit_lens", "Logit lens", logit_lens_lines),
    ("dla_layers", "Direct logit attribution by layer", dla_layer_bars),
    ("dla_heads", "Direct logit attribution by head", dla_head_heatmaps),
    ("ablation", "Head ablations", ablation_heatmaps),
    ("patching_layers", "Activation patching: layers × positions", patching_layer_heatmaps),
    ("patching_heads", "Activation patching: heads", patching_head_heatmaps),
    ("attribution", "Attribution patching vs exact", attribution_scatter),
    ("attention_diff", "Attention change", attention_heatmap),
    ("weight_diff", "Weight change", weight_bars),
    ("direction", "The residual change at the metric position, with baselines", direction_lines),
    ("adl", "Activation Difference Lens", adl_figure),
    ("amplification", "Logit-diff amplification", amplification_figure),
    ("diff_mining", "Diff mining", diff_mining_bars),
]


def training_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None) -> Figure:
    from rlhf_interp.plots.training import PANELS, draw_training_curves

    fig = draw_training_curves(metrics, evals)
    names = "; ".join(title for title, _ in PANELS)
    return _png(fig), (f"Training curves per PPO update ({names}); red dots: the fixed evaluation set before, during "
                       "and after training.")
