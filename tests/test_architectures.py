"""Tiny random models of each architecture family: the bridge reproduces HF, planting opens a gap, and an
unsupported architecture is a one-line error naming what is supported."""

import json

import pytest
import torch
from arch_models import FAMILIES, make_tiny_model, plant_head, plant_neuron

from rlhf_interp.errors import UserError
from rlhf_interp.models import load_bridge, load_causal_lm, resolve_model_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    return {fam: make_tiny_model(fam, root / fam) for fam in FAMILIES}


def _ids(tok):
    ids = tok(["This movie is great and the acting was", "I thought the plot felt dull"], padding=False)["input_ids"]
    n = min(len(x) for x in ids)
    return torch.tensor([[tok.bos_token_id, *x[:n]] for x in ids])


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_logits_equal_hf(tiny, family):
    hf, tok = load_causal_lm(str(tiny[family]))
    ids = _ids(tok)
    with torch.no_grad():
        ref = hf(ids).logits
        raw = load_bridge(str(tiny[family]), compatibility=False)(ids)
        compat = load_bridge(str(tiny[family]), compatibility=True)(ids)
    assert (raw - ref).abs().max() < 1e-4
    assert (compat.log_softmax(-1) - ref.log_softmax(-1)).abs().max() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_planting_opens_a_consistent_gap(tiny, tmp_path, family):
    from rlhf_interp.analysis.metric import NEGATIVE_WORDS, POSITIVE_WORDS, single_token_ids

    def per_prompt(path):
        model, tok = load_causal_lm(str(path))
        pos = list(single_token_ids(tok, POSITIVE_WORDS).values())
        neg = list(single_token_ids(tok, NEGATIVE_WORDS).values())
        with torch.no_grad():
            last = model(_ids(tok)).logits[:, -1]
        return last[:, pos].mean(1) - last[:, neg].mean(1)

    base = per_prompt(tiny[family])
    for planted in (plant_head(tiny[family], tmp_path / "h", family, 1, 1),
                    plant_neuron(tiny[family], tmp_path / "n", family, 0, 5)):
        assert ((per_prompt(planted) - base) > 0.1).all()


def test_unsupported_architecture_is_one_line(tiny, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny["llama"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["MadeUpForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        resolve_model_spec(str(bad))
    msg = str(e.value)
    assert "\n" not in msg and "MadeUpForCausalLM" in msg and "LlamaForCausalLM" in msg


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_full_compare_ranks_planted_head_and_neuron_first(tiny, tmp_path, family):
    """The whole suite runs on every family, DLA parts sum to the metric change, and a planted head (1, 1) and a
    planted neuron (0, 5) come first by DLA's activation part, weight diff and exact patching."""
    import rlhf_interp

    head = plant_head(tiny[family], tmp_path / "head", family, 1, 1)
    out = tmp_path / "out"
    t = rlhf_interp.compare(str(tiny[family]), str(head), samples_per_prompt=1, new_tokens=4, report=False,
                            out=out, strict=False)
    summary = json.loads((out / "summary.json").read_text())
    assert "failed" not in summary, summary.get("failed")
    dl = t["dla_layers"].set_index(["component", "model"]).attribution
    assert abs(dl[("total", "delta_activation")] + dl[("total", "delta_readout")] - dl[("total", "delta")]) < 1e-5
    assert abs(dl[("total", "delta")] - summary["metric"]["gap"]) < 1e-4
    heads = t["dla_heads"][t["dla_heads"].model == "delta_activation"]
    assert tuple(heads.loc[heads.attribution.abs().idxmax(), ["layer", "head"]]) == (1, 1)
    ov = t["weight_diff"][t["weight_diff"].component == "OV"]
    assert tuple(ov.loc[ov.rel_change.idxmax(), ["layer", "head"]]) == (1, 1)
    ph = t["patching_heads"][t["patching_heads"].direction == "tuned_to_base"]
    if family == "gemma3":  # post-attention norm: whole-head output is not additive, so it is not reported
        assert ph.effect.isna().all()
    else:
        top = ph.loc[ph.effect.abs().idxmax()]
        assert (int(top.layer), int(top["head"])) == (1, 1) and abs(top.effect - 1) < 1e-3

    neuron = plant_neuron(tiny[family], tmp_path / "neuron", family, 0, 5)
    t = rlhf_interp.compare(str(tiny[family]), str(neuron), analyses="logit_diff,dla,patching,weight_diff",
                            report=False)
    nr = t["dla_neurons"][t["dla_neurons"].model == "delta_activation"]
    assert tuple(nr.loc[nr.attribution.abs().idxmax(), ["layer", "neuron"]]) == (0, 5)
    mlp = t["weight_diff"][t["weight_diff"].component.isin(["mlp_in", "mlp_out"])]
    assert int(mlp.loc[mlp.rel_change.idxmax(), "layer"]) == 0
    pl = t["patching_layers"]
    pl = pl[(pl.direction == "tuned_to_base") & pl.component.isin(["attn_out", "mlp_out"])]
    top = pl.loc[pl.effect.abs().idxmax()]
    assert (top.component, int(top.layer)) == ("mlp_out", 0)
