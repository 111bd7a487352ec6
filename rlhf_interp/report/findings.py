"""The "findings" at the top of a report: sentences generated from the tables, each carrying its numbers."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from rlhf_interp.analysis.summary import head_effect_column
from rlhf_interp.report.numbers import with_ci

Tables = dict[str, pd.DataFrame]


def compare_findings(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for part in (_metric, _behaviour, _patching, _dla_and_weights, _readout_and_direction, _diffing, _crosscoder,
                 _trajectory):
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
        if m.get("name") == "logprob_diff":  # the metric for any tokenizer: say why it ran
            out[-1] += f" Why logprob_diff: {m.get('reason', '')}."
    return out


def _behaviour(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    bs = t.get("behaviour_summary")
    if bs is not None and len(bs) == 2:
        b, tu = bs.set_index("model").loc["base"], bs.set_index("model").loc["tuned"]
        out.append(f"Sampled continuations: mean reward {b.reward_mean:+.3f} → {tu.reward_mean:+.3f}, paying "
                   f"{tu.kl_per_sequence:.2f} nats of KL(tuned ‖ base) per sequence.")
        bc = t.get("behaviour_change")
        if bc is not None and len(bc):
            out.append(_hacking(bc.set_index("statistic")))
    return out


# text statistic -> (threshold on tuned − base in the hacking direction, sign of that direction, format)
HACKING_SIGNS = {"distinct_2": (0.1, -1, ".2f"), "repetition_3": (0.05, +1, ".3f"), "eos_rate": (0.2, 0, ".2f")}


def _hacking(bc: pd.DataFrame) -> str:
    """Reward-hacking signs read against the 95% bootstrap CI of each change (`behaviour_change`): a sign only when
    the whole CI lies beyond the threshold, "not conclusive" when the CI straddles it, so kernel-level noise between
    two re-runs cannot flip the sentence without the CI showing it."""
    signs, unclear, calm = [], [], []
    for stat, (thr, sign, fmt) in HACKING_SIGNS.items():
        if stat not in bc.index:
            continue
        r = bc.loc[stat]
        lo, hi = (r.ci_low, r.ci_high) if sign >= 0 else (-r.ci_high, -r.ci_low)
        if sign == 0:  # either direction: the |change| interval
            lo, hi = (0.0 if r.ci_low <= 0 <= r.ci_high else min(abs(r.ci_low), abs(r.ci_high))), max(
                abs(r.ci_low), abs(r.ci_high))
        text = (f"{stat.replace('_', '-')} {r.base:{fmt}} → {r.tuned:{fmt}} (change {r.change:+{fmt}}, 95% CI "
                f"{r.ci_low:+{fmt}} to {r.ci_high:+{fmt}}; threshold {thr:g})")
        (signs if lo > thr else unclear if hi > thr else calm).append(text)
    parts = []
    if signs:
        parts.append("Signs of reward hacking (the whole 95% CI beyond the threshold): " + "; ".join(signs) + ".")
    if unclear:
        parts.append("Not conclusive (the CI straddles the threshold): " + "; ".join(unclear) + ".")
    if not signs and not unclear:
        parts.append("No sign of reward hacking in the text statistics (every CI within its threshold): "
                     + "; ".join(calm) + ".")
    return " ".join(parts)


def _pct_ci(r: Any, col: str = "effect", suffix: str = "") -> str:
    """A patching effect as % of the gap with its 95% bootstrap CI over prompts where the table has one."""
    return with_ci(r[col], r.get(f"ci_low{suffix}", float("nan")), r.get(f"ci_high{suffix}", float("nan")),
                   percent=True, digits=3)


def _patching(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    ph = t.get("patching_heads")
    if ph is not None and len(ph):
        col = head_effect_column(ph)
        sub = ph[ph.direction == "tuned_to_base"].dropna(subset=[col])
        top = sub.reindex(sub[col].abs().sort_values(ascending=False).index).head(3)
        suffix = "" if col == "effect" else "_z"
        cells = ", ".join(f"L{int(r.layer)}H{int(r['head'])} {_pct_ci(r, col, suffix)}" for _, r in top.iterrows())
        what = "one head's output" if col == "effect" else ("one head's hook_z (its output passes a post-attention "
                                                            "norm, so head outputs do not add)")
        out.append(f"Patching {what} from tuned into base: the largest effects (fraction of the gap) are {cells}.")
    pl = t.get("patching_layers")
    if pl is not None and len(pl):
        sub = pl[(pl.direction == "tuned_to_base") & pl.component.isin(["attn_out", "mlp_out"])].dropna(
            subset=["effect"])
        if len(sub):
            r = sub.loc[sub.effect.abs().idxmax()]
            out.append(f"The attention/MLP output whose patching recovers most of the gap is {r.component} at layer "
                       f"{int(r.layer)}, position {int(r.pos)} ({r.token!r}): {_pct_ci(r)}.")
        closing = pl[(pl.direction == "tuned_to_base") & pl.component.isin(
            ["unembed", "final_resid", "final_resid+unembed", "interaction"])].set_index("component")
        rows = {k: _pct_ci(r) for k, r in closing.iterrows()}
        if "unembed" in rows:
            text = (f"Swapping the read-out (final norm gain and bias, and the unembedding) from tuned into base "
                    f"recovers {rows['unembed']} of the gap (`patching_layers`, component unembed)")
            if "final_resid" in rows:
                several = pl[pl.component == "final_resid"].pos.isna().all()  # a metric reading several positions
                text += (f"; swapping the final residual stream alone (the input of the final norm, at the read-out "
                         f"position{'s' if several else ''}) recovers {rows['final_resid']}")
            if "interaction" in rows:
                text += f"; both together recover {rows.get('final_resid+unembed', 'nan')}, " \
                        f"an interaction of {rows['interaction']}"
            out.append(text + ".")
    return out


def _dla_and_weights(t: Tables, summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    dl = t.get("dla_layers")
    if dl is not None and len(dl):
        comps = dl.component.isin(["attn", "mlp", "embed", "pos_embed"])
        act = dl[(dl.model == "delta_activation") & comps]
        total = dl[dl.component == "total"].set_index("model").attribution
        first = "term" in dl.columns and (dl.term == "first_token").all()  # logprob_diff: its first-token term
        what = "the first-token term's change" if first else "the mean metric change"
        if first:
            out.append(f"Direct logit attribution and the logit lens decompose the first-token term of logprob_diff "
                       f"(mean logit of the positive words' first tokens minus the negative words', at the last "
                       f"prompt position; it moved {total.get('delta', float('nan')):+.3f}, against the metric's gap "
                       f"of {summary.get('metric', {}).get('gap', float('nan')):+.3f}); the words' later tokens are "
                       f"not decomposed.")
        if len(act) and {"delta", "delta_readout"} <= set(total.index) and total["delta"] != 0:
            out.append(f"Direct logit attribution (`dla_layers`): of {what} {total['delta']:+.3f}, "
                       f"{total['delta_readout']:+.3f} ({total['delta_readout'] / total['delta']:.0%}) is the "
                       f"read-out (final-norm gain and bias and the unembedding, applied to fixed activations; the "
                       f"norm's per-prompt scale goes with the activations) and "
                       f"{total['delta_activation']:+.3f} the components' own activations (midpoint split).")
            r = act.loc[act.attribution.abs().idxmax()]
            where = r.component + ("" if pd.isna(r.layer) else str(int(r.layer)))
            d = dl[(dl.model == "delta") & (dl.component == r.component)
                   & ((dl.layer == r.layer) | (dl.layer.isna() & pd.isna(r.layer)))].attribution
            out.append(f"The component whose own direct contribution changed most (activation part) is {where}: "
                       f"{r.attribution:+.3f}" + (f" of its total delta {d.iloc[0]:+.3f}" if len(d) else "") + ".")
    corr = summary.get("attribution_vs_exact_correlation")
    parts = [f"r = {float(corr[k]):.2f} ({label})" for k, label in (("head", "heads"), ("layer", "layer × position"))
             if corr and corr.get(k) is not None and math.isfinite(float(corr[k]))]
    if parts:  # a NaN correlation (e.g. no additive head effects under a post-attention norm) is no finding
        out.append("Attribution patching correlates with exact patching at " + " and ".join(parts) + ".")
    wd = t.get("weight_diff")
    if wd is not None and len(wd):
        from rlhf_interp.report.figures import weight_labels

        top = wd.nlargest(3, "rel_change")
        cells = ", ".join(f"{label} ({r.rel_change:.1%})" for label, (_, r) in zip(weight_labels(top), top.iterrows(),
                                                                                   strict=True))
        out.append(f"Largest relative weight changes: {cells}.")
    return out


def _readout_and_direction(t: Tables, summary: dict[str, Any]) -> list[str]:
    """unembed_change (the metric's read-out vector) and direction (the residual change at the metric position)."""
    out: list[str] = []
    ue = t.get("unembed_change")
    if ue is not None and len(ue):
        md = ue[(ue.kind == "metric_direction") & (ue.quantity == "readout")]
        sv = ue[(ue.kind == "singular_value") & (ue["rank"] == 1)]
        if len(md):
            r = md.iloc[0]
            out.append(f"The metric's read-out vector in the unembedding (`unembed_change`: mean row of the positive "
                       f"minus the negative tokens) changed in norm ×{r.value:.2f} with cosine {r.cosine:.2f} between "
                       f"the models; along the base's direction it grew {r.share:+.1%}.")
        if len(sv):
            s = sv.iloc[0]
            out.append(f"The top singular direction of the unembedding change carries {s.share:.0%} of ‖ΔW_U‖² "
                       f"(σ₁ = {s.value:.3f} against the base matrix's σ₁ = {s.base:.2f}).")
    d = t.get("direction")
    if d is not None and len(d) and "method" in d:
        fit = d[d.method == "fitted_direction"].dropna(subset=["recovery"])
        if len(fit):
            r = fit.loc[fit.recovery.abs().idxmax()]
            at = d[d.layer == r.layer].set_index("method")
            rand = at.loc["random_direction"] if "random_direction" in at.index else None
            tail = (f", random directions moved by the same amounts {rand.recovery:+.1%} ± {rand.recovery_sd:.1%} "
                    f"(sd over {int(rand.n_draws)} draws)" if rand is not None else "")
            held = "held out" if bool(r.get("held_out", True)) else "in-sample: too few prompts to hold out"
            out.append(f"Patching base along the mean residual change at the metric position (`direction`, layer "
                       f"{int(r.layer)}, {held}) recovers {r.recovery:+.1%} of the gap; the full difference there "
                       f"{at.loc['full_difference'].recovery:+.1%}{tail}. Its cosine with the metric read-out is "
                       f"{r.cosine_readout:.2f}.")
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


def _trajectory(t: Tables, summary: dict[str, Any]) -> list[str]:
    """When the run's snapshots changed: half-way steps of the gap, KL, ADL norm and weights."""
    from rlhf_interp.analysis.trajectory import half_way_step, series
    from rlhf_interp.report.numbers import sig

    df = t.get("trajectory")
    if df is None or df.empty:
        return []
    steps = sorted(int(s) for s in df.step.unique())

    def when(s: pd.Series) -> str:
        h = half_way_step([int(i) for i in s.index], [float(v) for v in s.values])
        return f"half of it by step {h}" if h is not None else "no net change"

    parts = []
    gap = series(df, "metric_gap")
    if len(gap) > 1:
        text = f"the metric gap went {sig(gap.iloc[0], 3)} → {sig(gap.iloc[-1], 3)} ({when(gap)})"
        peak = gap.abs().idxmax()
        if abs(gap[peak]) > 1.25 * abs(gap.iloc[-1]) and peak != gap.index[-1]:
            text += f", after peaking at {sig(gap[peak], 3)} at step {peak}"
        parts.append(text)
    kl = series(df, "kl_per_sequence")
    if len(kl) > 1:
        kl_rows = df[df.quantity == "kl_per_sequence"]
        on = "the compare prompts (the run has no prompts_eval.txt)" if (kl_rows.component == "compare_prompts").any() \
            else "the eval prompts"
        parts.append(f"KL(snapshot ‖ base) on {on} {sig(kl.iloc[-1], 3, sign=False)} nats per sequence "
                     f"at the end ({when(kl)})")
    adl = df[df.quantity == "adl_rel_norm"]
    if len(adl):
        layer = int(adl[adl.step == adl.step.max()].set_index("layer").value.idxmax())
        s = series(df, "adl_rel_norm", layer=layer)
        parts.append(f"the ADL difference is largest after layer {layer} ({s.iloc[-1]:.1%} of the base residual; "
                     f"{when(s)})")
    w = series(df, "weight_rel_change", component="all_params")
    if len(w) > 1:
        parts.append(f"the weights moved ‖Δθ‖ / ‖θ_base‖ = {sig(w.iloc[-1], 2, sign=False)} ({when(w)})")
    if not parts:
        return []
    out = [f"Trajectory over {len(steps)} points of the run (steps {steps[0]}–{steps[-1]}): " + "; ".join(parts) + "."]
    act, read = series(df, "dla_delta_activation", component="total"), series(df, "dla_delta_readout",
                                                                              component="total")
    if len(act) and len(read):
        out.append(f"At step {int(act.index[-1])} the gap is {sig(act.iloc[-1], 3)} from the components' own outputs "
                   f"and {sig(read.iloc[-1], 3)} from the read-out (final-norm gain and bias, unembedding).")
    return out


def _crosscoder(t: Tables, summary: dict[str, Any]) -> list[str]:
    """The crosscoder's latent classes, its artifact flags and the top tuned-only (or tuned-leaning) latent."""
    lt, fvu, top = t.get("crosscoder_latents"), t.get("crosscoder_fvu"), t.get("crosscoder_top")
    if lt is None or lt.empty or fvu is None or fvu.empty:
        return []
    m = fvu.iloc[0]
    split = "heldout" if (fvu.split == "heldout").any() else "train"
    f = fvu[fvu.split == split].set_index("model").fvu
    what = f"BatchTopK k={int(m.k)}" if m.kind == "batchtopk" else f"L1 λ={m.l1:g}"
    counts = lt["class"].value_counts()
    only = lt[lt["class"] == "tuned-only"]
    text = (f"Crosscoder ({what}, {int(m.latents)} latents, residual after block {int(m.layer)}, "
            f"{int(fvu[fvu.split == 'train'].tokens.iloc[0]):,} training tokens): FVU ({split}) base "
            f"{f.get('base', float('nan')):.1%}, tuned {f.get('tuned', float('nan')):.1%}; of "
            f"{len(lt) - int(counts.get('dead', 0))} live latents {int(counts.get('tuned-only', 0))} are tuned-only, "
            f"{int(counts.get('base-only', 0))} base-only, {int(counts.get('shared', 0))} shared.")
    if len(only):
        flagged = only[only.artifact.fillna("") != ""]
        cs = flagged.artifact.str.contains("complete_shrinkage").sum()
        text += (f" Latent Scaling flags {len(flagged)} of the {len(only)} tuned-only latents as L1-style artifacts "
                 f"(the base activations carry them after all, ν > 0.2: complete shrinkage {cs}, latent decoupling "
                 f"{flagged.artifact.str.contains('latent_decoupling').sum()}).")
    if top is not None and len(top):
        j = top[top.latent_rank == 0]
        ctx = j[j.kind == "context"].sort_values("rank")
        prom = j[j.kind == "promoted"].sort_values("rank").token.head(5)
        r = j.iloc[0]
        label = "The top tuned-only latent" if r["class"] == "tuned-only" else (
            f"No latent is tuned-only; the most used tuned-leaning one (Δ = {r.rel_norm:.2f})")
        flag = f", flagged {r.artifact}" if isinstance(r.artifact, str) and r.artifact else ""
        text += (f" {label}, #{int(r.latent)}{flag}, fires most on {ctx.context.iloc[0]!r}" if len(ctx) else
                 f" {label}, #{int(r.latent)}{flag},")
        text += f" and its tuned decoder promotes {', '.join(repr(x) for x in prom)}."
    return [text]


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
