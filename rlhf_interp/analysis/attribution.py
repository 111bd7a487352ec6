"""`attribution_patching`: the first-order approximation of activation patching (Nanda 2023):

    metric(receiver with donor's activation a') - metric(receiver) ≈ (a' - a) · ∂metric/∂a

One forward and one backward per direction give every head (its whole output z_h W_O_h at all positions, whose
gradient is that of hook_attn_out) and every layer × position (resid_pre / attn_out / mlp_out). The table carries
the exact effect next to each estimate; `compare` reports their correlation — far from 1 means the approximation is
not to be trusted on this pair (large changes pass through the final LayerNorm non-linearly).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.patching import ATTN_OUT, DIRECTIONS, LAYER_COMPONENTS, Cell, head_output_deltas


def _grads(model: Any, tokens: torch.Tensor, names: list[str], metric: Any) -> tuple[dict, dict, float]:
    acts: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any = None, name: str = "") -> torch.Tensor:
        act.retain_grad()
        acts[name] = act
        return act

    hooks = [(n, lambda act, hook=None, n=n: keep(act, hook, n)) for n in names]
    with torch.enable_grad():
        model.zero_grad(set_to_none=True)
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        value = metric(logits).mean()
        value.backward()
    grads = {n: a.grad.detach() for n, a in acts.items()}
    values = {n: a.detach() for n, a in acts.items()}
    model.zero_grad(set_to_none=True)
    return values, grads, value.item()


def attribution_patching(pair: ModelPair) -> pd.DataFrame:
    _, tokens = pair.main_group
    labels = [pair.tokenizer.decode([t]) for t in tokens[0].tolist()]
    n_layers = pair.n_layers
    names = [h.format(L=L) for h in LAYER_COMPONENTS.values() for L in range(n_layers)]
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        recv_acts, grads, recv_metric = _grads(pair.model(recv_name), tokens, names, pair.metric)
        donor_acts, _, donor_metric = _grads(pair.model(donor_name), tokens, names, pair.metric)
        gap = donor_metric - recv_metric
        deltas = head_output_deltas(pair.model(recv_name), pair.model(donor_name), tokens, n_layers, pair.n_heads)
        for L in range(n_layers):
            grad_out = grads[ATTN_OUT.format(L=L)]  # (batch, pos, d_model): the gradient of every head's output
            for h in range(pair.n_heads):
                est = (deltas[Cell(ATTN_OUT, L, head=h, op="add").key] * grad_out).sum().item()
                rows.append({"direction": direction, "kind": "head", "component": "head_out", "layer": L, "head": h,
                             "pos": None, "token": None, "approx": est / gap})
            for comp, hook in LAYER_COMPONENTS.items():
                name = hook.format(L=L)
                est = ((donor_acts[name] - recv_acts[name]) * grads[name]).sum((0, 2))  # (pos,)
                for p in range(pair.metric.prompt_length(tokens)):  # prompt positions, as exact patching
                    rows.append({"direction": direction, "kind": "layer", "component": comp, "layer": L, "head": None,
                                 "pos": p, "token": labels[p], "approx": est[p].item() / gap})
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    df["pos"] = df["pos"].astype("Int64")
    return df


def join_exact(attr: pd.DataFrame, heads: pd.DataFrame | None, layers: pd.DataFrame | None) -> pd.DataFrame:
    """Add the exact patching effect beside each estimate (same direction and cell)."""
    out = attr.copy()
    out["exact"] = float("nan")
    if heads is not None and len(heads):
        key = heads.set_index(["direction", "layer", "head"]).effect
        m = out.kind == "head"
        out.loc[m, "exact"] = [key.get((d, int(L), int(h)), float("nan"))
                               for d, L, h in zip(out[m]["direction"], out[m]["layer"], out[m]["head"], strict=True)]
    if layers is not None and len(layers):
        key = layers.set_index(["direction", "component", "layer", "pos"]).effect
        m = out.kind == "layer"
        out.loc[m, "exact"] = [key.get((d, c, int(L), int(p)), float("nan")) for d, c, L, p in
                               zip(out[m].direction, out[m].component, out[m].layer, out[m].pos, strict=True)]
    return out


def correlations(attr: pd.DataFrame) -> dict[str, float]:
    out = {}
    for kind in ("head", "layer"):
        sub = attr[(attr.kind == kind)].dropna(subset=["approx", "exact"])
        out[kind] = float(sub.approx.corr(sub.exact)) if len(sub) > 2 else float("nan")
    return out
