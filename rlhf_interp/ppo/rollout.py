"""Rollout and scoring: sample episodes, recompute what PPO needs once, score them, shape the rewards.

Every tensor is (batch, resp) unless noted; `mask` is the response mask (True = real token, EOS included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_interp.ppo.config import TrainConfig
from rlhf_interp.ppo.core import logprobs_of
from rlhf_interp.ppo.value_head import ValueHead
from rlhf_interp.sampling import (
    Samples,
    decode_responses,
    filter_logits,
    has_eos,
    position_ids_from_mask,
    sample,
)


@dataclass
class Rollout:
    prompts: list[str]
    texts: list[str]  # decoded responses
    query_ids: Tensor  # (batch, q)
    query_mask: Tensor  # (batch, q)
    response_ids: Tensor
    mask: Tensor
    logprobs: Tensor  # old log-probs, from the rollout itself (no grad)
    values: Tensor  # old values, from the rollout itself (no grad)
    ref_logprobs: Tensor  # frozen base model, temperature only (no top-k/top-p filter)
    has_eos: Tensor  # (batch,) bool: the response holds an EOS (possibly as its last sampled token)
    scores: Tensor | None = None  # (batch,)


def forward_response(
    model: PreTrainedModel,
    query_ids: Tensor,
    query_mask: Tensor,
    response_ids: Tensor,
    cfg: TrainConfig,
    output_hidden: bool = False,
    filtered: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """One forward over prompt + response: the logits that predicted each response token (batch, resp, vocab),
    and the final-LN hidden states at the same positions (batch, resp, d_model) if asked.

    `filtered=True` (the policy): the rollout's sampling distribution, temperature then top-k / top-p, so that the
    recomputed log-probs match the sampled ones. `filtered=False` (the reference): temperature only. The reference
    is a fixed distribution to stay close to, not a sampler: filtering it would give any token outside its own
    top-k/top-p set (after an update, or a PAD after EOS) log-prob -inf and KL = +inf.
    # log-probs recomputed with the rollout's temperature / top-k / top-p: N implementation details #2
    """
    q, resp = query_ids.shape[1], response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (batch, q + resp)
    attention = torch.cat([query_mask, torch.ones_like(response_ids, dtype=torch.bool)], dim=1)
    out = model(
        input_ids=input_ids,
        attention_mask=attention.long(),
        position_ids=position_ids_from_mask(attention),
        output_hidden_states=output_hidden,
        logits_to_keep=resp + 1,  # only positions q-1 .. q+resp-1 are needed
        use_cache=False,
    )
    logits = filter_logits(out.logits[:, :-1].float(), cfg.temperature, cfg.top_k if filtered else 0,
                           cfg.top_p if filtered else 1.0)
    hidden = out.hidden_states[-1][:, q - 1 : -1] if output_hidden else None
    return logits, hidden


@torch.no_grad()
def collect_rollout(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    value_head: ValueHead,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: TrainConfig,
    generator: torch.Generator,
) -> Rollout:
    """Sample `response_length` tokens per prompt; old log-probs and values come from the sampling passes themselves;
    the reference log-probs from one forward of the frozen base model.

    # old log-probs and values from the rollout, not recomputed after an update: N implementation details #3
    """
    s: Samples = sample(
        policy, tokenizer, prompts, cfg.response_length,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator, return_hidden=True,
    )
    assert s.hidden is not None
    ref_logits, _ = forward_response(ref, s.query_ids, s.query_mask, s.response_ids, cfg, filtered=False)
    return Rollout(
        prompts=prompts,
        texts=decode_responses(tokenizer, s),
        query_ids=s.query_ids,
        query_mask=s.query_mask,
        response_ids=s.response_ids,
        mask=s.response_mask,
        logprobs=s.logprobs,
        values=value_head(s.hidden),
        ref_logprobs=logprobs_of(ref_logits, s.response_ids),
        has_eos=has_eos(s.response_ids, s.response_mask, tokenizer.eos_token_id),
    )


def reward_texts(rollout: Rollout, cfg: TrainConfig, reward_fn: object = None) -> list[str]:
    """What the reward scores: the responses, or prompt + response (`reward_text`, or a reward model)."""
    if cfg.reward_text == "prompt+response" or getattr(reward_fn, "reads_prompt", False):
        return [p + t for p, t in zip(rollout.prompts, rollout.texts, strict=True)]
    return rollout.texts
