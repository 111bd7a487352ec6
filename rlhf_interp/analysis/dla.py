"""Direct logit attribution of the metric at the last prompt position, per component, head and neuron, with every
base→tuned change split into the part the component's own output carries and the part the read-out carries.

metric = Σ_components (c - mean c) / scale · direction + bias_term, with `direction` the metric's unembedding
direction (final-norm gain folded in), `scale` the final LayerNorm scale of the full residual and `bias_term` the
unembedding bias (final-norm bias folded in). Components: the token and position embeddings, each attention layer
(split into heads + the output bias b_O), each MLP (split into neurons + b_out).

A contribution f(a, R) depends on an *activation* a (the component's output vector: for a head z_h W_O_h, for a
neuron its activation times its row of W_out) and a *read-out* R = (direction, bias): the final norm's gain and
bias folded into the unembedding. The final norm's per-prompt scale is set by the whole residual, so it belongs to
the activation side: every pairing f(a, R) divides by the scale of the model that produced a (as the exact read-out
swap of `patching_layers` and the logit lens do). The change
f(a_t, R_t) − f(a_b, R_b) is split symmetrically (the two-player Shapley value, i.e. the midpoint rule):

    delta_activation = ½ [f(a_t, R_b) − f(a_b, R_b)] + ½ [f(a_t, R_t) − f(a_b, R_t)]
    delta_readout    = ½ [f(a_b, R_t) − f(a_b, R_b)] + ½ [f(a_t, R_t) − f(a_t, R_b)]

They add up to `delta` exactly and do not depend on an order. `delta_activation` is what a component itself changed
(read through a fixed read-out; a change of the residual's norm, which rescales every component, is part of it);
`delta_readout` is the change of the final-norm gain and bias and the unembedding applied to a fixed activation (0
where those weights did not change, e.g. under LoRA on attention and MLP projections). Rankings of components use
`delta_activation`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.resid import eps_of, final_cache, read_out, unembed_direction

MODELS = ("base", "tuned", "delta", "delta_activation", "delta_readout")


@dataclass
class _Acts:
    """One model's activations at the metric position (prompt order), as vectors in the residual stream."""

    layers: dict[str, Tensor]  # name -> (n, d_model)
    heads: Tensor  # (n, layer, head, d_model)
    post: list[Tensor]  # per layer (n, d_mlp): neuron activations
    W_out: Tensor  # (layer, d_mlp, d_model): each neuron's output row (part of the activation)
    final: Tensor  # (n, d_model) the final residual (input of the final norm)


@dataclass
class _Readout:
    scale: Tensor  # (n, 1)
    direction: Tensor  # (d_model,)
    bias: float


@torch.no_grad()
def _activations(model: Any, pair: ModelPair) -> _Acts:
    from rlhf_interp.analysis.arch import adapter_for

    arch = adapter_for(model)
    n_layers = pair.n_layers
    embed_names = arch.embedding_hooks()
    names = [*embed_names.values(), f"blocks.{n_layers - 1}.hook_resid_post"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out",
                  arch.neuron_hook(layer)]
    n = len(pair.prompts)
    W_O, W_out = model.W_O.detach(), model.W_out.detach()  # (layer, head, d_head, d_model), (layer, d_mlp, d_model)
    d_model = W_O.shape[-1]
    layers: dict[str, Tensor] = {}
    heads = torch.zeros(n, n_layers, W_O.shape[1], d_model)
    post = [torch.zeros(n, W_out.shape[1]) for _ in range(n_layers)]
    final = torch.zeros(n, d_model)
    for idx, tokens in pair.groups:
        cache = final_cache(model, tokens, names)
        final[idx] = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1].cpu()

        def put(key: str, value: Tensor, idx: list[int] = idx) -> None:
            layers.setdefault(key, torch.zeros(n, d_model))[idx] = value.cpu()

        for key, name in embed_names.items():
            put(key, cache[name][:, -1])
        for layer in range(n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # (batch, head, d_head)
            per_head = torch.einsum("bhd,hdm->bhm", z, W_O[layer])  # (batch, head, d_model)
            heads[idx, layer] = per_head.cpu()
            attn = cache[f"blocks.{layer}.hook_attn_out"][:, -1]
            put(f"attn{layer}", attn)
            put(f"attn{layer}_bias", attn - per_head.sum(1))
            post[layer][idx] = cache[arch.neuron_hook(layer)][:, -1].cpu()
            put(f"mlp{layer}", cache[f"blocks.{layer}.hook_mlp_out"][:, -1])
    return _Acts(layers, heads, post, W_out.cpu(), final)


def _readout(model: Any, pair: ModelPair, acts: _Acts) -> _Readout:
    from rlhf_interp.analysis.arch import adapter_for

    direction, bias = unembed_direction(model, pair.metric)
    arch = adapter_for(model)
    return _Readout(arch.norm_scale(acts.final, eps_of(model)), direction.cpu(), bias)


def _contrib(a: _Acts, r: _Readout, model: Any) -> dict[str, Any]:
    """f(a, R) for every component: per prompt."""
    from rlhf_interp.analysis.arch import adapter_for

    arch = adapter_for(model)

    def f(x: Tensor, scale: Tensor) -> Tensor:
        return read_out(x, scale, r.direction, centre=arch.centres)

    layers = {k: f(v, r.scale) for k, v in a.layers.items()}
    n = r.scale.shape[0]
    layers["unembed_bias"] = torch.full((n,), r.bias)
    heads = f(a.heads, r.scale.view(n, 1, 1, 1))  # (n, layer, head)
    neurons = [p * (f(a.W_out[L], torch.ones(1)).unsqueeze(0) / r.scale) for L, p in enumerate(a.post)]
    metric = f(a.final, r.scale) + r.bias
    return {"metric": metric, "layers": layers, "heads": heads, "neurons": neurons}


def _combine(c: dict[tuple[str, str], Any], get: Any) -> dict[str, Any]:
    """base, tuned, delta and its activation / read-out parts from the four (activation, read-out) pairings."""
    bb, tt, tb, bt = (get(c[k]) for k in (("b", "b"), ("t", "t"), ("t", "b"), ("b", "t")))
    return {"base": bb, "tuned": tt, "delta": tt - bb, "delta_activation": 0.5 * ((tb - bb) + (tt - bt)),
            "delta_readout": 0.5 * ((bt - bb) + (tt - tb))}


def _component_rows(name: str) -> tuple[str, int | None]:
    if name.startswith("attn") and name.endswith("_bias"):
        return "attn_bias", int(name[4:-5])
    if name.startswith("attn"):
        return "attn", int(name[4:])
    if name.startswith("mlp"):
        return "mlp", int(name[3:])
    return name, None


def dla_parts(pair: ModelPair) -> dict[tuple[str, str], Any]:
    """Per-prompt contributions for the four pairings (activation model, read-out model) in {b, t}²."""
    acts = {"b": _activations(pair.base, pair), "t": _activations(pair.tuned, pair)}
    reads = {"b": _readout(pair.base, pair, acts["b"]), "t": _readout(pair.tuned, pair, acts["t"])}
    # the scale comes with the activation (it is the norm of that model's own residual), the read-out gives the rest
    return {(a, r): _contrib(acts[a], replace(reads[r], scale=reads[a].scale), pair.base) for a in "bt" for r in "bt"}


def dla_tables(pair: ModelPair, top_neurons: int = 20) -> dict[str, pd.DataFrame]:
    """`dla_layers`, `dla_heads`, `dla_neurons`: mean attribution over prompts for base, tuned, delta and the delta's
    activation and read-out parts (`model` column). On `logprob_diff` they decompose its first-token term exactly
    (column `term` = first_token; `Metric.linear_part`); on a metric with no linear part they are empty."""
    view = pair.linear_view()
    if view is None:
        empty = pd.DataFrame(columns=["layer", "component", "model", "attribution"])
        return {"dla_layers": empty, "dla_heads": empty.rename(columns={"component": "head"}), "dla_neurons": empty}
    tables = _dla_tables(view, top_neurons)
    if view is not pair:  # logprob_diff: what was decomposed is its first-token term (see LogprobDiff)
        for df in tables.values():
            df["term"] = "first_token"
    return tables


def _dla_tables(pair: ModelPair, top_neurons: int) -> dict[str, pd.DataFrame]:
    c = dla_parts(pair)
    layer_rows, head_rows, neuron_rows = [], [], []
    for key in c[("b", "b")]["layers"]:
        comp, layer = _component_rows(key)
        for model_name, v in _combine(c, lambda p, k=key: p["layers"][k]).items():
            layer_rows.append({"layer": layer, "component": comp, "model": model_name, "attribution": v.mean().item()})
    for model_name, v in _combine(c, lambda p: p["metric"]).items():
        layer_rows.append({"layer": None, "component": "total", "model": model_name, "attribution": v.mean().item()})
    for model_name, v in _combine(c, lambda p: p["heads"]).items():
        heads = v.mean(0)  # (layer, head)
        for layer in range(heads.shape[0]):
            for h in range(heads.shape[1]):
                head_rows.append({"layer": layer, "head": h, "model": model_name,
                                  "attribution": heads[layer, h].item()})
    # neurons: the top ones by |delta_activation| (what the neuron itself changed), with all five values
    parts = [_combine(c, lambda p, L=L: p["neurons"][L]) for L in range(pair.n_layers)]
    flat = torch.cat([p["delta_activation"].mean(0) for p in parts])
    d_mlp = parts[0]["delta"].shape[1]
    for rank, i in enumerate(flat.abs().argsort(descending=True)[:top_neurons].tolist()):
        layer, neuron = divmod(i, d_mlp)
        for model_name, v in parts[layer].items():
            neuron_rows.append({"layer": layer, "neuron": neuron, "model": model_name, "rank": rank,
                                "attribution": v[:, neuron].mean().item()})
    return {"dla_layers": pd.DataFrame(layer_rows), "dla_heads": pd.DataFrame(head_rows),
            "dla_neurons": pd.DataFrame(neuron_rows)}
