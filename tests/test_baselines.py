"""Honest baselines for the causal tables: mean ablation over non-BOS positions (per position where prompts line up),
resample ablation, and bootstrap CIs over prompts of the statistic each table reports."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import plant_head

from rlhf_interp.analysis import ablation as ablation_mod
from rlhf_interp.analysis.ablation import ablation, first_real_position, replacements
from rlhf_interp.analysis.bootstrap import mean_ci, recovery_ci
from rlhf_interp.analysis.pair import load_pair
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, patching_heads, patching_layers, run_cache
from rlhf_interp.models import EMBEDDED_DIR, resolve_model_spec
from rlhf_interp.prompts import EMBEDDED_PROMPTS

PROMPTS = list(EMBEDDED_PROMPTS)
PLANT = (1, 2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tuned = plant_head(EMBEDDED_DIR, tmp_path_factory.mktemp("plant") / "head1_2", *PLANT)
    return load_pair(resolve_model_spec("embedded"), resolve_model_spec(tuned), PROMPTS, "logit_diff")


@pytest.fixture(scope="module")
def ablation_table(pair):
    return ablation(pair)


@pytest.fixture(scope="module")
def heads_table(pair):
    return patching_heads(pair)


def _hand_rolled_recovery(patched, recv, donor, seed, n_boot=1000):
    """The CI by its definition, one resample at a time: the ratio of the resample's means."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(recv), (n_boot, len(recv)))
    stats = [(patched[i].mean() - recv[i].mean()) / (donor[i].mean() - recv[i].mean()) for i in idx]
    return np.quantile(stats, 0.025), np.quantile(stats, 0.975)


def test_bootstrap_equals_a_hand_rolled_loop_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(1)
    n = 9
    recv = rng.normal(0, 1, n)
    donor = recv + rng.normal(2, 0.5, n)
    patched = recv + rng.normal(0.6, 0.4, (3, n))
    low, high = recovery_ci(patched, recv, donor, seed=5)
    for c in range(3):
        ref = _hand_rolled_recovery(patched[c], recv, donor, seed=5)
        assert low[c] == pytest.approx(ref[0], abs=1e-12) and high[c] == pytest.approx(ref[1], abs=1e-12)
    # the table's statistic is the ratio of means, not the mean of per-prompt ratios
    ratio_of_means = (patched[0].mean() - recv.mean()) / (donor.mean() - recv.mean())
    assert low[0] <= ratio_of_means <= high[0]
    # the mean's CI: same resamples, by hand
    m_low, m_high = mean_ci(patched, seed=5)
    idx = np.random.default_rng(5).integers(0, n, (1000, n))
    assert m_low[1] == pytest.approx(np.quantile(patched[1][idx].mean(1), 0.025), abs=1e-12)
    assert m_high[1] == pytest.approx(np.quantile(patched[1][idx].mean(1), 0.975), abs=1e-12)
    # more prompts from the same distribution: a narrower interval
    widths = []
    for n_prompts in (8, 64, 512):
        r = rng.normal(0, 1, n_prompts)
        d = r + rng.normal(2, 0.5, n_prompts)
        p = r + rng.normal(0.6, 0.4, (1, n_prompts))
        lo, hi = recovery_ci(p, r, d, seed=0)
        widths.append(hi[0] - lo[0])
    assert widths[0] > 2 * widths[1] > 4 * widths[2]
    # fewer than 2 prompts: nothing to resample
    assert np.isnan(recovery_ci(patched[:, :1], recv[:1], donor[:1], 0)[0]).all()


def test_mean_replacement_ignores_bos_and_is_per_position():
    g = torch.Generator().manual_seed(0)
    aligned, single = torch.randn(4, 5, 3, generator=g), torch.randn(1, 7, 3, generator=g)
    out = replacements([aligned, single], "mean", first=1)
    planted = [aligned.clone(), single.clone()]
    planted[0][:, 0] += 1000.0
    planted[1][:, 0] -= 1000.0
    out_planted = replacements(planted, "mean", first=1)
    for a, b, src in zip(out, out_planted, planted, strict=True):
        assert torch.equal(a[:, 1:], b[:, 1:])  # a change at BOS does not move the ablated value anywhere else
        assert torch.equal(b[:, :1], src[:, :1])  # and BOS itself is left as it is
    assert torch.allclose(out[0][:, 1:], aligned[:, 1:].mean(0, keepdim=True).expand(4, 4, 3))
    pooled = torch.cat([aligned[:, 1:].reshape(-1, 3), single[:, 1:].reshape(-1, 3)]).mean(0)
    assert torch.allclose(out[1][0, 1:], pooled.expand(6, 3), atol=1e-6)  # unaligned prompt: pooled fallback


def test_resample_takes_another_prompt_of_the_group():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(6, 4, 2, generator=g)
    out, none = replacements([acts, acts[:1]], "resample", first=1, rng=np.random.default_rng(3))
    assert none is None  # a prompt with no partner of its length is left out
    assert torch.equal(out[:, 0], acts[:, 0])
    donors = [next(j for j in range(6) if torch.equal(out[i, 1:], acts[j, 1:])) for i in range(6)]
    assert sorted(donors) == list(range(6)) and all(d != i for i, d in enumerate(donors))


def _hooked_effect(model, pair, name, head, per_group_values, first):
    """Mean over prompts of metric(ablated) − metric(clean), one hooked forward per group (plain bridge hooks)."""
    total = 0.0
    for (_, tokens), value in zip(pair.groups, per_group_values, strict=True):
        def hook(act, hook=None, value=value):
            if head is None:
                act[:, first:] = value[:, first:]
            else:
                act[:, first:, head] = value[:, first:, head]
            return act

        with torch.no_grad():
            ablated = pair.metric(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)]))
            total += (ablated - pair.metric(model(tokens))).sum().item()
    return total / len(pair.prompts)


def test_ablation_equals_hooked_forwards_with_independent_means(pair, ablation_table):
    """zero and mean ablation against hooks that replace the activation with means computed here: per position over
    the prompts of one length after BOS, pooled over every non-BOS position for a prompt with no partner."""
    assert first_real_position(pair) == 1 and sorted(len(i) for i, _ in pair.groups) == [1, 15]
    for model_name in ("base", "tuned"):
        model = pair.model(model_name)
        rows = ablation_table[ablation_table.model == model_name]
        for comp, hook, head in (("head", HEAD_HOOK, 2), ("head", HEAD_HOOK, 0), ("mlp", LAYER_COMPONENTS["mlp_out"],
                                                                                 None)):
            for L in range(4):
                name = hook.format(L=L)
                acts = [run_cache(model, tokens, [name])[name] for _, tokens in pair.groups]
                pooled = torch.cat([a[:, 1:].flatten(0, 1) for a in acts]).mean(0)
                means = [a.mean(0, keepdim=True).expand_as(a) if len(a) > 1 else pooled.expand_as(a) for a in acts]
                zeros = [torch.zeros_like(a) for a in acts]
                sel = rows[(rows.component == comp) & (rows.layer == L)]
                if head is not None:
                    sel = sel[sel["head"] == head]
                sel = sel.set_index("kind")
                assert sel.loc["mean", "effect"] == pytest.approx(_hooked_effect(model, pair, name, head, means, 1),
                                                                  abs=1e-4)
                assert sel.loc["zero", "effect"] == pytest.approx(_hooked_effect(model, pair, name, head, zeros, 0),
                                                                  abs=1e-4)
    assert set(ablation_table.kind) == {"zero", "mean", "resample"}
    res = ablation_table[ablation_table.kind == "resample"]
    assert (res.n_prompts == 15).all() and res.baseline.str.contains("1 unaligned prompt").all()
    assert ablation_table[ablation_table.kind == "mean"].baseline.str.contains("pooled").all()


def test_a_planted_change_at_bos_does_not_move_mean_or_resample_ablation(pair, ablation_table, monkeypatch):
    original = ablation_mod._activations

    def planted_at_bos(model, pair_, names):
        out = original(model, pair_, names)
        for acts in out:
            for name in names:
                acts[name] = acts[name].clone()
                acts[name][:, 0] += 50.0  # the BOS position's activations, changed hugely
        return out

    monkeypatch.setattr(ablation_mod, "_activations", planted_at_bos)
    planted = ablation(pair)
    for kind in ("mean", "resample"):
        a = ablation_table[ablation_table.kind == kind].effect.to_numpy()
        b = planted[planted.kind == kind].effect.to_numpy()
        assert np.abs(a - b).max() < 1e-6, kind
    # the plant does reach the sweep: zero ablation (which ablates BOS too) sees it
    a, b = (t[t.kind == "zero"].effect.to_numpy() for t in (ablation_table, planted))
    assert np.abs(a - b).max() > 0.01


def test_cis_bracket_the_effect_and_separate_the_planted_head_from_null_heads(ablation_table, heads_table):
    for table, col, low, high in ((ablation_table, "effect", "ci_low", "ci_high"),
                                  (heads_table, "effect", "ci_low", "ci_high"),
                                  (heads_table, "effect_z", "ci_low_z", "ci_high_z")):
        ok = table[[col, low, high]].dropna()
        assert len(ok) == len(table)
        assert ((ok[low] <= ok[col] + 1e-9) & (ok[col] <= ok[high] + 1e-9)).all()
    t2b = heads_table[heads_table.direction == "tuned_to_base"].set_index(["layer", "head"])
    assert t2b.loc[PLANT, "ci_low"] > 0.2  # (hook_z alone is blind to the plant's W_O: effect_z ~ 0 there)
    # heads below the planted one and its layer-mates: same weights, same inputs: effect 0, and the CI says so
    for L, h in [(0, 0), (0, 3), (1, 0), (1, 3)]:
        assert t2b.loc[(L, h), "ci_low"] <= 0 <= t2b.loc[(L, h), "ci_high"]
    tuned = ablation_table[(ablation_table.model == "tuned") & (ablation_table.component == "head")]
    planted = tuned[(tuned.layer == PLANT[0]) & (tuned["head"] == PLANT[1])].set_index("kind")
    assert planted.loc["zero", "ci_high"] < -1.0  # removing the planted head lowers the metric, beyond the CI
    # the plant writes (almost) the same vector at every position of every prompt: mean and resample ablation keep
    # it, so they must not see it (effect within ~1% of zero ablation's, CI across 0)
    for kind in ("mean", "resample"):
        row = planted.loc[kind]
        assert abs(row.effect) < 0.01 * abs(planted.loc["zero", "effect"]) and row.ci_low <= 0 <= row.ci_high


@pytest.mark.parametrize("head", [PLANT, (2, 1)])
def test_patching_ci_equals_a_hand_rolled_bootstrap_of_hooked_per_prompt_values(pair, heads_table, head):
    """A head patched tuned -> base with plain bridge hooks, prompt by prompt (its whole output z W_O added to the
    attention output, and its hook_z alone); the table's CIs are the hand-rolled bootstrap of exactly those values."""
    L, h = head
    z_name, out_name = HEAD_HOOK.format(L=L), LAYER_COMPONENTS["attn_out"].format(L=L)
    n = len(pair.prompts)
    whole, z_only, recv, donor = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for idx, tokens in pair.groups:
        z_t = run_cache(pair.tuned, tokens, [z_name])[z_name]
        z_b = run_cache(pair.base, tokens, [z_name])[z_name]
        delta = z_t[:, :, h] @ pair.tuned.W_O[L, h] - z_b[:, :, h] @ pair.base.W_O[L, h]

        def put_z(act, hook=None, z=z_t):
            act[:, :, h] = z[:, :, h]
            return act

        def add_out(act, hook=None, delta=delta):
            return act + delta

        with torch.no_grad():
            z_only[idx] = pair.metric(pair.base.run_with_hooks(tokens, fwd_hooks=[(z_name, put_z)])).numpy()
            whole[idx] = pair.metric(pair.base.run_with_hooks(tokens, fwd_hooks=[(out_name, add_out)])).numpy()
            recv[idx] = pair.metric(pair.base(tokens)).numpy()
            donor[idx] = pair.metric(pair.tuned(tokens)).numpy()
    row = heads_table[(heads_table.direction == "tuned_to_base") & (heads_table.layer == L)
                      & (heads_table["head"] == h)].iloc[0]
    for patched, col, suffix in ((whole, "effect", ""), (z_only, "effect_z", "_z")):
        point = (patched.mean() - recv.mean()) / (donor.mean() - recv.mean())
        assert row[col] == pytest.approx(point, abs=1e-4)
        low, high = _hand_rolled_recovery(patched, recv, donor, seed=0)
        assert row["ci_low" + suffix] == pytest.approx(low, abs=1e-4)
        assert row["ci_high" + suffix] == pytest.approx(high, abs=1e-4)


def test_patching_cis_shrink_with_more_prompts_and_close_the_books(pair):
    idx, tokens = pair.main_group
    few = dataclasses.replace(pair, prompts=[pair.prompts[i] for i in idx[:4]], groups=[(list(range(4)), tokens[:4])])
    full, small = patching_layers(pair), patching_layers(few)
    key = ["direction", "component", "layer", "pos"]
    m = full.merge(small, on=key, suffixes=("", "_few")).dropna(subset=["ci_low", "ci_low_few"])
    width, width_few = m.ci_high - m.ci_low, m.ci_high_few - m.ci_low_few
    big = (m.effect.abs() > 0.05) & (width_few > 1e-6)  # cells that recover exactly 100% on every prompt: width 0
    assert big.sum() >= 4 and (width[big] < width_few[big]).all()
    closing = full[(full.direction == "tuned_to_base") & (full.layer == 4)].set_index("component")
    assert closing.loc["final_resid+unembed", "effect"] == pytest.approx(1.0, abs=1e-4)
    assert closing.loc["final_resid+unembed", "ci_low"] == pytest.approx(1.0, abs=1e-4)
    inter = closing.loc["interaction"]
    assert inter.ci_low <= inter.effect <= inter.ci_high


def _synthetic_tables(with_ci: bool = True) -> dict:
    import pandas as pd

    heads, ablate = [], []
    for L in range(2):
        for h in range(2):
            e = 0.6 if (L, h) == (1, 0) else 0.01 * (h - L)
            for d in ("tuned_to_base", "base_to_tuned"):
                heads.append({"direction": d, "layer": L, "head": h, "effect": e, "effect_z": e / 2,
                              "ci_low": e - 0.05, "ci_high": e + 0.05, "ci_low_z": e / 2 - 0.05,
                              "ci_high_z": e / 2 + 0.05})
            for m in ("base", "tuned"):
                ablate.append({"layer": L, "head": h, "component": "head", "model": m, "kind": "mean",
                               "effect": -e, "ci_low": -e - 0.02, "ci_high": -e + 0.02, "n_prompts": 9,
                               "baseline": "per-position mean over prompts of equal length, after BOS"})
    layers = [{"direction": "tuned_to_base", "component": c, "layer": 2, "pos": 3, "token": " is", "effect": v,
               "ci_low": v - 0.01, "ci_high": v + 0.01} for c, v in (("unembed", 0.855), ("final_resid", 0.079),
                                                                    ("final_resid+unembed", 1.0),
                                                                    ("interaction", 0.066))]
    layers += [{"direction": "tuned_to_base", "component": "mlp_out", "layer": 1, "pos": 3, "token": " is",
                "effect": 0.031, "ci_low": 0.02, "ci_high": 0.04}]
    tables = {"patching_heads": pd.DataFrame(heads), "ablation": pd.DataFrame(ablate),
              "patching_layers": pd.DataFrame(layers)}
    if not with_ci:
        tables = {k: v.drop(columns=[c for c in v if c.startswith("ci_")]) for k, v in tables.items()}
    return tables


def test_findings_and_figures_quote_the_ci():
    from rlhf_interp.report.figures import ablation_heatmaps, patching_head_heatmaps
    from rlhf_interp.report.findings import _patching

    text = " ".join(_patching(_synthetic_tables(), {}))
    assert "L1H0 +60.0% (95% CI +55.0% to +65.0%)" in text
    assert "+85.5% (95% CI +84.5% to +86.5%) of the gap" in text
    assert "mlp_out at layer 1, position 3 (' is'): +3.10% (95% CI +2.00% to +4.00%)" in text
    png, caption = patching_head_heatmaps(_synthetic_tables())
    assert png[:4] == b"\x89PNG" and "L1H0 +60% (95% CI +55% to +65%)" in caption and "includes 0" in caption
    png, caption = ablation_heatmaps(_synthetic_tables())
    assert "after BOS" in caption and "(95% CI" in caption
    # tables of older runs, without CI columns, still render and read (no CI quoted)
    old = _synthetic_tables(with_ci=False)
    assert "95% CI" not in " ".join(_patching(old, {})) and "L1H0 +60.0%" in " ".join(_patching(old, {}))
    assert patching_head_heatmaps(old) is not None and ablation_heatmaps(old) is not None
