"""Direct logit attribution of the metric at the last prompt position, per component, head and neuron.

metric = Σ_components (c - mean c) / scale · direction + bias_term, with `direction` the metric's unembedding
direction and `scale` the final LayerNorm scale of the full residual. Components: the token and position embeddings,
each attention layer (split into heads + the output bias b_O), each MLP (split into neurons + b_out). For the delta
(tuned − base) an extra row, `unembed_change`, is the part of the gap due to the unembedding direction itself
(base activations read with the tuned W_U): GPT-2 ties W_U to W_E, so RLHF moves it directly.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.resid import eps_of, final_cache, ln_scale, read_out, unembed_direction


@torch.no_grad()
def _decompose(model: Any, pair: ModelPair) -> dict[str, Any]:
    """Per-prompt contributions (prompt order) of layers, heads and neurons for one model."""
    n_layers, n_heads = pair.n_layers, pair.n_heads
    names = ["hook_embed", "hook_pos_embed", f"blocks.{n_layers - 1}.hook_resid_post"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out",
                  f"blocks.{layer}.mlp.hook_post"]
    direction, bias = unembed_direction(model, pair.metric)
    n = len(pair.prompts)
    layers: dict[str, Tensor] = {}
    heads = torch.zeros(n, n_layers, n_heads)
    metric = torch.zeros(n)
    W_O, W_out = model.W_O.detach(), model.W_out.detach()  # (layer, head, d_head, d_model), (layer, d_mlp, d_model)
    neurons = [torch.zeros(n, W_out.shape[1]) for _ in range(n_layers)]
    for idx, tokens in pair.groups:
        cache = final_cache(model, tokens, names)
        resid = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1]  # (batch, d_model)
        scale = ln_scale(resid, eps_of(model))
        metric[idx] = (read_out(resid, scale, direction) + bias).cpu()

        def put(key: str, value: Tensor, idx: list[int] = idx) -> None:
            layers.setdefault(key, torch.zeros(n))[idx] = value.cpu()

        put("embed", read_out(cache["hook_embed"][:, -1], scale, direction))
        put("pos_embed", read_out(cache["hook_pos_embed"][:, -1], scale, direction))
        for layer in range(n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # (batch, head, d_head)
            per_head = torch.einsum("bhd,hdm->bhm", z, W_O[layer])  # (batch, head, d_model)
            head_attr = read_out(per_head, scale.unsqueeze(1), direction)  # (batch, head)
            heads[idx, layer] = head_attr.cpu()
            attn_total = read_out(cache[f"blocks.{layer}.hook_attn_out"][:, -1], scale, direction)
            put(f"attn{layer}", attn_total)
            put(f"attn{layer}_bias", attn_total - head_attr.sum(-1))
            post = cache[f"blocks.{layer}.mlp.hook_post"][:, -1]  # (batch, d_mlp)
            neuron_attr = post * (read_out(W_out[layer], W_out.new_ones(1), direction).unsqueeze(0) / scale)
            neurons[layer][idx] = neuron_attr.cpu()
            put(f"mlp{layer}", read_out(cache[f"blocks.{layer}.hook_mlp_out"][:, -1], scale, direction))
        put("unembed_bias", torch.full((len(idx),), bias))
    return {"metric": metric, "layers": layers, "heads": heads, "neurons": neurons}


def _component_rows(name: str) -> tuple[str, int | None]:
    if name.startswith("attn") and name.endswith("_bias"):
        return "attn_bias", int(name[4:-5])
    if name.startswith("attn"):
        return "attn", int(name[4:])
    if name.startswith("mlp"):
        return "mlp", int(name[3:])
    return name, None


@torch.no_grad()
def unembed_change(pair: ModelPair) -> Tensor:
    """Per prompt: metric of base activations read out with the tuned unembedding minus the base metric."""
    n_layers = pair.n_layers
    d_base, b_base = unembed_direction(pair.base, pair.metric)
    d_tuned, b_tuned = unembed_direction(pair.tuned, pair.metric)
    out = torch.zeros(len(pair.prompts))
    for idx, tokens in pair.groups:
        cache = final_cache(pair.base, tokens, [f"blocks.{n_layers - 1}.hook_resid_post"])
        resid = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1]
        scale = ln_scale(resid, eps_of(pair.base))
        out[idx] = (read_out(resid, scale, d_tuned - d_base) + b_tuned - b_base).cpu()
    return out


def dla_tables(pair: ModelPair, top_neurons: int = 20) -> dict[str, pd.DataFrame]:
    """`dla_layers`, `dla_heads`, `dla_neurons`: mean attribution over prompts for base, tuned and delta."""
    if not pair.metric.linear:
        empty = pd.DataFrame(columns=["layer", "component", "model", "attribution"])
        return {"dla_layers": empty, "dla_heads": empty.rename(columns={"component": "head"}), "dla_neurons": empty}
    parts = {"base": _decompose(pair.base, pair), "tuned": _decompose(pair.tuned, pair)}
    layer_rows, head_rows, neuron_rows = [], [], []
    for model_name in ("base", "tuned", "delta"):
        def get(f: Any, m: str = model_name) -> Any:
            if m == "delta":
                return f(parts["tuned"]) - f(parts["base"])
            return f(parts[m])

        for key in parts["base"]["layers"]:
            comp, layer = _component_rows(key)
            value = get(lambda p, k=key: p["layers"][k]).mean().item()
            layer_rows.append({"layer": layer, "component": comp, "model": model_name, "attribution": value})
        layer_rows.append({"layer": None, "component": "total", "model": model_name,
                           "attribution": get(lambda p: p["metric"]).mean().item()})
        heads = get(lambda p: p["heads"]).mean(0)  # (layer, head)
        for layer in range(pair.n_layers):
            for h in range(pair.n_heads):
                head_rows.append({"layer": layer, "head": h, "model": model_name,
                                  "attribution": heads[layer, h].item()})
    # unembedding change: the part of the delta that no activation carries
    layer_rows.append({"layer": None, "component": "unembed_change", "model": "delta",
                       "attribution": unembed_change(pair).mean().item()})
    # neurons: the top ones by |delta|, with their base and tuned values
    delta = [(parts["tuned"]["neurons"][L] - parts["base"]["neurons"][L]).mean(0) for L in range(pair.n_layers)]
    flat = torch.cat(delta)
    d_mlp = delta[0].shape[0]
    for rank, i in enumerate(flat.abs().argsort(descending=True)[:top_neurons].tolist()):
        layer, neuron = divmod(i, d_mlp)
        for model_name in ("base", "tuned"):
            neuron_rows.append({"layer": layer, "neuron": neuron, "model": model_name, "rank": rank,
                                "attribution": parts[model_name]["neurons"][layer][:, neuron].mean().item()})
        neuron_rows.append({"layer": layer, "neuron": neuron, "model": "delta", "rank": rank,
                            "attribution": flat[i].item()})
    return {"dla_layers": pd.DataFrame(layer_rows), "dla_heads": pd.DataFrame(head_rows),
            "dla_neurons": pd.DataFrame(neuron_rows)}
