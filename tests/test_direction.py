"""direction: on a pair whose tuned model adds one planted vector to the residual stream at the last layer, the fitted
direction is that vector, patching along it recovers the whole gap, and random directions of the same size do not."""

import math

import pytest
import torch
from helpers import sentiment_direction

from rlhf_interp.analysis.direction import _differences, direction, fit_directions
from rlhf_interp.analysis.pair import load_pair
from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm, resolve_model_spec, save_model
from rlhf_interp.prompts import EMBEDDED_PROMPTS

LAYER = 3  # the last block: only the metric position matters after it, so patching it there closes the gap


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory):
    """Tuned = embedded + v added by the last MLP output bias at every position (v = 3 x the read-out direction plus
    a part orthogonal to it, so that the fitted direction is not just the read-out)."""
    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    d = sentiment_direction(model, tok)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(d.shape, generator=g)
    noise = noise - (noise @ d) * d
    v = 3.0 * d + 3.0 * noise / noise.norm()
    with torch.no_grad():
        model.transformer.h[LAYER].mlp.c_proj.bias += v
    out = tmp_path_factory.mktemp("dir") / "tuned"
    save_model(model, tok, out)
    pair = load_pair(resolve_model_spec("embedded"), resolve_model_spec(str(out)), list(EMBEDDED_PROMPTS), "logit_diff")
    return pair, v, d


def test_fitted_direction_is_the_planted_vector(planted_pair):
    pair, v, _ = planted_pair
    u = fit_directions(_differences(pair, 1))
    v_c = v - v.mean()  # the bridge's residual is centred (LayerNorm folded): it sees v minus its mean
    assert torch.nn.functional.cosine_similarity(u[LAYER], v_c, dim=0).item() == pytest.approx(1.0, abs=1e-5)
    assert u[0].isnan().all()  # nothing changed below the planted layer


def test_patching_along_it_recovers_the_gap_and_random_does_not(planted_pair):
    pair, v, d = planted_pair
    df = direction(pair, seed=0).set_index(["layer", "method"])
    fitted, full = df.loc[(LAYER, "fitted_direction")], df.loc[(LAYER, "full_difference")]
    rand = df.loc[(LAYER, "random_direction")]
    assert fitted.held_out and fitted.recovery == pytest.approx(1.0, abs=1e-3)
    assert full.recovery == pytest.approx(1.0, abs=1e-3)
    assert fitted.share_along == pytest.approx(1.0, abs=1e-5)
    assert rand.n_draws >= 20 and abs(rand.recovery) < 0.1 and rand.recovery_sd < 0.3
    # cosine with the read-out, independently: the read-out in the centred residual is centre(gain ⊙ (mean W_U[pos]
    # − mean W_U[neg])) = centre(d); v = 3 d + 3 (orthogonal unit) -> about 1/sqrt(2)
    ref = torch.nn.functional.cosine_similarity(v - v.mean(), d - d.mean(), dim=0).item()
    assert fitted.cosine_readout == pytest.approx(ref, abs=1e-4)
    assert 0.5 < ref < 0.9
    # below the planted layer there is no difference: no direction, no recovery
    assert df.loc[(0, "full_difference")].recovery == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(df.loc[(0, "fitted_direction")].recovery)


def test_recovery_equals_hooked_forwards_adding_the_difference(planted_pair):
    """full_difference at every layer against plain hooked forwards: x_tuned − x_base added at hook_resid_post[L],
    last position, in the base model (what the fused engine computes from layer L + 1 on at that position only)."""
    pair, _, _ = planted_pair
    df = direction(pair, seed=0).set_index(["layer", "method"])
    names = [f"blocks.{L}.hook_resid_post" for L in range(pair.n_layers)]
    base_m = tuned_m = 0.0
    patched = [0.0] * pair.n_layers
    for _, tokens in pair.groups:
        _, cb = pair.base.run_with_cache(tokens)
        _, ct = pair.tuned.run_with_cache(tokens)
        base_m += pair.metric(pair.base(tokens)).sum().item()
        tuned_m += pair.metric(pair.tuned(tokens)).sum().item()
        for L, name in enumerate(names):
            delta = ct[name][:, -1] - cb[name][:, -1]

            def add(act, hook=None, delta=delta):
                act[:, -1] = act[:, -1] + delta
                return act

            patched[L] += pair.metric(pair.base.run_with_hooks(tokens, fwd_hooks=[(name, add)])).sum().item()
    for L in range(pair.n_layers):
        ref = (patched[L] - base_m) / (tuned_m - base_m)
        assert df.loc[(L, "full_difference")].recovery == pytest.approx(ref, abs=1e-4)


def test_findings_name_the_baselines_and_the_readout_change():
    import pandas as pd

    from rlhf_interp.report.findings import compare_findings

    rows = [{"layer": L, "method": m, "recovery": r, "recovery_sd": sd, "n_draws": n, "cosine_readout": 0.3}
            for L, m, r, sd, n in [(0, "fitted_direction", 0.01, float("nan"), 0),
                                   (0, "full_difference", 0.012, float("nan"), 0),
                                   (0, "random_direction", 0.001, 0.006, 32),
                                   (1, "fitted_direction", 0.078, float("nan"), 0),
                                   (1, "full_difference", 0.080, float("nan"), 0),
                                   (1, "random_direction", -0.001, 0.019, 32)]]
    ue = pd.DataFrame([{"kind": "metric_direction", "quantity": "readout", "rank": None, "value": 2.22,
                        "share": 0.158, "cosine": 0.52, "base": 0.088},
                       {"kind": "singular_value", "quantity": None, "rank": 1, "value": 0.759, "share": 0.47,
                        "cosine": 0.08, "base": 33.47}])
    text = " ".join(compare_findings({"direction": pd.DataFrame(rows), "unembed_change": ue}, {}))
    assert "layer 1, held out) recovers +7.8% of the gap" in text
    assert "full difference there +8.0%" in text and "-0.1% ± 1.9% (sd over 32 draws)" in text
    assert "×2.22 with cosine 0.52" in text and "+15.8%" in text and "47% of ‖ΔW_U‖²" in text
