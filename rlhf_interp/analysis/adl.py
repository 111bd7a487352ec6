"""`adl`: the Activation Difference Lens (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces in
activation differences").

On text unrelated to the training prompts (the *diff corpus*: by default unconditional samples of the base model,
or the lines of `--diff-corpus FILE`), take the mean tuned − base residual difference δ_L after every layer L over the
first k tokens after BOS, and
- read it through the logit lens: centre(δ_L) / s @ W_U (base model's folded unembedding; s = the base model's mean
  final-LayerNorm scale at those positions), so `logit` is roughly the direct logit change δ_L would make if it were
  added to the final residual. Top promoted and suppressed tokens per layer (`adl`);
- its norm per layer, absolute and relative to the base residual's mean norm (`adl_norm`);
- steering: add α·δ_L to the base model's residual at layer L (every position, prompts included), sample from the
  prompts and score with the reward; reward and KL(steered ‖ base) per α (`adl_steering`). Does the mean difference
  alone reproduce the tuned behaviour?
The residual read here is the bridge's (compatibility mode: writing weights centred), whose difference from the HF
residual is a per-position multiple of the all-ones vector, which every following LayerNorm removes; so δ_L can be
added to the plain HF model's block output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.amplification import lockstep_sample
from rlhf_interp.analysis.resid import center, eps_of, ln_scale
from rlhf_interp.errors import UserError
from rlhf_interp.rewards import check_scores, get_reward
from rlhf_interp.sampling import prompt_token_ids, truncate_at_eos

STEER_ALPHAS = (0.0, 1.0, 2.0, 4.0)


def _batches(seqs: list[list[int]], device: str) -> list[Tensor]:
    by_len: dict[int, list[list[int]]] = {}
    for s in seqs:
        by_len.setdefault(len(s), []).append(s)
    return [torch.tensor(v, dtype=torch.long, device=device) for _, v in sorted(by_len.items())]


@torch.no_grad()
def diff_corpus(pair: Any, ctx: dict[str, Any], n_samples: int = 64) -> list[Tensor]:
    """The diff corpus as equal-length token batches, each row starting with BOS; computed once per compare."""
    if "diff_corpus_tokens" in ctx:
        return ctx["diff_corpus_tokens"]
    tok, n_ctx = pair.tokenizer, int(pair.base.cfg.n_ctx)
    path = ctx.get("diff_corpus")
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--diff-corpus: file not found: {p}")
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        seqs = [prompt_token_ids(tok, ln)[:n_ctx] for ln in lines]
        seqs = [s for s in seqs if len(s) >= 2]
        if not seqs:
            raise UserError(f"--diff-corpus {p}: no line with at least one token")
    else:
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise UserError("the tokenizer has neither BOS nor EOS: pass --diff-corpus FILE")
        base_hf = pair.hf("base")
        out = lockstep_sample([base_hf], lambda ls: ls[0], tok, [""] * n_samples, ctx.get("new_tokens", 32),
                              ctx.get("seed", 0) + 1)
        ids = out["response_ids"]
        mask = truncate_at_eos(ids, tok.eos_token_id) & (ids != tok.eos_token_id)  # drop the EOS and what follows
        seqs = [[start, *row[m].tolist()] for row, m in zip(ids, mask, strict=True)]
        seqs = [s for s in seqs if len(s) >= 2]
    batches = _batches(seqs, pair.device)
    ctx["diff_corpus_tokens"] = batches
    return batches


@torch.no_grad()
def mean_differences(pair: Any, batches: list[Tensor], k: int) -> tuple[Tensor, Tensor, float]:
    """δ (n_layers, d_model) over positions 1..k of every text, the base residual's mean norm per layer and the base
    model's mean final-LN scale at those positions."""
    names = [f"blocks.{L}.hook_resid_post" for L in range(pair.n_layers)]
    total = torch.zeros(pair.n_layers, int(pair.base.cfg.d_model))
    base_norm = torch.zeros(pair.n_layers)
    scale, n = 0.0, 0
    for tokens in batches:
        _, cb = pair.base.run_with_cache(tokens, names_filter=lambda x: x in names)
        _, ct = pair.tuned.run_with_cache(tokens, names_filter=lambda x: x in names)
        sl = slice(1, k + 1)
        for L, name in enumerate(names):
            b, t = cb[name][:, sl].float().cpu(), ct[name][:, sl].float().cpu()
            total[L] += (t - b).sum((0, 1))
            base_norm[L] += b.norm(dim=-1).sum()
        last = cb[names[-1]][:, sl].float().cpu()
        scale += ln_scale(last, eps_of(pair.base)).sum().item()
        n += last.shape[0] * last.shape[1]
    return total / n, base_norm / n, scale / n


def block_modules(model: Any, n_layers: int) -> Any:
    """The HF model's list of transformer blocks: the first ModuleList with one entry per layer."""
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers:
            return m
    raise UserError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__} for steering")


class _Steer(torch.nn.Module):
    """The HF model with α·δ added to block L's output while `on`; two entries of lockstep_sample share it."""

    def __init__(self, model: Any, on: bool, state: dict[str, Any]):
        super().__init__()
        self.steer_inner, self.on, self.state = model, on, state

    def forward(self, **kw: Any) -> Any:
        self.state["on"] = self.on
        return self.steer_inner(**kw)

    @property
    def config(self) -> Any:
        return self.steer_inner.config


def steering(pair: Any, delta: Tensor, layer: int, reward: str, samples_per_prompt: int, new_tokens: int,
             seed: int, alphas: tuple[float, ...] = STEER_ALPHAS) -> pd.DataFrame:
    reward_fn = get_reward(reward)
    batch = [p for p in pair.prompts for _ in range(samples_per_prompt)]
    base = pair.hf("base")
    block = block_modules(base, pair.n_layers)[layer]
    state: dict[str, Any] = {"on": False, "vec": None}

    def hook(module: Any, args: Any, output: Any) -> Any:
        if not state["on"] or state["vec"] is None:
            return output
        if isinstance(output, tuple):
            return (output[0] + state["vec"], *output[1:])
        return output + state["vec"]

    handle = block.register_forward_hook(hook)
    rows = []
    try:
        for alpha in alphas:
            state["vec"] = (alpha * delta).to(next(base.parameters()).device)
            out = lockstep_sample([_Steer(base, True, state), _Steer(base, False, state)], lambda ls: ls[0],
                                  pair.tokenizer, batch, new_tokens, seed, kl_against=(1,))
            scores = check_scores(reward, reward_fn, out["texts"])
            rows.append({"layer": layer, "alpha": alpha, "reward_mean": float(torch.tensor(scores).mean()),
                         "reward_std": float(torch.tensor(scores).std()), "kl_vs_base": out["kl"][1].mean().item(),
                         "example": out["texts"][0]})
    finally:
        handle.remove()
        pair.release_hf()
    return pd.DataFrame(rows)


def adl(pair: Any, ctx: dict[str, Any], k: int = 5, top: int = 20) -> dict[str, pd.DataFrame]:
    batches = diff_corpus(pair, ctx)
    delta, base_norm, scale = mean_differences(pair, batches, k)
    W_U = pair.base.W_U.detach().float().cpu()
    rows: list[dict[str, Any]] = []
    norm_rows = []
    floor = 1e-6 * float(delta.norm(dim=-1).max())
    for L in range(pair.n_layers):
        logits = (center(delta[L]) / scale) @ W_U
        if float(delta[L].norm()) <= floor:  # no difference at this layer: no token list (its ranks would be noise)
            logits = None
        order = logits.argsort(descending=True) if logits is not None else torch.zeros(0, dtype=torch.long)
        for direction, ids in (("promoted", order[:top]), ("suppressed", order.flip(0)[:top])):
            for rank, i in enumerate(ids.tolist()):
                rows.append({"layer": L, "direction": direction, "rank": rank, "token_id": i,
                             "token": pair.tokenizer.decode([i]), "logit": logits[i].item()})
        norm_rows.append({"layer": L, "norm": delta[L].norm().item(), "base_resid_norm": base_norm[L].item(),
                          "rel_norm": (delta[L].norm() / base_norm[L]).item() if base_norm[L] > 0 else float("nan"),
                          "positions": k, "texts": sum(b.shape[0] for b in batches)})
    cols = ["layer", "direction", "rank", "token_id", "token", "logit"]
    tables = {"adl": pd.DataFrame(rows, columns=cols), "adl_norm": pd.DataFrame(norm_rows)}
    if ctx.get("reward"):
        layer = pair.n_layers // 2
        tables["adl_steering"] = steering(pair, delta[layer], layer, ctx["reward"], ctx.get("samples_per_prompt", 4),
                                          ctx.get("new_tokens", 32), ctx.get("seed", 0))
    ctx["adl_delta"] = delta
    return tables
