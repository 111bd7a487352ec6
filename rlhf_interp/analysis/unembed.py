"""`unembed_change`: what changed in the read-out matrix, from the raw checkpoint tensors (W_U = the lm head, rows
per token; the token embedding W_E where the two are tied). A whole-matrix norm (weight_diff's `unembed` / `embed`
row) hides a targeted change, so this table looks at it three ways (`kind`; `measure` says what each column means):

- `singular_value` (rank k = 1..top_k): σ_k of ΔW_U = W_U,tuned − W_U,base (`value`), its share of ‖ΔW_U‖²_F
  (`share`), |cos| of its right singular vector with the base's metric read-out (`cosine`), and σ_k of each model's
  own W_U (`base`, `tuned`) for scale. One large σ_1 = a low-rank, targeted edit.
- `shared_shift`: the part of ΔW_U common to every token (invisible to the output softmax): its norm and share.
- `metric_direction`: the metric's read-out vector in each model — for logit_diff the mean unembedding row of the
  positive tokens minus that of the negative ones, d = mean W_U[pos] − mean W_U[neg] (the metric is LN(x)·d + const;
  reward:DIR: W_U c) — raw (`readout`) and as the residual stream sees it through the final norm's gain
  (`readout_after_gain`, g ⊙ d, centred where the norm centres). `base` / `tuned` are ‖d‖, `value` = ‖d_tuned‖ /
  ‖d_base‖, `share` = (d_tuned − d_base)·d̂_base / ‖d_base‖ (the relative growth along the base's direction), `cosine`
  = cos(d_base, d_tuned).
- `token` (rank 1..top_tokens): the tokens whose unembedding row moved most along the base's metric direction d̂_base,
  by |value|: `value` = Δw_j·d̂_base minus its mean over the vocabulary (a shift shared by every token changes no
  probability), in logit units per unit of normalised residual along d̂; `base` / `tuned` = w_j·d̂_base in each model;
  `share` = the fraction of ‖Δw_j‖² that lies along d̂_base; `in_metric` = positive / negative if the token is one of
  the metric's own.

Metrics that are not linear in the final residual (target:TEXT) have no read-out direction: only the singular values.
Memory: both matrices are read from the checkpoints (no model load); on a GPT-2-small-shaped pair +0.59 GB of peak RSS.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for, raw_layout
from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.weights import Checkpoint
from rlhf_interp.errors import NotSupported
from rlhf_interp.models import release_freed_memory

MEASURE = {
    "singular_value": "value: σ_k(ΔW_U) (raw {m}); share: σ_k² / ‖ΔW_U‖²_F; cosine: |cos| of its right singular "
                      "vector with the base metric read-out; base, tuned: σ_k of each model's {m}",
    "shared_shift": "value: ‖mean_j Δw_j‖ (the change every token's row shares; no effect on output probabilities); "
                    "share: vocab · ‖mean_j Δw_j‖² / ‖ΔW_U‖²_F",
    "metric_direction": "base, tuned: ‖d‖ of the metric read-out d = mean W_U[pos] − mean W_U[neg] ({what}); value: "
                        "tuned/base; share: (d_tuned − d_base)·d̂_base/‖d_base‖; cosine: cos(d_base, d_tuned)",
    "token": "value: Δw_j·d̂_base − its vocabulary mean (d̂_base: unit base metric read-out, raw {m}); base, tuned: "
             "w_j·d̂_base; share: (Δw_j·d̂_base)²/‖Δw_j‖²; cosine: cos(Δw_j, d̂_base)",
}

COLUMNS = ["kind", "quantity", "rank", "token_id", "token", "in_metric", "value", "share", "cosine", "base", "tuned",
           "measure"]


def _unembeddings(pair: ModelPair) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, str]:
    """Raw (vocab, d_model) read-out matrices of base and tuned, the final norm gains (None if not found) and the
    matrix's name ("W_U", or "W_E (tied)")."""
    ck = {m: Checkpoint(s) for m, s in (("base", pair.base_source), ("tuned", pair.tuned_source))}
    archs = ck["base"].config.get("architectures") or [getattr(pair.base.cfg, "architecture", "")]
    layout = raw_layout(str(archs[0]))
    if layout is None:
        raise NotSupported(f"unembed_change: no checkpoint layout for {archs[0]} in analysis/arch.py")
    tied = layout.unembed is None or ck["base"].maybe(layout.unembed + ".weight") is None \
        or bool(ck["base"].config.get("tie_word_embeddings", False))
    name = layout.embed if tied else str(layout.unembed)
    W = [ck[m].get(name + ".weight") for m in ("base", "tuned")]
    gains = [ck[m].maybe(layout.final_norm + ".weight") for m in ("base", "tuned")]
    g = [None if x is None else x + layout.gain_offset for x in gains]
    return W[0], W[1], g[0], g[1], "W_E (tied)" if tied else "W_U"


def _readout(pair: ModelPair, W: Tensor) -> Tensor | None:
    """The metric's read-out vector (d_model,) from a raw (vocab, d_model) unembedding (logprob_diff: its first-token
    term's, `Metric.linear_part`); None for a metric with no linear part."""
    part = pair.metric.linear_part()
    if part is None:
        return None
    return part.direction(W.T, None)[0]


def _singular(W: Tensor, rows: int = 8192) -> tuple[Tensor, Tensor]:
    """Singular values (descending) and right singular vectors (rows) of a tall (vocab, d) matrix, from its d × d Gram
    matrix accumulated in float64 over row blocks (no vocab-sized float64 copy, no left vectors)."""
    G = torch.zeros(W.shape[1], W.shape[1], dtype=torch.float64, device=W.device)
    for i in range(0, W.shape[0], rows):
        block = W[i : i + rows].double()
        G += block.T @ block
    evals, evecs = torch.linalg.eigh(G)  # ascending
    return evals.flip(0).clamp_min(0).sqrt(), evecs.flip(1).T


def _cos(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).clamp(-1, 1).item()


@torch.no_grad()
def unembed_change(pair: ModelPair, top_k: int = 8, top_tokens: int = 20) -> pd.DataFrame:
    Wb, Wt, gb, gt, matrix = _unembeddings(pair)
    rows: list[dict[str, Any]] = []
    db, dt = _readout(pair, Wb), _readout(pair, Wt)
    u = db / db.norm() if db is not None and db.norm() > 0 else None
    sv_b, sv_t = _singular(Wb)[0], _singular(Wt)[0]
    dW = Wt.sub_(Wb)  # (vocab, d_model), in place: W_tuned is not needed any more (its reads are base + change)
    del Wt
    sv, vh = _singular(dW)
    energy = float((sv**2).sum())
    for k in range(min(top_k, len(sv))):
        rows.append({"kind": "singular_value", "rank": k + 1, "value": sv[k].item(),
                     "share": sv[k].item() ** 2 / energy if energy > 0 else float("nan"),
                     "cosine": abs(_cos(vh[k].float(), u)) if u is not None else float("nan"),
                     "base": sv_b[k].item(), "tuned": sv_t[k].item(),
                     "measure": MEASURE["singular_value"].format(m=matrix)})
    shift = dW.mean(0)
    rows.append({"kind": "shared_shift", "value": shift.norm().item(),
                 "share": dW.shape[0] * shift.pow(2).sum().item() / energy if energy > 0 else float("nan"),
                 "measure": MEASURE["shared_shift"]})
    if db is not None and dt is not None and u is not None:
        centres = adapter_for(pair.base).centres
        views = {"readout": (db, dt, f"raw {matrix}")}
        if gb is not None and gt is not None:
            after = [g * d for g, d in ((gb, db), (gt, dt))]
            if centres:
                after = [a - a.mean() for a in after]
            views["readout_after_gain"] = (after[0], after[1], "g ⊙ d, final-norm gain" + (", centred" if centres
                                                                                          else ""))
        for quantity, (b, t, what) in views.items():
            rows.append({"kind": "metric_direction", "quantity": quantity, "base": b.norm().item(),
                         "tuned": t.norm().item(), "value": (t.norm() / b.norm()).item(),
                         "share": ((t - b) @ b / b.norm() ** 2).item(), "cosine": _cos(b, t),
                         "measure": MEASURE["metric_direction"].format(what=what)})
        rows += _token_rows(pair, Wb, dW, u, top_tokens, matrix)
    del Wb, dW
    release_freed_memory()
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for col in ("rank", "token_id"):
        df[col] = df[col].astype("Int64")
    return df


def _token_rows(pair: ModelPair, Wb: Tensor, dW: Tensor, u: Tensor, top: int, matrix: str) -> list[dict[str, Any]]:
    along = dW @ u  # (vocab,)
    value = along - along.mean()
    share = along**2 / (dW.pow(2).sum(-1)).clamp_min(1e-30)
    order = [j for j in value.abs().argsort(descending=True)[:top].tolist() if value[j] != 0]
    pos, neg = set(getattr(pair.metric, "positive", {}).values()), set(getattr(pair.metric, "negative", {}).values())
    rows = []
    for rank, j in enumerate(order, 1):
        moved = dW[j].norm() > 0
        rows.append({"kind": "token", "rank": rank, "token_id": j, "token": pair.tokenizer.decode([j]),
                     "value": value[j].item(), "base": (Wb[j] @ u).item(), "tuned": ((Wb[j] + dW[j]) @ u).item(),
                     "share": share[j].item() if moved else float("nan"),
                     "cosine": _cos(dW[j], u) if moved else float("nan"),
                     "in_metric": "positive" if j in pos else "negative" if j in neg else "",
                     "measure": MEASURE["token"].format(m=matrix)})
    return rows
