"""The "findings" at the top of a report: sentences generated from the tables, each carrying its numbers."""

from __future__ import annotations

from typing import Any

import pandas as pd

Tables = dict[str, pd.DataFrame]


def _fmt_cell(r: Any, keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        v = r[k]
        if pd.isna(v):
            continue
        parts.append({"layer": "L", "head": "H", "pos": "pos "}.get(k, "") + (str(int(v)) if k != "component"
                                                                                 and k != "token" else str(v)))
    return " ".join(parts)


def compare_findings(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for part in (_metric, _behaviour, _patching, _dla_and_weights, _diffing):
        out += part(t, summary)
    return out


def _metric(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    m = summary.get("metric", {})
    ld = t.get("logit_diff")
    if ld is not None and len(ld):
        row = ld[(ld.prompt == "(mean)") & (ld.model == "delta")].iloc[0]
        out.append(f"The metric ({m.get('name')}) moved from {m.get('base', float('nan')):+.3f} (base) to "
                   f"{m.get('tuned', float('nan')):+.3f} (tuned): a gap of {row.metric:+.3f} "
                   f"(95% bootstrap CI {row.ci_low:+.3f} to {row.ci_high:+.3f}) over {summary.get('prompts')} prompts.")
    return out


def _behaviour(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    bs = t.get("behaviour_summary")
    if bs is not None and len(bs) == 2:
        b, tu = bs.set_index("model").loc["base"], bs.set_index("model").loc["tuned"]
        out.append(f"Sampled continuations: mean reward {b.reward_mean:+.3f} → {tu.reward_mean:+.3f}, paying "
                   f"{tu.kl_per_sequence:.2f} nats of KL(tuned ‖ base) per sequence.")
        hacking = []
        if tu.distinct_2 < b.distinct_2 - 0.1:
            hacking.append(f"distinct-2 fell {b.distinct_2:.2f} → {tu.distinct_2:.2f}")
        if tu.repetition_3 > max(0.1, 2 * b.repetition_3):
            hacking.append(f"3-gram repetition rose {b.repetition_3:.3f} → {tu.repetition_3:.3f}")
        if abs(tu.eos_rate - b.eos_rate) > 0.2:
            hacking.append(f"EOS rate moved {b.eos_rate:.2f} → {tu.eos_rate:.2f}")
        if hacking:
            out.append("Signs of reward hacking: " + "; ".join(hacking) + ".")
        else:
            out.append(f"No strong sign of reward hacking in the text statistics: distinct-2 {b.distinct_2:.2f} → "
                       f"{tu.distinct_2:.2f}, 3-gram repetition {b.repetition_3:.3f} → {tu.repetition_3:.3f}, "
                       f"EOS rate {b.eos_rate:.2f} → {tu.eos_rate:.2f}.")
    return out


def _patching(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    ph = t.get("patching_heads")
    if ph is not None and len(ph):
        sub = ph[ph.direction == "tuned_to_base"].dropna(subset=["effect"])
        top = sub.reindex(sub.effect.abs().sort_values(ascending=False).index).head(3)
        cells = ", ".join(f"L{int(r.layer)}H{int(r['head'])} ({r.effect:+.1%})" for _, r in top.iterrows())
        out.append(f"Patching one head's output from tuned into base: the largest effects (fraction of the gap) are "
                   f"{cells}.")
    pl = t.get("patching_layers")
    if pl is not None and len(pl):
        sub = pl[(pl.direction == "tuned_to_base") & pl.component.isin(["attn_out", "mlp_out"])].dropna(
            subset=["effect"])
        if len(sub):
            r = sub.loc[sub.effect.abs().idxmax()]
            out.append(f"The attention/MLP output whose patching recovers most of the gap is {r.component} at layer "
                       f"{int(r.layer)}, position {int(r.pos)} ({r.token!r}): {r.effect:+.1%}.")
        un = pl[(pl.component == "unembed") & (pl.direction == "tuned_to_base")]
        if len(un):
            out.append(f"Reading the base model's final residual through the tuned model's final LayerNorm gain and "
                       f"unembedding recovers {un.effect.iloc[0]:+.1%} of the gap (GPT-2 ties W_U to W_E, so PPO "
                       f"moves the unembedding directly).")
    return out


def _dla_and_weights(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    dl = t.get("dla_layers")
    if dl is not None and len(dl):
        d = dl[(dl.model == "delta") & dl.component.isin(["attn", "mlp", "embed", "pos_embed"])]
        if len(d):
            r = d.loc[d.attribution.abs().idxmax()]
            where = r.component + ("" if pd.isna(r.layer) else str(int(r.layer)))
            out.append(f"Direct logit attribution: the largest change in a component's direct contribution is {where} "
                       f"({r.attribution:+.3f}).")
    corr = summary.get("attribution_vs_exact_correlation")
    if corr:
        out.append(f"Attribution patching correlates with exact patching at r = {corr.get('head', float('nan')):.2f} "
                   f"(heads) and r = {corr.get('layer', float('nan')):.2f} (layer × position).")
    wd = t.get("weight_diff")
    if wd is not None and len(wd):
        top = wd.nlargest(3, "rel_change")
        cells = ", ".join(_fmt_cell(r, ("component", "layer", "head")) + f" ({r.rel_change:.1%})"
                          for _, r in top.iterrows())
        out.append(f"Largest relative weight changes: {cells}.")
    return out


def _diffing(t: Tables, summary: dict[str, Any]) -> list[str]:
    """What the open-ended model-diffing analyses (adl, amplification, diff_mining) point at."""
    out: list[str] = []
    norms, adl = t.get("adl_norm"), t.get("adl")
    if norms is not None and len(norms) and adl is not None:
        r = norms.loc[norms.rel_norm.idxmax()]
        toks = adl[(adl.layer == r.layer) & (adl.direction == "promoted")].sort_values("rank").token.head(5)
        out.append(f"Activation Difference Lens (text unrelated to the prompts, first {int(r.positions)} tokens of "
                   f"{int(r.texts)} texts): the mean residual difference is largest after layer {int(r.layer)} "
                   f"({r.rel_norm:.1%} of the base residual's norm); read through the logit lens it promotes "
                   f"{', '.join(repr(x) for x in toks)}.")
    st = t.get("adl_steering")
    if st is not None and len(st) > 1:
        s0, s1 = st.iloc[0], st.iloc[-1]
        out.append(f"Steering the base model with α·(that difference) at layer {int(s0.layer)}: reward "
                   f"{s0.reward_mean:+.3f} at α = {s0.alpha:g} → {s1.reward_mean:+.3f} at α = {s1.alpha:g}, KL to "
                   f"base {s1.kl_vs_base:.2f} nats per sequence.")
    amp, toks = t.get("amplification"), t.get("amplification_tokens")
    if amp is not None and len(amp) > 1:
        a0, a1 = amp.iloc[0], amp.iloc[-1]
        rising = ""
        if toks is not None and len(toks):
            top = toks[toks.alpha == toks.alpha.max()].sort_values("rank").token.head(5)
            rising = f"; tokens that become more frequent than in tuned samples: {', '.join(repr(x) for x in top)}"
        out.append(f"Logit-diff amplification: reward {a0.reward_mean:+.3f} (α = {a0.alpha:g}, tuned sampling) → "
                   f"{a1.reward_mean:+.3f} (α = {a1.alpha:g}), distinct-2 {a0.distinct_2:.2f} → {a1.distinct_2:.2f}"
                   f"{rising}.")
    dm = t.get("diff_mining")
    if dm is not None and len(dm):
        top = dm[dm.direction == "promoted"].head(5)
        cells = ", ".join(f"{r.token!r} ({r.fraction:.0%})" for r in top.itertuples())
        out.append(f"Diff mining over {int(dm.positions.iloc[0])} positions: tokens most often among the top "
                   f"log-prob gains are {cells} (fraction of positions).")
    return out


def training_findings(metrics: pd.DataFrame, evals: pd.DataFrame) -> list[str]:
    out = []
    if len(evals):
        b, a = evals.iloc[0], evals.iloc[-1]
        out.append(f"Evaluation-set score {b.score_mean:+.3f} → {a.score_mean:+.3f} after {int(a.step)} updates, with "
                   f"KL(tuned ‖ base) {a.kl:.2f} nats per sequence.")
        out.append(f"Text statistics on the evaluation set: distinct-2 {b.distinct_2:.2f} → {a.distinct_2:.2f}, 3-gram "
                   f"repetition {b.repetition_3:.3f} → {a.repetition_3:.3f}, EOS rate {b.eos_rate:.2f} → "
                   f"{a.eos_rate:.2f}, mean length {b.response_len:.1f} → {a.response_len:.1f} tokens.")
    if len(metrics):
        last = metrics.iloc[-1]
        out.append(f"Last update: clip fraction {last.clipfrac:.3f}, approx-KL {last.approx_kl:.4f}, explained "
                   f"variance {last.explained_var:.2f}, {last.episodes_per_s:.1f} episodes/s.")
        ev = metrics.explained_var.median()
        if ev == ev and ev < 0.3:  # not NaN, and a critic that explains little
            out.append(f"The value head (a linear map on the policy's own final residual stream, sharing its trunk) "
                       f"explains little of the returns: median explained variance {ev:.2f}, so the advantages are "
                       f"close to whitened rewards-to-go rather than a learned baseline.")
    return out
