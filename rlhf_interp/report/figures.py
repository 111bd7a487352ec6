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


def gap_floor(t: Tables, share: float = 0.05) -> float:
    """The narrowest colour scale for a grid in metric units: `share` of the |gap| (0 when the gap is unknown), so
    values far below what matters stay pale instead of saturating."""
    gap = _gap(t)
    return share * abs(gap) if np.isfinite(gap) else 0.0


def _component_labels(df: pd.DataFrame) -> list[str]:
    """"mlp3", "attn0", "embed": a dla_layers row's component with its layer."""
    return [c if pd.isna(L) else f"{c}{int(L)}" for c, L in zip(df.component, df.layer, strict=True)]


def _heatmaps(panels: list[tuple[str, pd.DataFrame]], *, nrows: int = 1, floor: float = 0.0, percent: bool = False,
              diverging: bool = True, label: str = "", figsize: tuple[float, float] = (10, 3.6),
              xlabel: str = "head", ylabel: str = "layer", xticklabels: list[str] | None = None,
              spans: list[tuple[pd.DataFrame, pd.DataFrame] | None] | None = None) -> plt.Figure:
    """Panels of layer x head (or layer x position) grids on ONE colour scale per figure.

    The scale is symmetric around 0 for signed values and at least `floor` wide, so numerical noise (1e-6) stays
    white instead of saturating, and an all-zero panel looks empty. Cells are annotated with 2 significant digits
    (or as % when `percent`) when they matter at this scale (|v| >= 2% of it); others stay blank. With `spans`
    (per panel, the grids of its CI's low and high ends, aligned with it), a cell whose 95% CI includes 0 is
    annotated in grey italics, in parentheses.
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
        span = spans[k] if spans is not None and k < len(spans) else None
        across = np.zeros(data.shape, dtype=bool)
        if span is not None:
            lo, hi = (g.reindex(index=grid.index, columns=grid.columns).to_numpy(dtype=float) for g in span)
            across = (lo <= 0) & (hi >= 0)
        if data.size <= 160:
            for (i, j), v in np.ndenumerate(data):
                if np.isfinite(v) and abs(v) >= 0.02 * vmax:
                    text = pct(v) if percent else sig(v, 2)
                    if across[i, j]:
                        ax.text(j, i, f"({text})", ha="center", va="center", fontsize=6, color="#777",
                                fontstyle="italic")
                        continue
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


def _ci_span(sub: pd.DataFrame, index: str, columns: str, suffix: str = ""
             ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The (low, high) grids of a table's 95% bootstrap CI columns, None where it has none (outputs of older runs)."""
    lo, hi = f"ci_low{suffix}", f"ci_high{suffix}"
    if lo not in sub or hi not in sub:
        return None
    return sub.pivot(index=index, columns=columns, values=lo), sub.pivot(index=index, columns=columns, values=hi)


def _top_with_ci(sub: pd.DataFrame, label: Callable[[pd.Series], str], percent: bool, k: int = 3,
                 value: str = "effect", suffix: str = "") -> str:
    """The `k` cells of largest |value|, each with its 95% CI when the table has one: "L1H2 +85% (95% CI ...)"."""
    from rlhf_interp.report.numbers import with_ci

    sub = sub.dropna(subset=[value])
    top = sub.reindex(sub[value].abs().sort_values(ascending=False).index).head(k)
    lo, hi = f"ci_low{suffix}", f"ci_high{suffix}"
    return ", ".join(f"{label(r)} {with_ci(r[value], r.get(lo, np.nan), r.get(hi, np.nan), percent)}"
                     for _, r in top.iterrows())


def _head_label(r: pd.Series) -> str:
    return f"L{int(r['layer'])}H{int(r['head'])}"


CI_NOTE = "Grey italics in parentheses: the 95% bootstrap CI over prompts includes 0."


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


_READOUT_ROWS = ("unembed", "final_resid", "interaction")
_READOUT_LABELS = {"unembed": "read-out alone (final norm + unembedding)", "final_resid": "final residual alone",
                   "interaction": "interaction (both − the two alone)"}


def _dla_parts(dl: pd.DataFrame, top: int = 6) -> pd.DataFrame | None:
    """The gap as DLA splits it: one read-out row (all components' delta_readout) plus each component's
    delta_activation (embeddings, attention layers with b_O, MLPs, the unembedding bias), largest `top` by |value|
    and "other components" for the rest; the rows sum to the DLA total (= the gap at the read-out position)."""
    comps = dl[dl.component.isin(["embed", "pos_embed", "attn", "mlp", "unembed_bias"])]
    total = dl[dl.component == "total"].set_index("model").attribution
    if not {"delta_readout", "delta_activation", "delta"} <= set(total.index):
        return None
    act = comps[comps.model == "delta_activation"].copy()
    act["label"] = _component_labels(act)
    act = act.reindex(act.attribution.abs().sort_values(ascending=False).index)
    rows = [("read-out change (all components)", float(total["delta_readout"]))]
    rows += [(f"{lab}: own activation", float(v)) for lab, v in zip(act.label[:top], act.attribution[:top],
                                                                      strict=True)]
    if len(act) > top:
        rows.append((f"{len(act) - top} other components' activations", float(act.attribution[top:].sum())))
    return pd.DataFrame(rows, columns=["part", "value"]).assign(total=float(total["delta"]))


def gap_split(t: Tables) -> Figure | None:
    """Where the gap lives: exact swaps of the read-out and the final residual (patching_layers), and the
    linear DLA split into the read-out's change and each component's own activation change (dla_layers)."""
    from rlhf_interp.report.numbers import pct, sig

    pl, dl = t.get("patching_layers"), t.get("dla_layers")
    swaps = None if pl is None or pl.empty else pl[pl.component.isin(_READOUT_ROWS)]
    parts = None if dl is None or dl.empty else _dla_parts(dl)
    if (swaps is None or swaps.empty) and parts is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), constrained_layout=True)
    ax = axes[0]
    if swaps is not None and len(swaps):
        labels, yticks, ys = [], [], 0.0
        for direction, color in (("tuned_to_base", "#dd8452"), ("base_to_tuned", "#4c72b0")):
            sub = swaps[swaps.direction == direction].set_index("component")
            for comp in _READOUT_ROWS:
                if comp not in sub.index:
                    continue
                r = sub.loc[comp]
                err = None
                if {"ci_low", "ci_high"} <= set(sub.columns) and pd.notna(r.get("ci_low")):
                    err = [[r.effect - r.ci_low], [r.ci_high - r.effect]]
                ax.barh(ys, r.effect, color=color, alpha=1.0 if comp != "interaction" else 0.5, xerr=err,
                        capsize=3)
                ax.annotate(pct(float(r.effect)), (max(float(r.effect), 0.0), ys), xytext=(4, 0),
                            textcoords="offset points", va="center", ha="left", fontsize=8)
                labels.append(f"{direction.replace('_to_', ' → ')}: {_READOUT_LABELS[comp]}")
                yticks.append(ys)
                ys += 1
            ys += 0.5
        ax.set_yticks(yticks)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlim(right=max(ax.get_xlim()[1], 1.0) * 1.1)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xlabel("share of the gap recovered (exact patching; the three add to 100%)")
        ax.set_title("exact: swap the read-out and/or the final residual", fontsize=10)
    else:
        ax.set_axis_off()
    ax = axes[1]
    if parts is not None:
        total = float(parts.total.iloc[0])
        colors = [COLORS["delta_readout"]] + [COLORS["delta_activation"]] * (len(parts) - 1)
        ax.barh(range(len(parts)), parts.value, color=colors)
        for i, v in enumerate(parts.value):
            ax.annotate(f"{sig(v)} ({pct(v / total) if total else 'n/a'})", (max(v, 0.0), i), xytext=(4, 0),
                        textcoords="offset points", va="center", ha="left", fontsize=8)
        ax.set_yticks(range(len(parts)))
        ax.set_yticklabels(parts.part, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlim(right=ax.get_xlim()[1] * 1.15)
        first = "term" in dl.columns and (dl.term == "first_token").any()  # logprob_diff: its first-token term
        what = "first-token term's change" if first else "gap"
        ax.set_xlabel(f"metric units (rows sum to the DLA {what} {sig(total, 3)})")
        ax.set_title(f"linear: DLA split of the {what} (midpoint)", fontsize=10)
    else:
        ax.set_axis_off()
    return _png(fig), ("Where the base→tuned gap lives. Left (exact, `patching_layers`): the share of the gap "
                       "recovered by swapping only the read-out (final-norm gain and bias, and the unembedding), only "
                       "the final residual stream at the read-out position, and their interaction; the three add up "
                       "to the 100% of swapping both. Right (linear, `dla_layers`): the same gap split into the "
                       "read-out's change applied to fixed activations and each component's own activation change "
                       "read through a fixed read-out (the two-player Shapley midpoint; the rows add up exactly)."
                       " Error bars: 95% bootstrap CIs over prompts where the table has them."
                       + ("" if dl is None else _first_token_note(dl)))


def logit_lens_lines(t: Tables) -> Figure | None:
    df = t.get("logit_lens")
    if df is None or df.empty:
        return None
    layers = sorted(df.layer.unique())
    split = {"delta_activation", "delta_readout"} <= set(df.model)
    fig, axes = plt.subplots(1, 2 if split else 1, figsize=(12 if split else 7, 3.4), squeeze=False,
                             constrained_layout=True)
    ax = axes[0, 0]
    for model in ("base", "tuned"):
        sub = df[df.model == model]
        ax.plot(sub.layer, sub.metric, "o-", color=COLORS[model], label=f"{model} (own read-out)")
    if "base_resid_tuned_readout" in set(df.model):
        sub = df[df.model == "base_resid_tuned_readout"]
        ax.plot(sub.layer, sub.metric, "o--", color=COLORS["delta_readout"], label="base residual, tuned read-out")
    ax.legend(fontsize=8)
    if split:
        ax = axes[0, 1]
        for model, label in (("delta", "delta (tuned − base)"), ("delta_activation", "residual's own change"),
                             ("delta_readout", "read-out's change")):
            sub = df[df.model == model]
            ax.plot(sub.layer, sub.metric, "o-", color=COLORS[model], label=label)
        ax.legend(fontsize=8)
        ax.set_title("the delta, split (midpoint; the two parts add up to it)", fontsize=10)
    for ax in axes.flat:
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(layers)
        ax.set_xticklabels(["emb" if x < 0 else str(int(x)) for x in layers])
        ax.set_xlabel("residual stream after layer")
        ax.set_ylabel("metric")
    caption = ("Logit lens: the metric read from the residual stream after each layer through each model's own "
               "final norm and unembedding (left).")
    if split:
        caption += (" Right: the base→tuned delta split into the residual stream's own change (both residuals "
                    "through the same read-out) and the read-out's change (one residual through both read-outs). "
                    "Where along the depth the residual streams part is the residual's own change; the delta alone "
                    "mixes it with the tuned read-out, which applies at every layer.")
    return _png(fig), caption + _first_token_note(df)


def dla_layer_bars(t: Tables) -> Figure | None:
    df = t.get("dla_layers")
    if df is None or df.empty:
        return None
    df = df[df.component.isin(["embed", "pos_embed", "attn", "mlp"])].copy()
    df["label"] = _component_labels(df)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    sns.barplot(df, x="label", y="attribution", hue="model", palette=COLORS, ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("")
    return _png(fig), ("Direct logit attribution of the metric to the embeddings, each attention layer and each MLP, "
                       "for base, tuned and their difference (each model read with its own unembedding; the parts sum "
                       "to the metric)." + _first_token_note(df))


def _first_token_note(df: pd.DataFrame) -> str:
    """The caption's note where the table decomposes logprob_diff's first-token term (column `term`)."""
    if "term" not in df.columns or not (df.term == "first_token").any():
        return ""
    return (" With logprob_diff this is its first-token term (the positive words' first-token logits minus the "
            "negative words', at the last prompt position), not the whole metric: the words' later tokens are not "
            "decomposed.")


def dla_head_heatmaps(t: Tables) -> Figure | None:
    df = t.get("dla_heads")
    if df is None or df.empty:
        return None
    titles = {"base": "base", "tuned": "tuned", "delta_activation": "Δ: the head's own output (fixed read-out)",
              "delta_readout": "Δ: the read-out's change"}
    models = [m for m in titles if m in set(df.model)]
    panels = [(titles[m], df[df.model == m].pivot(index="layer", columns="head", values="attribution"))
              for m in models]
    fig = _heatmaps(panels, floor=gap_floor(t), label="attribution (metric units)",
                    figsize=(4.2 * len(panels), 3.6))
    return _png(fig), ("Direct logit attribution per attention head (rows: layers, columns: heads; per query head "
                       "under grouped-query attention), in metric units, one colour scale for all panels (at least "
                       "±5% of the gap wide, so noise stays white). The base→tuned change is split (midpoint) into "
                       "the head's own output read through a fixed read-out and the read-out's change applied to a "
                       "fixed output; the two add up to tuned − base.")


def ablation_heatmaps(t: Tables) -> Figure | None:
    df = t.get("ablation")
    if df is None or df.empty:
        return None
    heads = df[(df.component == "head") & (df.kind == "mean")]
    panels = [(f"{model}: mean-ablate head", heads[heads.model == model].pivot(index="layer", columns="head",
                                                                              values="effect"))
              for model in ("base", "tuned")]
    spans = [_ci_span(heads[heads.model == model], "layer", "head") for model in ("base", "tuned")]
    fig = _heatmaps(panels, floor=gap_floor(t), label="Δ metric", spans=spans)
    top = "; ".join(f"{model}: " + _top_with_ci(heads[heads.model == model], _head_label, False)
                    for model in ("base", "tuned") if len(heads[heads.model == model]))
    how = (str(heads.baseline.iloc[0]) if "baseline" in heads and len(heads) else "the mean activation")
    return _png(fig), ("Change of the metric when one head is mean-ablated, in each model (negative: the head pushed "
                       f"the metric up), one colour scale for both panels. Replaced by: {how}. A head that writes "
                       "the same vector at every position keeps it under mean ablation (zero ablation removes it). "
                       f"Largest: {top}. {CI_NOTE} Zero-ablation, resample-ablation and MLP rows are in "
                       "ablation.csv.")


def patching_layer_heatmaps(t: Tables) -> Figure | None:
    from rlhf_interp.report.numbers import pct

    df = t.get("patching_layers")
    if df is None or df.empty:
        return None
    comps = ["resid_pre", "attn_out", "mlp_out"]
    from rlhf_interp.report.numbers import with_ci

    panels, labels, spans = [], None, []
    for direction in ("tuned_to_base", "base_to_tuned"):
        for comp in comps:
            sub = df[(df.direction == direction) & (df.component == comp)]
            panels.append((f"{direction.replace('_to_', ' → ')}: {comp}",
                           sub.pivot(index="layer", columns="pos", values="effect")))
            spans.append(_ci_span(sub, "layer", "pos"))
            if labels is None and len(sub):
                labels = [f"{int(p)}:{tok!r}" for p, tok in sub.drop_duplicates("pos")[["pos", "token"]].values]
    fig = _heatmaps(panels, nrows=2, floor=0.05, percent=True, label="share of the gap recovered", figsize=(13, 7),
                    xlabel="position: token", xticklabels=labels, spans=spans)
    un = df[df.component == "unembed"]
    note = "; ".join(f"{r.direction}: {with_ci(r.effect, r.get('ci_low', np.nan), r.get('ci_high', np.nan), True)}"
                     for _, r in un.iterrows()) or pct(float("nan"))
    return _png(fig), ("Cross-model activation patching by layer and position: share of the base→tuned metric gap "
                       "recovered when one activation of the receiver is replaced by the donor's (top row: tuned into "
                       f"base; bottom: base into tuned), one colour scale. {CI_NOTE} Swapping the unembedding alone: "
                       f"{note}.")


def patching_head_heatmaps(t: Tables) -> Figure | None:
    df = t.get("patching_heads")
    if df is None or df.empty:
        return None
    panels = [(direction.replace("_to_", " → "), df[df.direction == direction].pivot(index="layer", columns="head",
                                                                                      values="effect"))
              for direction in ("tuned_to_base", "base_to_tuned")]
    spans = [_ci_span(df[df.direction == direction], "layer", "head") for direction in ("tuned_to_base",
                                                                                         "base_to_tuned")]
    fig = _heatmaps(panels, floor=0.05, percent=True, label="share of the gap recovered", spans=spans)
    top = _top_with_ci(df[df.direction == "tuned_to_base"], _head_label, True)
    return _png(fig), ("Patching one head's whole output (z·W_O, all positions) from the donor: share of the gap "
                       "recovered (rows: layers, columns: heads; one colour scale, at least ±5% wide). Largest, "
                       f"tuned → base: {top or 'none'}. {CI_NOTE} hook_z-only effects (with their CIs) are in "
                       "patching_heads.csv.")


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


def weight_labels(df: pd.DataFrame) -> list[str]:
    """One label per weight_diff row: component, layer, head; rows that are a raw checkpoint tensor (`tensor`,
    `other`) are named by the tensor itself, so two of them never share a label."""
    params = df["parameters"] if "parameters" in df else pd.Series([None] * len(df), index=df.index)
    return [str(p) if c in ("tensor", "other") and isinstance(p, str) and p else
            c + ("" if pd.isna(L) else f" L{int(L)}") + ("" if pd.isna(h) else f"H{int(h)}")
            for c, L, h, p in zip(df.component, df.layer, df["head"], params, strict=True)]


def weight_bars(t: Tables) -> Figure | None:
    df = t.get("weight_diff")
    if df is None or df.empty:
        return None
    df = df.copy()
    df["label"] = weight_labels(df)
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
              "fitted_direction": ("o-", "#da8bc3", "along the fitted direction" + (
                  " (held out)" if "held_out" not in df or df.held_out.astype(bool).all() else " (in-sample)"))}
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


def _trajectory_adl(fig: plt.Figure, ax: plt.Axes, adl: pd.DataFrame) -> None:
    """ADL relative norm against the step: a line per layer, or a layer x step grid when there are many layers."""
    ax.set_title("ADL: ‖mean δ‖ / ‖base resid‖ per layer", fontsize=10)
    if adl.empty:
        return
    if adl.layer.nunique() <= 8:
        for layer, g in adl.groupby("layer"):
            ax.plot(g.step, g.value, "o-", ms=3, label=f"L{int(layer)}")
        ax.legend(fontsize=7, ncol=2)
    else:  # many layers: layer x step
        grid = adl.pivot_table(index="layer", columns="step", values="value")
        steps = grid.columns.to_numpy(dtype=float)
        mid = (steps[1:] + steps[:-1]) / 2 if len(steps) > 1 else np.zeros(0)
        half = (steps[-1] - steps[0]) / (2 * max(len(steps) - 1, 1)) or 0.5
        edges = np.concatenate([[steps[0] - half], mid, [steps[-1] + half]])  # each step's cell centred on it
        image = ax.pcolormesh(edges, np.arange(len(grid) + 1) - 0.5, grid.to_numpy(dtype=float), cmap="Purples",
                              vmin=0)
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax)


def trajectory_figure(t: Tables) -> Figure | None:
    """When did it change: base vs each snapshot of the run, against the PPO step."""
    from rlhf_interp.analysis.trajectory import series

    df = t.get("trajectory")
    if df is None or df.empty:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4), constrained_layout=True)
    ax = axes[0, 0]
    gap = df[df.quantity == "metric_gap"].sort_values("step")
    ax.fill_between(gap.step, gap.ci_low, gap.ci_high, color=COLORS["delta"], alpha=0.2)
    ax.plot(gap.step, gap.value, "o-", color=COLORS["delta"], label="metric gap (95% CI)")
    for part in ("delta_activation", "delta_readout"):
        s = series(df, f"dla_{part}", component="total")
        if len(s):
            ax.plot(s.index, s.values, ".--", color=COLORS[part], label=part.replace("delta_", "") + " part")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("metric gap (snapshot − base)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    kl = df[df.quantity == "kl_per_sequence"].sort_values("step")
    ax.fill_between(kl.step, kl.ci_low, kl.ci_high, color="grey", alpha=0.15)
    ax.plot(kl.step, kl.value, "s-", color="grey", label="KL(snapshot ‖ base), exact, on its samples")
    ax.set_ylabel("nats per sequence")
    ax2 = ax.twinx()
    rs = df[df.quantity == "reward_resampled"].sort_values("step")
    ax2.fill_between(rs.step, rs.ci_low, rs.ci_high, color=COLORS["tuned"], alpha=0.15)
    labels = {"reward_resampled": "reward of those samples (--reward)", "reward_logged_eval": "run's eval (eval.csv)",
              "reward_logged_rollout": "run's rollouts (metrics.csv)"}
    for q, style in (("reward_resampled", "o-"), ("reward_logged_eval", "^:"), ("reward_logged_rollout", "x:")):
        s = series(df, q)
        if len(s):
            ax2.plot(s.index, s.values, style, color=COLORS["tuned"], label=labels[q])
    ax2.set_ylabel("mean reward")
    ax.set_title("KL and reward (95% CIs over samples)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7, loc="lower right")
    ax = axes[1, 0]
    _trajectory_adl(fig, ax, df[df.quantity == "adl_rel_norm"])
    ax = axes[1, 1]
    w = df[(df.quantity == "weight_rel_change") & df.layer.isna()]
    for comp, g in w.groupby("component", sort=False):
        ax.plot(g.step, g.value, "o-", ms=3, label=str(comp))
    ax.set_title("weight change ‖ΔW‖ / ‖W_base‖ per kind", fontsize=10)
    if len(w):
        ax.legend(fontsize=7, ncol=2)
    for ax in axes.flat:
        ax.set_xlabel("PPO update (snapshot step)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _png(fig), ("When did it change: every point compares the base with the run's snapshot after that many PPO "
                       "updates (step 0: the base itself). Top left: the metric gap on the compare prompts, split "
                       "into the components' own outputs (activation) and the read-out; top right: exact KL and "
                       "reward of samples from each snapshot on the run's eval prompts, with the run's own logged "
                       "rewards; bottom: Activation Difference Lens norm per layer and relative weight change per "
                       "component kind (all layers). Numbers in tables/trajectory.csv.")
def crosscoder_figure(t: Tables) -> Figure | None:
    df = t.get("crosscoder_latents")
    if df is None or df.empty:
        return None
    live = df[df["class"] != "dead"].dropna(subset=["rel_norm"])
    only = live[live["class"] == "tuned-only"].dropna(subset=["nu_error", "nu_recon"])
    n = 2 if len(only) else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    for lo, hi, color in ((0, 0.1, COLORS["base"]), (0.4, 0.6, "#cccccc"), (0.9, 1.0, COLORS["tuned"])):
        ax.axvspan(lo, hi, color=color, alpha=0.15, lw=0)
    ax.hist(live.rel_norm, bins=np.linspace(0, 1, 41), color="#8172b3")
    counts = live["class"].value_counts()
    ax.set_title(", ".join(f"{c} {int(counts.get(c, 0))}" for c in ("base-only", "shared", "other", "tuned-only"))
                 + f", dead {int((df['class'] == 'dead').sum())}", fontsize=9)
    ax.set_xlabel("relative decoder norm Δ (0 base-only, 0.5 shared, 1 tuned-only)")
    ax.set_ylabel("latents")
    ax.set_xlim(0, 1)
    if n == 2:
        ax2 = axes[0, 1]
        ax2.scatter(only.nu_error, only.nu_recon, s=12, color=COLORS["tuned"])
        ax2.axvline(0.2, color="grey", ls=":")
        ax2.axhline(0.2, color="grey", ls=":")
        ax2.set_xlabel("ν error (base/tuned β): complete shrinkage if > 0.2")
        ax2.set_ylabel("ν reconstruction: latent decoupling if > 0.2")
        ax2.set_title("Latent Scaling of the tuned-only latents", fontsize=9)
    kind = str(df["kind"].iloc[0]) if "kind" in df else ""
    return _png(fig), (f"Crosscoder ({kind}) on both models' residual after block {int(df.layer.iloc[0])}: relative "
                       "decoder norm per live latent (shaded: base-only, shared, tuned-only bands of Minder et al.)"
                       + ("; right: Latent Scaling ratios ν = β_base / β_tuned of the tuned-only latents (near 0: "
                          "absent from base; above 0.2: an L1 artifact, the concept is in base after all)." if n == 2
                          else "."))


COMPARE_FIGURES: list[tuple[str, str, Callable[[Tables], Figure | None]]] = [
    ("reward_hist", "Behaviour: rewards", reward_hist),
    ("token_kl", "Behaviour: per-token KL", token_kl_heatmap),
    ("token_shift", "Promoted and suppressed tokens", token_shift_bars),
    ("gap_split", "Where the gap lives: read-out vs residual vs components", gap_split),
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
# figures of opt-in parts of compare (absent from a default compare), drawn after COMPARE_FIGURES when their table is
OPT_IN_FIGURES: list[tuple[str, str, Callable[[Tables], Figure | None]]] = [
    ("crosscoder", "Crosscoder", crosscoder_figure),  # --analyses all,crosscoder
    ("trajectory", "Training trajectory: when did it change", trajectory_figure),  # compare RUN --trajectory
]


def training_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None) -> Figure:
    from rlhf_interp.plots.training import PANELS, draw_training_curves

    fig = draw_training_curves(metrics, evals)
    names = "; ".join(title for title, _ in PANELS)
    return _png(fig), (f"Training curves per PPO update ({names}); red dots: the fixed evaluation set before, during "
                       "and after training.")
