"""weight_diff on raw checkpoint tensors and unembed_change: planted edits of one norm gain, of one key/value head
under grouped-query attention, of one query head per checkpoint layout, and of one token's unembedding."""

import pytest
import torch
from arch_models import build_tiny_model

from rlhf_interp.analysis.pair import load_pair
from rlhf_interp.analysis.unembed import unembed_change
from rlhf_interp.analysis.weights import weight_diff
from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm, resolve_model_spec, save_model

PROMPTS = ["This movie is", "The acting was", "I thought the plot", "Overall the story"]


def _pair(base, tuned):
    return load_pair(resolve_model_spec(str(base)), resolve_model_spec(str(tuned)), PROMPTS, "logit_diff")


def _save_tiny(family, out):
    model, tok = build_tiny_model(family)
    save_model(model, tok, out)
    return model, tok


def _changed(df):
    return df[df.rel_change.fillna(0) > 1e-6]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_norm_gain_shows_only_that_norm(tmp_path, family):
    """A pair differing only in the MLP norm's gain of layer 1: that row first, every other row exactly 0 (the bridges'
    folded weights, which the old table compared, put the gain inside the MLP input weights)."""
    if family == "gpt2":
        model, tok = load_causal_lm(str(EMBEDDED_DIR))
        base = EMBEDDED_DIR
        norm = model.transformer.h[1].ln_2
    else:
        model, tok = _save_tiny("llama", tmp_path / "base")
        base = tmp_path / "base"
        norm = model.model.layers[1].post_attention_layernorm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.mul_(1 + 0.3 * torch.rand(norm.weight.shape, generator=g))
    save_model(model, tok, tmp_path / "tuned")
    pair = _pair(base, tmp_path / "tuned")
    df = weight_diff(pair)
    changed = _changed(df)
    assert len(changed) == 1, changed
    top = df.loc[df.rel_change.idxmax()]
    assert (top.component, top.layer) == ("norm_mlp.gain", 1) and top.rel_change > 0.05
    assert top.parameters.endswith(("ln_2.weight", "post_attention_layernorm.weight"))
    # what the folded bridge weights show for the same pair: a changed MLP input
    folded = (pair.tuned.W_in[1] - pair.base.W_in[1]).norm() / pair.base.W_in[1].norm()
    assert folded > 0.02


def test_gqa_query_heads_read_their_key_value_head(tmp_path):
    """Tiny Llama, 4 query / 2 key-value heads: editing key head 1 of layer 0 changes QK of query heads 2 and 3 only;
    value head 0 of layer 1 changes OV of query heads 0 and 1; output columns of query head 3 change only its OV."""
    model, tok = _save_tiny("llama", tmp_path / "base")
    dh = model.config.hidden_size // model.config.num_attention_heads
    g = torch.Generator().manual_seed(1)
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    with torch.no_grad():
        a0.k_proj.weight[dh : 2 * dh] += 0.2 * torch.randn(dh, a0.k_proj.weight.shape[1], generator=g)
        a1.v_proj.weight[:dh] += 0.2 * torch.randn(dh, a1.v_proj.weight.shape[1], generator=g)
        a1.o_proj.weight[:, 3 * dh :] += 0.2 * torch.randn(a1.o_proj.weight.shape[0], dh, generator=g)
    save_model(model, tok, tmp_path / "tuned")
    df = weight_diff(_pair(tmp_path / "base", tmp_path / "tuned"))
    heads = df[df.component.isin(["QK", "OV"])]
    assert (heads.kv_head == heads["head"] // 2).all()
    changed = {(r.component, int(r.layer), int(r.head)) for r in _changed(df).itertuples()}
    assert changed == {("QK", 0, 2), ("QK", 0, 3), ("OV", 1, 0), ("OV", 1, 1), ("OV", 1, 3)}
    # independent: QK of query head 2 from the HF modules' weights
    base, _ = load_causal_lm(str(tmp_path / "base"))
    b0 = base.model.layers[0].self_attn
    q = b0.q_proj.weight[2 * dh : 3 * dh]
    qk_b = q.T @ b0.k_proj.weight[dh : 2 * dh]
    qk_t = q.T @ a0.k_proj.weight[dh : 2 * dh]
    ref = ((qk_t - qk_b).norm() / qk_b.norm()).item()
    got = df[(df.component == "QK") & (df.layer == 0) & (df["head"] == 2)].rel_change.item()
    assert got == pytest.approx(ref, rel=1e-4)


def _edit_query_head(model, family, head, g):
    """Add noise to query head `head` of layer 1, in the checkpoint's own layout."""
    d = model.config.hidden_size
    dh = d // model.config.num_attention_heads
    with torch.no_grad():
        if family == "gpt2":  # Conv1D (in, out), columns [q | k | v]
            w = model.transformer.h[1].attn.c_attn.weight
            w[:, head * dh : (head + 1) * dh] += 0.2 * torch.randn(d, dh, generator=g)
        elif family == "neox":  # rows [q, k, v] per head
            w = model.gpt_neox.layers[1].attention.query_key_value.weight
            w[head * 3 * dh : head * 3 * dh + dh] += 0.2 * torch.randn(dh, d, generator=g)
        else:
            w = model.model.layers[1].self_attn.q_proj.weight
            w[head * dh : (head + 1) * dh] += 0.2 * torch.randn(dh, d, generator=g)


@pytest.mark.parametrize("family", ["gpt2", "neox", "qwen2", "gemma3"])
def test_query_head_edit_maps_to_its_row(tmp_path, family):
    model, tok = _save_tiny(family, tmp_path / "base")
    _edit_query_head(model, family, 2, torch.Generator().manual_seed(2))
    save_model(model, tok, tmp_path / "tuned")
    df = weight_diff(_pair(tmp_path / "base", tmp_path / "tuned"))
    changed = {(r.component, int(r.layer), int(r.head)) for r in _changed(df).itertuples()}
    assert changed == {("QK", 1, 2)}
    assert not df.rel_change.isna().all() and "other" not in set(df.component)


def test_planted_token_moves_first_in_unembed_change(tmp_path):
    """One token's (tied) embedding row moved by 2 along the metric read-out direction: it tops the token rows, the
    change is rank one, and the read-out itself (the token is not one of the metric's) is unchanged."""
    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    pair0 = _pair(EMBEDDED_DIR, EMBEDDED_DIR)
    W = model.transformer.wte.weight
    d = pair0.metric.direction(W.detach().T, None)[0]
    j = tok(" movie", add_special_tokens=False)["input_ids"][0]
    assert j not in set(pair0.metric.positive.values()) | set(pair0.metric.negative.values())
    with torch.no_grad():
        W[j] += 2.0 * d / d.norm()
    save_model(model, tok, tmp_path / "tuned")
    pair = _pair(EMBEDDED_DIR, tmp_path / "tuned")
    ue = unembed_change(pair)
    tokens = ue[ue.kind == "token"].sort_values("rank")
    first = tokens.iloc[0]
    assert first.token_id == j and first.value == pytest.approx(2.0 * (1 - 1 / W.shape[0]), rel=1e-4)
    assert first.cosine == pytest.approx(1.0, abs=1e-5) and first.share == pytest.approx(1.0, abs=1e-5)
    assert (tokens.value.iloc[1:].abs() < 1e-2).all()
    sv = ue[ue.kind == "singular_value"].sort_values("rank")
    assert sv.value.iloc[0] == pytest.approx(2.0, rel=1e-4) and sv.share.iloc[0] == pytest.approx(1.0, abs=1e-6)
    assert sv.cosine.iloc[0] == pytest.approx(1.0, abs=1e-5)
    ro = ue[(ue.kind == "metric_direction") & (ue.quantity == "readout")].iloc[0]
    assert ro.value == pytest.approx(1.0, abs=1e-6) and ro.cosine == pytest.approx(1.0, abs=1e-6)
    wd = weight_diff(pair)
    assert set(_changed(wd).component) == {"embed"}


def test_an_architecture_without_a_checkpoint_layout_fails_that_analysis_alone(tmp_path, monkeypatch):
    """unembed_change needs a raw layout; where arch.py has none, compare (strict=False, as the CLI runs it) records
    the analysis under summary.json["failed"] and the other analyses' tables are still written."""
    import json

    import rlhf_interp.analysis.unembed as unembed_mod
    from rlhf_interp.analysis import compare
    from rlhf_interp.errors import NotSupported
    from rlhf_interp.prompts import EMBEDDED_PROMPTS

    monkeypatch.setattr(unembed_mod, "raw_layout", lambda name: None)
    out = tmp_path / "out"
    tables = compare("embedded", "embedded", prompts=list(EMBEDDED_PROMPTS)[:4], analyses="logit_diff,unembed_change",
                     out=out, report=False, strict=False)
    failed = json.loads((out / "summary.json").read_text())["failed"]
    assert list(failed) == ["unembed_change"] and "no checkpoint layout" in failed["unembed_change"]
    assert "logit_diff" in tables and (out / "tables" / "logit_diff.csv").is_file()
    with pytest.raises(NotSupported):
        compare("embedded", "embedded", prompts=list(EMBEDDED_PROMPTS)[:4], analyses="unembed_change", strict=True)
