"""`weight_diff`: relative Frobenius norm of the weight change ||W_tuned - W_base|| / ||W_base|| per component: each
head's QK circuit (W_Q W_K^T) and OV circuit (W_V W_O), MLP in/out, the embeddings and the unembedding (bridge
weights, same processing for both models). Per-head rows are per *query* head: under grouped-query attention a query
head's QK and OV circuits use the key/value head it shares with the other query heads of its group."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.pair import ModelPair


def rel_change(base: torch.Tensor, tuned: torch.Tensor) -> float:
    denom = base.norm().item()
    return (tuned - base).norm().item() / denom if denom > 0 else float("nan")


@torch.no_grad()
def weight_diff(pair: ModelPair) -> pd.DataFrame:
    b, t = pair.base, pair.tuned
    arch = adapter_for(b)
    rows: list[dict[str, Any]] = []

    def add(component: str, layer: int | None, head: int | None, wb: torch.Tensor, wt: torch.Tensor) -> None:
        rows.append({"component": component, "layer": layer, "head": head, "rel_change": rel_change(wb, wt)})

    for L in range(pair.n_layers):
        for h in range(pair.n_heads):
            kv = arch.kv_head(h)  # W_K / W_V have n_kv heads under GQA
            add("QK", L, h, b.W_Q[L, h] @ b.W_K[L, kv].T, t.W_Q[L, h] @ t.W_K[L, kv].T)
            add("OV", L, h, b.W_V[L, kv] @ b.W_O[L, h], t.W_V[L, kv] @ t.W_O[L, h])
        add("mlp_in", L, None, b.W_in[L], t.W_in[L])
        add("mlp_out", L, None, b.W_out[L], t.W_out[L])
    add("embed", None, None, b.W_E, t.W_E)
    if arch.pos_embed:  # rotary models have no learned position embedding
        add("pos_embed", None, None, b.W_pos, t.W_pos)
    add("unembed", None, None, b.W_U, t.W_U)
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    return df
