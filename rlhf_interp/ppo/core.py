"""The RLHF/PPO details, one small pure function each, over tensors of shape (batch, resp).

Sources cited per function: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019
(fine-tuning LMs from human preferences; adaptive KL), Huang et al. "The N Implementation Details of RLHF with PPO"
(2023/2024), CleanRL ppo.py, TRL's legacy PPOTrainer. One mask convention: `mask` is bool, True = real token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


# --- masked statistics ---------------------------------------------------------------------------------------------
def masked_fill_zero(x: Tensor, mask: Tensor) -> Tensor:
    """`x` where `mask` is True, 0 elsewhere. A select, not `x * mask`: an inf or NaN on a masked-out position (a
    padded token's log-prob under a top-k/top-p filter is -inf) must not become NaN (inf * 0), in values or grads."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over positions where `mask` is True (over all of them, or along `dim`)."""
    x = masked_fill_zero(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is True (over all of them, or along `dim`)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of `x` (Bessel-corrected by default, as in TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over valid tokens only; padded positions come out as 0.

    # advantage whitening: N implementation details #7 (statistics over valid tokens only)
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask)


# --- log-probs, entropy, KL ---------------------------------------------------------------------------------------
def logprobs_of(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under `logits` (already temperature-scaled / filtered): (batch, resp, vocab) -> (batch, resp)."""
    return token_logprobs(logits.log_softmax(-1), tokens)


def token_logprobs(logp: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) from full log-probs (batch, resp, vocab) -> (batch, resp)."""
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution per position; -inf logits (top-k/top-p) contribute 0."""
    return entropy_from_logprobs(logits.log_softmax(-1))


def entropy_from_logprobs(logp: Tensor) -> Tensor:
    """Entropy per position from full log-probs (batch, resp, vocab); -inf log-probs contribute 0.

    The -inf log-probs are replaced by 0 *before* the product: `where(p > 0, p * logp, 0)` has the right value but
    a NaN gradient (d(p * logp)/dp = logp = -inf, times the 0 that `where` sends back), which `ent_coef > 0` hits.
    """
    p = logp.exp()
    safe_logp = torch.where(p > 0, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return -(p * safe_logp).sum(-1)


def kl_estimates(logp: Tensor, ref_logp: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token estimators of KL(policy || ref) for tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative per token); k3 = (r - 1) - log r with r = q/p (unbiased, >= 0).
    # KL approximators: http://joschu.net/blog/kl-approx.html
    """
    k1 = logp - ref_logp
    log_ratio = ref_logp - logp
    k3 = (torch.expm1(log_ratio) - log_ratio).clamp_min(0)  # >= 0 exactly; rounding can give -1e-9
    return k1, k3


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last True position per row (batch,); 0 for an all-False row."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).max(-1).values


def compute_rewards(scores: Tensor, kl: Tensor, kl_coef: float, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token rewards: -kl_coef * KL_t at every response token, plus the scalar score at the last one.

    # reward = score at the last token - beta * KL per token: Ziegler et al. 2019, eq. 2; N details #4
    Returns (rewards, non_score_rewards), both (batch, resp) and zero on padding.
    """
    non_score = masked_fill_zero(-kl_coef * kl, mask)
    rewards = non_score.clone()
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, non_score


def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation backwards over the response tokens; returns (advantages, returns).

    Values and rewards past the end of a response are zeroed, so the last real token bootstraps from 0.
    # GAE: Schulman et al. 2016, eq. 16; returns = advantages + values (CleanRL, TRL)
    """
    values, rewards = masked_fill_zero(values, mask), masked_fill_zero(rewards, mask)
    resp = rewards.shape[-1]
    last_gae = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(resp)):
        next_value = values[:, t + 1] if t < resp - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = masked_fill_zero(torch.stack(advantages_reversed[::-1], dim=1), mask)
    return advantages, masked_fill_zero(advantages + values, mask)


def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate objective (as a loss) with its diagnostics (clipfrac, approx-KL, ratio).

    # clipped surrogate: Schulman et al. 2017, eq. 7; approx_kl (k3) http://joschu.net/blog/kl-approx.html
    """
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean((torch.expm1(log_ratio) - log_ratio).clamp_min(0), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, Tensor]:
    """0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within `clip` of the rollout's value; and the clip fraction.

    # value clipping: PPO2 baselines / CleanRL ppo.py; N details #8
    """
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask).detach()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - v) / Var(R) over valid tokens (1 = perfect value function, <= 0 = useless)."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_returns)


# --- KL coefficient and score normalisation ----------------------------------------------------------------------
@dataclass
class KLController:
    """Fixed or adaptive KL coefficient.

    # adaptive KL: Ziegler et al. 2019, sec. 2.2 (https://arxiv.org/abs/1909.08593): e = clip(KL/target - 1, ±0.2),
    # beta <- beta * (1 + e * n_steps / horizon)
    """

    value: float
    target: float | None = None  # None: fixed coefficient
    horizon: float = 10_000

    def update(self, current_kl: float, n_steps: int) -> None:
        """One controller step; a non-finite KL (a broken rollout) leaves beta unchanged rather than making it NaN."""
        if self.target is None or not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


@dataclass
class RunningMoments:
    """Running mean/std of scores across rollouts (Chan et al. parallel update), for optional score whitening."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-24

    def update(self, xs: Tensor) -> None:
        n = xs.numel()
        batch_mean, batch_var = xs.mean().item(), xs.var(unbiased=False).item()
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))
