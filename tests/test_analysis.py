"""The analysis suite: invariants, equality with TransformerLens's reference loops, and planted changes."""

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tl_patching
from helpers import plant_head, plant_neuron, sentiment_direction

from rlhf_interp.analysis import compare
from rlhf_interp.analysis.dla import dla_tables
from rlhf_interp.analysis.pair import load_pair, metric_per_prompt
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache
from rlhf_interp.errors import UserError
from rlhf_interp.models import EMBEDDED_DIR, resolve_model_spec
from rlhf_interp.prompts import EMBEDDED_PROMPTS

PROMPTS = list(EMBEDDED_PROMPTS)
HEAD_PLANTS = [(1, 2), (3, 0)]
NEURON_PLANTS = [(0, 17), (2, 300)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    dirs = {f"head{L}.{h}": plant_head(EMBEDDED_DIR, root / f"head{L}_{h}", L, h) for L, h in HEAD_PLANTS}
    dirs.update({f"neuron{L}.{n}": plant_neuron(EMBEDDED_DIR, root / f"neuron{L}_{n}", L, n) for L, n in NEURON_PLANTS})
    return dirs


@pytest.fixture(scope="module")
def head_pair(planted):
    return load_pair(resolve_model_spec("embedded"), resolve_model_spec(planted["head1.2"]), PROMPTS, "logit_diff")


def test_planting_opens_a_gap(head_pair):
    gap = (metric_per_prompt(head_pair.tuned, head_pair) - metric_per_prompt(head_pair.base, head_pair)).mean()
    assert gap.item() > 1.0


@pytest.mark.parametrize("direction", ["tuned_to_base", "base_to_tuned"])
def test_batched_patching_equals_transformer_lens(head_pair, direction):
    receiver, donor = (head_pair.base, head_pair.tuned) if direction == "tuned_to_base" else \
        (head_pair.tuned, head_pair.base)
    _, tokens = head_pair.main_group
    names = [HEAD_HOOK.format(L=L) for L in range(4)] + [LAYER_COMPONENTS["resid_pre"].format(L=L) for L in range(4)]
    cache = run_cache(donor, tokens, names)

    def mean_metric(logits):
        return head_pair.metric(logits).mean()

    ref_heads = tl_patching.get_act_patch_attn_head_out_all_pos(receiver, tokens, cache, mean_metric).flatten()
    ref_resid = tl_patching.get_act_patch_resid_pre(receiver, tokens, cache, mean_metric).flatten()
    head_cells = [Cell(HEAD_HOOK, L, head=h) for L in range(4) for h in range(4)]
    resid_cells = [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in range(4) for p in range(tokens.shape[1])]
    for skip in (True, False):  # starting each forward at the patched layer, or full forwards
        for k in (1, 5, 16):
            mine = patch_sweep(receiver, cache, tokens, head_cells, head_pair.metric, cells_per_forward=k,
                               fused=skip)
            assert (mine - ref_heads).abs().max().item() < 1e-4
        mine = patch_sweep(receiver, cache, tokens, resid_cells, head_pair.metric, cells_per_forward=7,
                           fused=skip)
        assert (mine - ref_resid).abs().max().item() < 1e-4
    assert (ref_resid.max() - ref_resid.min()).item() > 0.5  # the comparison is not vacuous


def test_head_output_patching_equals_a_per_cell_loop(head_pair):
    """Whole-head-output patching (batched) against a plain loop: one forward per head, attn_out edited by hand."""
    from rlhf_interp.analysis.patching import ATTN_OUT, head_output_deltas

    _, tokens = head_pair.main_group
    base, tuned = head_pair.base, head_pair.tuned
    cache_b = run_cache(base, tokens, [HEAD_HOOK.format(L=L) for L in range(4)])
    cache_t = run_cache(tuned, tokens, [HEAD_HOOK.format(L=L) for L in range(4)])
    reference = []
    for L in range(4):
        for h in range(4):
            delta = cache_t[HEAD_HOOK.format(L=L)][:, :, h] @ tuned.W_O[L, h] - \
                cache_b[HEAD_HOOK.format(L=L)][:, :, h] @ base.W_O[L, h]

            def hook(act, hook=None, delta=delta):
                return act + delta

            with torch.no_grad():
                logits = base.run_with_hooks(tokens, fwd_hooks=[(ATTN_OUT.format(L=L), hook)])
            reference.append(head_pair.metric(logits).mean().item())
    deltas = head_output_deltas(base, tuned, tokens, 4, 4)
    cells = [Cell(ATTN_OUT, L, head=h, op="add") for L in range(4) for h in range(4)]
    mine = patch_sweep(base, deltas, tokens, cells, head_pair.metric, cells_per_forward=6)
    assert (mine - torch.tensor(reference)).abs().max().item() < 1e-4
    assert max(reference) - min(reference) > 0.5


def test_self_patching_is_identity(head_pair):
    _, tokens = head_pair.main_group
    cells = [Cell(HEAD_HOOK, L, head=h) for L in range(4) for h in range(4)]
    cache = run_cache(head_pair.base, tokens, sorted({c.name for c in cells}))
    patched = patch_sweep(head_pair.base, cache, tokens, cells, head_pair.metric)
    clean = head_pair.metric(head_pair.base(tokens)).mean().item()
    assert (patched - clean).abs().max().item() < 1e-5


def test_dla_sums_to_the_metric(head_pair):
    tables = dla_tables(head_pair)
    layers, heads = tables["dla_layers"], tables["dla_heads"]
    for model in ("base", "tuned", "delta"):
        rows = layers[layers.model == model]
        parts = rows[rows.component.isin(["embed", "pos_embed", "attn", "mlp", "unembed_bias"])].attribution.sum()
        total = rows[rows.component == "total"].attribution.item()
        assert parts == pytest.approx(total, abs=1e-4)
        # heads + output bias = attention layer
        for L in range(4):
            attn = rows[(rows.component == "attn") & (rows.layer == L)].attribution.item()
            bias = rows[(rows.component == "attn_bias") & (rows.layer == L)].attribution.item()
            h = heads[(heads.model == model) & (heads.layer == L)].attribution.sum()
            assert h + bias == pytest.approx(attn, abs=1e-4)
    # the total equals the metric computed from the logits
    base_metric = metric_per_prompt(head_pair.base, head_pair).mean().item()
    assert layers[(layers.model == "base") & (layers.component == "total")].attribution.item() == \
        pytest.approx(base_metric, abs=1e-4)


def _top(df, value, **where):
    for k, v in where.items():
        df = df[df[k] == v]
    return df.loc[df[value].abs().idxmax()]


@pytest.mark.parametrize(("layer", "head"), HEAD_PLANTS)
def test_planted_head_is_found_first(planted, tmp_path, layer, head):
    tables = compare("embedded", str(planted[f"head{layer}.{head}"]), prompts=PROMPTS,
                     analyses="logit_diff,dla,patching,weight_diff,attention_diff", out=tmp_path)
    top = _top(tables["patching_heads"], "effect", direction="tuned_to_base")
    assert (top["layer"], top["head"]) == (layer, head) and top.effect > 0.5
    top = _top(tables["patching_heads"], "effect", direction="base_to_tuned")
    assert (top["layer"], top["head"]) == (layer, head)
    top = _top(tables["dla_heads"], "attribution", model="delta")
    assert (top["layer"], top["head"]) == (layer, head)
    pl = tables["patching_layers"]
    comp = pl[(pl.direction == "tuned_to_base") & pl.component.isin(["attn_out", "mlp_out"])]
    top = _top(comp, "effect")
    assert (top.component, top.layer) == ("attn_out", layer)
    top = _top(tables["weight_diff"], "rel_change")
    assert (top["component"], top["layer"], top["head"]) == ("OV", layer, head)
    assert (tmp_path / "tables" / "patching_heads.csv").exists() and (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(("layer", "neuron"), NEURON_PLANTS)
def test_planted_neuron_is_found_first(planted, layer, neuron):
    tables = compare("embedded", str(planted[f"neuron{layer}.{neuron}"]), prompts=PROMPTS,
                     analyses="dla,patching,weight_diff")
    top = _top(tables["dla_neurons"], "attribution", model="delta")
    assert (top.layer, top.neuron) == (layer, neuron)
    pl = tables["patching_layers"]
    top = _top(pl[(pl.direction == "tuned_to_base") & pl.component.isin(["attn_out", "mlp_out"])], "effect")
    assert (top.component, top.layer) == ("mlp_out", layer)
    top = _top(tables["dla_layers"][tables["dla_layers"].component.isin(["attn", "mlp"])], "attribution",
               model="delta")
    assert (top.component, top.layer) == ("mlp", layer)
    top = _top(tables["weight_diff"], "rel_change")
    assert (top.component, top.layer) == ("mlp_out", layer)


def test_full_suite_on_a_planted_pair(planted, tmp_path):
    tables = compare("embedded", str(planted["head3.0"]), prompts=PROMPTS, out=tmp_path, samples_per_prompt=2,
                     new_tokens=12)
    expected = {"behaviour", "behaviour_summary", "token_kl", "logit_diff", "token_shift", "logit_lens", "dla_layers",
                "dla_heads", "dla_neurons", "ablation", "patching_layers", "patching_heads", "patching_head_pos",
                "attribution_patching", "attention_diff", "weight_diff", "unembed_change", "direction"}
    assert expected <= set(tables)
    for name in expected:
        assert (tmp_path / "tables" / f"{name}.csv").exists(), name
    # output contract columns
    assert {"layer", "head", "direction", "effect"} <= set(tables["patching_heads"])
    assert {"layer", "head", "model", "attribution"} <= set(tables["dla_heads"])
    assert {"component", "layer", "head", "rel_change"} <= set(tables["weight_diff"])
    assert {"layer", "head", "component", "model", "kind", "effect"} <= set(tables["ablation"])
    for name in ("ablation", "patching_layers", "patching_heads", "patching_head_pos"):
        assert {"ci_low", "ci_high"} <= set(tables[name]), name
    # logit lens ends at the metric; the logit diff's mean row carries a CI around the mean
    lens = tables["logit_lens"]
    ld = tables["logit_diff"]
    mean_tuned = ld[(ld.prompt == "(mean)") & (ld.model == "tuned")].iloc[0]
    assert lens[(lens.model == "tuned")].metric.iloc[-1] == pytest.approx(mean_tuned.metric, abs=1e-4)
    assert mean_tuned.ci_low <= mean_tuned.metric <= mean_tuned.ci_high
    # zero-ablating the planted head in the tuned model removes most of the gap (its CI too); mean ablation keeps the
    # constant vector the plant writes, so it barely moves; KL is non-negative
    ab = tables["ablation"]
    worst = _top(ab[(ab.model == "tuned") & (ab.component == "head") & (ab.kind == "zero")], "effect")
    assert (worst["layer"], worst["head"]) == (3, 0) and worst.ci_high < 0
    mean = ab[(ab.model == "tuned") & (ab.kind == "mean") & (ab.layer == 3) & (ab["head"] == 0)].effect.iloc[0]
    assert abs(mean) < 0.05 * abs(worst.effect)
    assert (tables["token_kl"].kl >= -1e-6).all()
    top_js = _top(tables["attention_diff"], "js_divergence")
    assert top_js.js_divergence >= 0
    attr = tables["attribution_patching"].dropna(subset=["exact"])
    heads = attr[(attr.kind == "head") & (attr.direction == "tuned_to_base")]
    top = _top(heads, "approx")
    assert (top["layer"], top["head"]) == (3, 0) and top.approx > 0.2  # first-order: under-estimates a big change
    assert attr[attr.kind == "head"].approx.corr(attr[attr.kind == "head"].exact) > 0.8
    direction = tables["direction"]
    assert set(direction.method) == {"fitted_direction", "full_difference", "random_direction"}
    assert direction.cosine_readout.dropna().between(-1, 1).all()
    rand = direction[direction.method == "random_direction"].dropna(subset=["recovery"])
    assert len(rand) and (rand.n_draws >= 20).all()  # layers below the planted head: no change, no direction
    assert pd.read_json(tmp_path / "samples.jsonl", lines=True).shape[0] == 2 * 2 * len(PROMPTS)


def test_incompatible_pair_is_one_line_error(tiny_gpt2_dir):
    with pytest.raises(UserError, match="differ in shape"):
        load_pair(resolve_model_spec("embedded"), resolve_model_spec(tiny_gpt2_dir), PROMPTS, "logit_diff")


def test_target_metric_runs_causal_analyses(planted):
    tables = compare("embedded", str(planted["head1.2"]), prompts=PROMPTS, metric="target: great.",
                     analyses="logit_diff,dla,patching")
    assert tables["dla_heads"].empty  # not linear: DLA skipped
    assert torch.isfinite(torch.tensor(tables["patching_heads"].metric.to_numpy())).all()


def test_unembedding_swap_row(head_pair):
    """Swapping a model's own unembedding in changes nothing; the planted head leaves W_U alone (effect ~0)."""
    from rlhf_interp.analysis.patching import patching_layers, swap_unembed

    _, tokens = head_pair.main_group
    own = swap_unembed(head_pair.base, head_pair.base, tokens, head_pair.metric)
    assert own == pytest.approx(head_pair.metric(head_pair.base(tokens)).mean().item(), abs=1e-4)
    rows = patching_layers(head_pair)
    un = rows[rows.component == "unembed"]
    assert len(un) == 2 and un.effect.abs().max() < 0.05


def test_fused_forward_matches_the_bridge(head_pair):
    """The engine `compare`'s patching runs on: the bridge's own weights as plain tensor code, equal to its forward."""
    from rlhf_interp.analysis.fused import FusedGPT2, engine_for

    _, tokens = head_pair.main_group
    engine = FusedGPT2.from_bridge(head_pair.base)
    clean = engine.clean(tokens, logits=True)
    _, cache = head_pair.base.run_with_cache(tokens)
    assert (clean.logits - cache["unembed.hook_out"]).abs().max().item() < 1e-4
    for L in range(4):
        assert (clean.resid_pre[L] - cache[f"blocks.{L}.hook_resid_pre"]).abs().max().item() < 1e-4
        assert (clean.resid_mid[L] - cache[f"blocks.{L}.hook_resid_mid"]).abs().max().item() < 1e-4
        assert (clean.z[L] - cache[HEAD_HOOK.format(L=L)]).abs().max().item() < 1e-4
    assert engine_for(head_pair.base, tokens) is not None  # verified: sweeps take the fused path


def _every_kind_of_cell(n_layers: int, n_heads: int, n_pos: int) -> list[Cell]:
    cells = [Cell(LAYER_COMPONENTS[c], L, pos=p) for c in LAYER_COMPONENTS for L in range(n_layers)
             for p in [None, *range(n_pos)]]
    cells += [Cell(HEAD_HOOK, L, head=h, pos=p) for L in range(n_layers) for h in range(n_heads) for p in (None, 2)]
    cells += [Cell(HEAD_HOOK, L) for L in range(n_layers)]  # every head of the layer at once
    cells += [Cell(LAYER_COMPONENTS["attn_out"], L, head=h, pos=p, op="add") for L in range(n_layers)
              for h in (0, 3) for p in (None, n_pos - 1)]
    return cells


@pytest.mark.parametrize("metric_spec", ["logit_diff", "target: great."])
def test_fused_sweep_equals_hooked_forwards_for_every_kind_of_cell(head_pair, metric_spec):
    """resid_pre / attn_out / mlp_out at every position and at all positions (the last layer's mlp_out included),
    hook_z per head (all positions and one), whole layers' hook_z, head-output additions at one position; a metric
    read at one position and one read at several (positions near the end patched)."""
    from rlhf_interp.analysis.metric import build_metric

    metric = build_metric(metric_spec, head_pair.tokenizer)
    _, tokens = head_pair.main_group
    tokens = metric.extend_tokens(tokens[:, : 6])
    receiver, donor = head_pair.base, head_pair.tuned
    cells = _every_kind_of_cell(4, 4, tokens.shape[1])
    sources = dict(run_cache(donor, tokens, sorted({c.name for c in cells})).items())
    g = torch.Generator().manual_seed(0)
    for c in cells:
        if c.op == "add":
            sources[c.key] = torch.randn(*tokens.shape, 128, generator=g) * 0.5
    fused = patch_sweep(receiver, sources, tokens, cells, metric, cells_per_forward=5)
    hooked = patch_sweep(receiver, sources, tokens, cells, metric, cells_per_forward=5, fused=False)
    assert (fused - hooked).abs().max().item() < 1e-4
    assert (hooked.max() - hooked.min()).item() > 0.1


def test_fused_engine_is_rechecked_when_weights_change(head_pair, tmp_path):
    """An in-place edit of the receiver's weights is seen (the verification is keyed by parameter versions), and a
    failed verification falls back to hooked forwards with a warning."""
    from unittest import mock

    from rlhf_interp.analysis import fused as fused_mod
    from rlhf_interp.models import load_bridge

    model = load_bridge(EMBEDDED_DIR, fold_value_biases=False)
    _, tokens = head_pair.main_group
    cells = [Cell(HEAD_HOOK, L, head=h) for L in range(4) for h in range(4)]
    cache = run_cache(head_pair.tuned, tokens, sorted({c.name for c in cells}))
    before = patch_sweep(model, cache, tokens, cells, head_pair.metric)
    with torch.no_grad():
        model.blocks[2].mlp.W_out.mul_(1.5)  # in place: the fused engine reads the same storage
    after = patch_sweep(model, cache, tokens, cells, head_pair.metric)
    assert (after - patch_sweep(model, cache, tokens, cells, head_pair.metric, fused=False)).abs().max() < 1e-4
    assert (after - before).abs().max() > 1e-3
    with torch.no_grad():
        model.blocks[2].mlp.W_out.mul_(1 / 1.5)
    with mock.patch.object(fused_mod.FusedGPT2, "verify", return_value=float("inf")), \
            pytest.warns(RuntimeWarning, match="does not match"):
        fallback = patch_sweep(model, cache, tokens, cells, head_pair.metric)
    assert (fallback - before).abs().max() < 1e-4


def test_dla_and_lens_split_delta_into_activation_and_readout(head_pair):
    """delta_activation + delta_readout == delta in every table; the planted head tops delta_activation."""
    from rlhf_interp.analysis.lens import logit_lens

    tables = dla_tables(head_pair)
    tables["logit_lens"] = logit_lens(head_pair).rename(columns={"metric": "attribution"})
    for name, keys in (("dla_layers", ["component", "layer"]), ("dla_heads", ["layer", "head"]),
                       ("dla_neurons", ["layer", "neuron"]), ("logit_lens", ["component", "layer"])):
        df = tables[name]
        wide = df.pivot_table(index=keys, columns="model", values="attribution")
        assert ((wide.delta_activation + wide.delta_readout - wide.delta).abs() < 1e-5).all(), name
    top = _top(tables["dla_heads"], "attribution", model="delta_activation")
    assert (top["layer"], top["head"]) == (1, 2)


def test_readout_only_pair_has_no_activation_change(tmp_path):
    """A pair that differs only in the final LayerNorm (its gain and bias fold into W_U / b_U): every
    delta_activation is 0, and the books close: final residual + read-out swapped together recover 100%."""
    from rlhf_interp.analysis.lens import logit_lens
    from rlhf_interp.analysis.patching import patching_layers
    from rlhf_interp.models import load_causal_lm, save_model

    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(1 + 0.5 * torch.rand(model.config.n_embd, generator=g))
        model.transformer.ln_f.bias.add_(3 * sentiment_direction(model, tok))
    save_model(model, tok, tmp_path / "readout")
    pair = load_pair(resolve_model_spec("embedded"), resolve_model_spec(tmp_path / "readout"), PROMPTS, "logit_diff")
    tables = dla_tables(pair)
    lens = logit_lens(pair)
    for df, value in ((tables["dla_layers"], "attribution"), (tables["dla_heads"], "attribution"),
                      (tables["dla_neurons"], "attribution"), (lens, "metric")):
        act = df[df.model == "delta_activation"][value]
        assert len(act) and act.abs().max() < 1e-5
    total = tables["dla_layers"].query("component == 'total'").set_index("model").attribution
    assert abs(total["delta"]) > 0.05 and total["delta_readout"] == pytest.approx(total["delta"], abs=1e-5)
    rows = patching_layers(pair).set_index(["direction", "component"]).effect
    for direction in ("tuned_to_base", "base_to_tuned"):
        assert rows[(direction, "final_resid+unembed")] == pytest.approx(1.0, abs=1e-4)
        assert rows[(direction, "unembed")] == pytest.approx(1.0, abs=1e-4)
        assert abs(rows[(direction, "final_resid")]) < 1e-4
