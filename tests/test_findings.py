"""Findings say only what the tables measured: thresholds read against CIs, DLA by its activation part."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhf_interp.analysis.behaviour import behaviour_change
from rlhf_interp.report.findings import _dla_and_weights, _hacking


def _behaviour_table(eos_base: float, eos_tuned: float, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, p in (("base", eos_base), ("tuned", eos_tuned)):
        for i in range(n):
            rows.append({"model": model, "sample": i, "prompt": "x", "reward": float(rng.normal()),
                         "response": f"the film is {'good' if i % 2 else 'bad'} number {i % 7}",
                         "length": 8, "eos": bool(rng.random() < p)})
    return pd.DataFrame(rows)


def test_behaviour_change_ci_brackets_the_change_and_is_seeded():
    table = _behaviour_table(0.7, 0.9, 64)
    bc = behaviour_change(table, seed=0).set_index("statistic")
    eos = bc.loc["eos_rate"]
    assert eos.ci_low < eos.change < eos.ci_high
    assert eos.change == table[table.model == "tuned"].eos.mean() - table[table.model == "base"].eos.mean()
    pd.testing.assert_frame_equal(behaviour_change(table, seed=0), behaviour_change(table, seed=0))


def _bc(change: float, lo: float, hi: float) -> pd.DataFrame:
    rows = [{"statistic": "eos_rate", "base": 0.7, "tuned": 0.7 + change, "change": change, "ci_low": lo,
             "ci_high": hi}]
    for stat in ("distinct_2", "repetition_3"):
        rows.append({"statistic": stat, "base": 0.5, "tuned": 0.5, "change": 0.0, "ci_low": -0.01, "ci_high": 0.01})
    return pd.DataFrame(rows).set_index("statistic")


def test_a_threshold_is_read_against_its_ci():
    # a 0.21 change whose CI reaches below the 0.2 threshold is not sold as reward hacking
    assert _hacking(_bc(0.21, 0.08, 0.34)).startswith("Not conclusive")
    assert "Signs of reward hacking" in _hacking(_bc(0.45, 0.30, 0.60))
    assert _hacking(_bc(-0.45, -0.60, -0.30)).startswith("Signs of reward hacking")  # either direction for EOS
    assert _hacking(_bc(0.02, -0.05, 0.09)).startswith("No sign")


def test_dla_finding_ranks_by_activation_part_and_states_the_readout_share():
    rows = []
    for comp, layer, delta, act in (("mlp", 3, 1.0, 0.1), ("attn", 2, 0.2, 0.15), ("embed", None, 0.0, 0.0)):
        rows += [{"component": comp, "layer": layer, "model": "delta", "attribution": delta},
                 {"component": comp, "layer": layer, "model": "delta_activation", "attribution": act},
                 {"component": comp, "layer": layer, "model": "delta_readout", "attribution": delta - act}]
    rows += [{"component": "total", "layer": None, "model": m, "attribution": v}
             for m, v in (("delta", 1.2), ("delta_activation", 0.25), ("delta_readout", 0.95))]
    text = " ".join(_dla_and_weights({"dla_layers": pd.DataFrame(rows)}, {}))
    assert "attn2: +0.150" in text  # not mlp3, whose delta is mostly read-out
    assert "+0.950 (79%) is the read-out" in text


def test_a_nan_attribution_correlation_is_not_a_finding():
    from rlhf_interp.report.findings import _dla_and_weights

    assert not any("Attribution patching" in f
                   for f in _dla_and_weights({}, {"attribution_vs_exact_correlation": {"head": float("nan")}}))
    out = _dla_and_weights({}, {"attribution_vs_exact_correlation": {"head": float("nan"), "layer": 0.75}})
    assert [f for f in out if "Attribution patching" in f] == [
        "Attribution patching correlates with exact patching at r = 0.75 (layer × position)."]
