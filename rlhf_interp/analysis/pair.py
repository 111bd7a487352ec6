"""A base/tuned pair loaded for analysis: two TransformerBridges (TransformerLens 4.x), the plain HF models for
sampling (loaded on first use, released after), the shared tokenizer, the prompts as token batches of equal length,
and the metric.

`groups` hold the tokens the metric is computed on: the prompts, extended by the metric where it reads more than the
next token (`target:TEXT` appends its text; `logprob_diff` repeats each prompt once per word and appends that word, so
a group of n prompts has n · W rows). Analyses that read the metric run on them; analyses of the prompts themselves
(attention, activation means, diffing) use `prompt_groups()`; per-position patching patches prompt positions only
(`metric.prompt_length`).

The HF copies are separate because booting a bridge rewrites its HF module: its KV-cached forward no longer matches
the model (sampled tokens differ), while its full forward does.

Both bridges are booted in compatibility mode (LayerNorm folded, writing weights centred) so that residual-stream
decompositions add up, with `fold_value_biases=False` so that a patched head carries its own model's value bias
(see shared notes: with folding, cross-model hook_z patching keeps the receiver's value bias).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_interp.analysis.metric import Metric
from rlhf_interp.errors import UserError
from rlhf_interp.models import (
    ModelSource,
    load_bridge,
    load_causal_lm,
    page_out,
    release_freed_memory,
    resolve_model_spec,
)
from rlhf_interp.sampling import prompt_token_ids

SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")


def resolve_pair(base: str, tuned: str | None) -> tuple[ModelSource, ModelSource]:
    """BASE TUNED, or a run directory given once (its base/ and tuned/)."""
    if tuned is None:
        run = Path(base)
        if not ((run / "base").is_dir() and (run / "tuned").is_dir()):
            raise UserError(f"{base}: a single argument must be a run directory with base/ and tuned/; "
                            "otherwise pass BASE TUNED")
        return resolve_model_spec(run / "base"), resolve_model_spec(run / "tuned")
    return resolve_model_spec(base), resolve_model_spec(tuned)


def check_compatible(base_cfg: Any, tuned_cfg: Any, base_tok: Any, tuned_tok: Any) -> None:
    diffs = [f"{k} {getattr(base_cfg, k, None)} vs {getattr(tuned_cfg, k, None)}" for k in SHAPE_KEYS
             if getattr(base_cfg, k, None) != getattr(tuned_cfg, k, None)]
    if diffs:
        raise UserError(f"base and tuned models differ in shape: {', '.join(diffs)}")
    bv, tv = base_tok.get_vocab(), tuned_tok.get_vocab()
    if bv != tv:
        only = len(set(bv.items()) ^ set(tv.items()))
        raise UserError(f"base and tuned tokenizers differ ({len(bv)} vs {len(tv)} tokens, {only} entries differ); "
                        "compare models that share a tokenizer")
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(base_tok, attr) != getattr(tuned_tok, attr):
            raise UserError(f"base and tuned tokenizers differ in {attr}")


@dataclass
class ModelPair:
    base_source: ModelSource
    tuned_source: ModelSource
    base: Any  # TransformerBridge
    tuned: Any
    tokenizer: Any
    prompts: list[str]
    metric: Metric
    groups: list[tuple[list[int], Tensor]] = field(default_factory=list)  # (prompt indices, tokens (batch, pos))
    device: str = "cpu"
    _hf: dict[str, Any] = field(default_factory=dict)

    def model(self, name: str) -> Any:
        return {"base": self.base, "tuned": self.tuned}[name]

    def hf(self, name: str) -> Any:
        """The plain HF model `base` or `tuned` (for sampling), loaded on first use."""
        if name not in self._hf:
            source = {"base": self.base_source, "tuned": self.tuned_source}[name]
            self._hf[name] = load_causal_lm(source, device=self.device)[0]
        return self._hf[name]

    def release_hf(self) -> None:
        """Drop the HF copies (the bridges stay): on a GPT-2-small pair that is ~1 GB less for the later analyses."""
        self._hf.clear()
        release_freed_memory()

    @property
    def main_group(self) -> tuple[list[int], Tensor]:
        """The largest set of prompts with equal token length (positions line up: used for per-position tables)."""
        return max(self.groups, key=lambda g: (len(g[0]), -g[1].shape[1]))

    @property
    def n_layers(self) -> int:
        return int(self.base.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.base.cfg.n_heads)

    def all_tokens(self) -> list[Tensor]:
        return [tokens for _, tokens in self.groups]

    def prompt_groups(self) -> list[tuple[list[int], Tensor]]:
        """`groups` with the prompts alone (one row per prompt, no appended tokens)."""
        return [(idx, self.metric.prompt_tokens(tokens)) for idx, tokens in self.groups]

    def linear_view(self) -> ModelPair | None:
        """This pair with the linear part of its metric (`Metric.linear_part`) on the prompt tokens, for DLA and the
        logit lens: the pair itself where the metric is linear; for `logprob_diff` its first-token term (a logit
        difference at the last prompt position); None where no part is linear (`target:TEXT`)."""
        if self.metric.linear:
            return self
        part = self.metric.linear_part()
        if part is None:
            return None
        return replace(self, metric=part, groups=self.prompt_groups())


def group_prompts(tokenizer: Any, prompts: list[str], metric: Metric, n_ctx: int, device: str = "cpu"
                  ) -> list[tuple[list[int], Tensor]]:
    """Prompts as batches of equal token length (no padding, so every position is real for both models)."""
    by_len: dict[int, list[int]] = defaultdict(list)
    encoded = [prompt_token_ids(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    groups = []
    for length in sorted(by_len):
        idx = by_len[length]
        tokens = metric.extend_tokens(torch.tensor([encoded[i] for i in idx], dtype=torch.long))
        if tokens.shape[1] > n_ctx:
            raise UserError(f"prompt {prompts[idx[0]]!r} is {tokens.shape[1]} tokens, more than the context {n_ctx}")
        groups.append((idx, tokens.to(device)))
    return groups


def load_pair(base_source: ModelSource, tuned_source: ModelSource, prompts: list[str], metric_spec: str,
              positive: str | None = None, negative: str | None = None, device: str = "cpu") -> ModelPair:
    from rlhf_interp.analysis.metric import build_metric
    from rlhf_interp.models import load_tokenizer

    base_tok, tuned_tok = load_tokenizer(base_source), load_tokenizer(tuned_source)
    base = load_bridge(base_source, fold_value_biases=False, device=device)
    page_out(base)  # its pages come back when first read, after the second model's load-time peak
    tuned = load_bridge(tuned_source, fold_value_biases=False, device=device)
    release_freed_memory()
    check_compatible(base.cfg, tuned.cfg, base_tok, tuned_tok)
    metric = build_metric(metric_spec, base_tok, positive, negative)
    groups = group_prompts(base_tok, prompts, metric, int(base.cfg.n_ctx), device)
    torch.set_grad_enabled(True)
    pair = ModelPair(base_source, tuned_source, base, tuned, base_tok, prompts, metric, groups, device)
    if hasattr(metric, "bind"):  # reward:DIR reads the models' unembeddings
        metric.bind(pair)
    return pair


@torch.no_grad()
def metric_per_prompt(model: Any, pair: ModelPair) -> Tensor:
    """The metric for every prompt (in prompt order) under `model` (a bridge)."""
    out = torch.empty(len(pair.prompts))
    for idx, tokens in pair.groups:
        out[idx] = pair.metric(model(tokens)).cpu()
    return out
