"""Batched sampling from a causal LM with a KV cache, left padding and correct position ids.

One convention is used everywhere in the toolkit (training, sampling, analysis):
- a prompt is encoded as `[BOS] + tokens(prompt)` when the tokenizer has a BOS token (GPT-2's BOS is its EOS
  token `<|endoftext|>`, which is also how TransformerLens prepends it);
- a batch of prompts is padded on the **left** with the PAD token, and position ids are the cumulative sum of the
  attention mask minus one, so every prompt's first real token sits at position 0;
- responses are sampled for a fixed number of new tokens; everything after the first EOS is then masked out
  (`response_mask`, True = real token, the EOS itself included).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_interp.errors import UserError


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """`[BOS] + tokens(prompt)`; no BOS when the tokenizer has none."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """PAD if the tokenizer has one, else EOS (only masks ever read padded slots)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def left_pad(sequences: list[list[int]], pad: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad token id lists into `input_ids` (batch, pos) and a bool `attention_mask` (batch, pos)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = True
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids for left-padded rows: cumsum(mask) - 1, clamped at 0 on the padding. (batch, pos)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Encode prompts with BOS and left padding: `input_ids`, `attention_mask`, both (batch, pos)."""
    return left_pad([prompt_token_ids(tokenizer, p) for p in prompts], pad_id(tokenizer), device)


def context_length(model: PreTrainedModel) -> int | None:
    """The model's maximum sequence length (GPT-2: `n_positions`), if its config names one."""
    config = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    return None


def check_fits_context(model: PreTrainedModel, prompts: list[str], lengths: list[int], new_tokens: int) -> None:
    """`UserError` naming the longest prompt when prompt + new tokens exceed the model's context."""
    ctx = context_length(model)
    if ctx is None or not lengths:
        return
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] + new_tokens > ctx:
        shown = prompts[longest] if len(prompts[longest]) <= 60 else prompts[longest][:57] + "..."
        raise UserError(
            f"prompt {shown!r} is {lengths[longest]} tokens; with {new_tokens} new tokens that exceeds the model's "
            f"context of {ctx}: shorten the prompt or generate fewer tokens"
        )


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits of the sampling distribution: divided by the temperature, then top-k / top-p filtered (-inf).

    The same function is used when sampling and when recomputing log-probs for PPO, so the two agree exactly.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the smallest prefix with mass >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def truncate_at_eos(responses: Tensor, eos_token_id: int | None) -> Tensor:
    """`response_mask` (batch, resp): True up to and including the first EOS, False after it."""
    if eos_token_id is None:
        return torch.ones_like(responses, dtype=torch.bool)
    is_eos = responses == eos_token_id
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # number of EOS strictly before each position
    return eos_before == 0


def has_eos(response_ids: Tensor, response_mask: Tensor, eos_token_id: int | None) -> Tensor:
    """(batch,) bool: the response contains an EOS (its last real token). Not `mask.sum() < resp`, which misses a
    response whose first EOS is the last sampled token (the mask is then all True)."""
    if eos_token_id is None:
        return torch.zeros(response_ids.shape[0], dtype=torch.bool, device=response_ids.device)
    return ((response_ids == eos_token_id) & response_mask).any(-1)


def cache_keyword(model: PreTrainedModel) -> str:
    """The KV-cache argument and output field: `cache` in newer transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class Samples:
    """Output of `sample`: prompt tokens, fixed-length responses and what the rollout saw on the way."""

    query_ids: Tensor  # (batch, q) left-padded prompt tokens
    query_mask: Tensor  # (batch, q) bool
    response_ids: Tensor  # (batch, resp) sampled tokens; PAD after the first EOS
    response_mask: Tensor  # (batch, resp) bool, True up to and including the first EOS
    logprobs: Tensor  # (batch, resp) log-prob of each sampled token under the filtered sampling distribution
    hidden: Tensor | None  # (batch, resp, d_model) final-LN residual stream before each response token


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    return_hidden: bool = False,
    stop_at_eos: bool = False,
) -> Samples:
    """Sample `max_new_tokens` tokens for every prompt, then mask everything after the first EOS.

    A plain KV-cached loop over the whole batch rather than `model.generate`, so that the log-prob of every sampled
    token (and, for PPO's value head, the final-LN hidden state that predicted it) comes out of the same forward
    passes. `stop_at_eos`: stop decoding once every row has sampled an EOS; the slots after that are PAD with
    log-prob 0 (and zero hidden states), all outside `response_mask`, so the masked result is the same as without
    it. Off by default: stopping early draws fewer numbers from `generator`, so a caller that keeps using the same
    generator (the PPO rollout) would see different later draws.
    """
    device = next(model.parameters()).device
    query_ids, query_mask = encode_prompts(tokenizer, prompts, device)
    check_fits_context(model, prompts, query_mask.sum(-1).tolist(), max_new_tokens)
    batch = query_ids.shape[0]
    attention_mask = query_mask.long()
    position_ids = position_ids_from_mask(query_mask)
    input_ids = query_ids
    past = None
    cache_kw = cache_keyword(model)
    tokens, logps, hiddens = [], [], []
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            output_hidden_states=return_hidden,
            **{cache_kw: past},
        )
        past = getattr(out, cache_kw)
        logits = filter_logits(out.logits[:, -1, :].float(), temperature, top_k, top_p)  # (batch, vocab)
        logprobs = logits.log_softmax(-1)
        token = torch.multinomial(logprobs.exp(), 1, generator=generator)  # (batch, 1)
        tokens.append(token)
        logps.append(logprobs.gather(-1, token))
        if return_hidden:
            hiddens.append(out.hidden_states[-1][:, -1:, :])  # GPT-2: the last hidden state is after ln_f
        if stop_at_eos and tokenizer.eos_token_id is not None:
            done |= token[:, 0] == tokenizer.eos_token_id
            if bool(done.all()):
                break
        input_ids = token
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
    if len(tokens) < max_new_tokens:  # stopped early: fill the rest (all after every row's EOS)
        rest = max_new_tokens - len(tokens)
        tokens.append(torch.full((batch, rest), pad_id(tokenizer), dtype=torch.long, device=device))
        logps.append(logps[-1].new_zeros(batch, rest))
        if return_hidden:
            hiddens.append(hiddens[-1].new_zeros(batch, rest, hiddens[-1].shape[-1]))
    response_ids = torch.cat(tokens, dim=1)
    response_mask = truncate_at_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(~response_mask, pad_id(tokenizer))
    return Samples(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=torch.cat(logps, dim=1),
        hidden=torch.cat(hiddens, dim=1) if return_hidden else None,
    )


def sample_seeded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    seed: int,
    **kwargs: object,
) -> tuple[Samples, list[str]]:
    """`sample` with a fresh generator on the model's device seeded with `seed`; also returns the decoded texts."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    samples = sample(model, tokenizer, prompts, max_new_tokens, generator=gen, **kwargs)
    return samples, decode_responses(tokenizer, samples)


def decode_responses(tokenizer: PreTrainedTokenizerBase, samples: Samples) -> list[str]:
    """Response texts: the masked tokens, special tokens (EOS) dropped."""
    return [
        tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True)
        for ids, mask in zip(samples.response_ids, samples.response_mask, strict=True)
    ]
