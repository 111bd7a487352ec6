"""Exact linear read-outs of the residual stream at the metric position (compatibility mode: LayerNorm folded).

The final LayerNorm of a folded bridge is x -> (x - mean(x)) / sqrt(var(x) + eps), with its weights folded into
W_U. A component c of the final residual x (a sum of components) contributes (c - mean(c)) / scale(x) · direction to
the metric, where scale(x) is shared by all components; these contributions plus the unembedding bias term add up to
the metric exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def center(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def ln_scale(resid: Tensor, eps: float, centre: bool = True) -> Tensor:
    """The final norm's scale for residual vectors (..., d_model) -> (..., 1) (RMSNorm: `centre=False`)."""
    x = center(resid) if centre else resid
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def unembed_direction(model: Any, metric: Any) -> tuple[Tensor, float]:
    b_U = getattr(model, "b_U", None)
    return metric.direction(model.W_U.detach(), None if b_U is None else b_U.detach())


def read_out(components: Tensor, scale: Tensor, direction: Tensor, centre: bool = True) -> Tensor:
    """Contribution of each component (..., d_model) to the metric, given the shared norm scale (..., 1)."""
    return ((center(components) if centre else components) / scale) @ direction


@torch.no_grad()
def final_cache(model: Any, tokens: Tensor, names: list[str]) -> Any:
    wanted = set(names)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return cache


def eps_of(model: Any) -> float:
    return float(getattr(model.cfg, "eps", 1e-5))
