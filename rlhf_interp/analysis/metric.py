"""The metric every component analysis explains.

`logit_diff` (default): at the next-token position after each prompt, the mean logit over a set of positive
sentiment tokens minus the mean over negative ones. It is linear in the final residual stream (after the final
LayerNorm), so direct logit attribution and the logit lens decompose it exactly.

`target:TEXT`: the summed log-prob of the continuation TEXT after each prompt (not linear: DLA and the logit lens
are skipped for it, the causal analyses use it as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rlhf_interp.errors import UserError

POSITIVE_WORDS = ("great", "good", "excellent", "wonderful", "amazing", "brilliant", "beautiful", "fantastic",
                  "perfect", "lovely", "nice", "fun", "enjoyable", "superb", "awesome", "delightful", "charming")
NEGATIVE_WORDS = ("bad", "terrible", "awful", "boring", "poor", "horrible", "weak", "disappointing", "dull",
                  "stupid", "ugly", "lame", "pathetic", "dreadful", "annoying", "painful", "mediocre")
MIN_WORDS = 3


def single_token_ids(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Words (with a leading space, as they follow a prompt) that are one token in this vocabulary."""
    found = {}
    for w in words:
        ids = tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            found[w.strip()] = ids[0]
    return found


@dataclass
class Metric:
    """A per-prompt scalar computed from logits; `direction` is set when it is linear in the final residual."""

    name: str
    positive: dict[str, int] = field(default_factory=dict)
    negative: dict[str, int] = field(default_factory=dict)
    target: str = ""
    target_ids: list[int] = field(default_factory=list)

    @property
    def linear(self) -> bool:
        return self.name == "logit_diff"

    def extend_tokens(self, tokens: Tensor) -> Tensor:
        """The tokens the models must see: the prompt (+ the target continuation minus its last token)."""
        if not self.target_ids or len(self.target_ids) == 1:
            return tokens
        extra = torch.tensor(self.target_ids[:-1], dtype=tokens.dtype, device=tokens.device)
        return torch.cat([tokens, extra.expand(tokens.shape[0], -1)], dim=1)

    @property
    def vocab_ids(self) -> list[int] | None:
        """The vocabulary columns the metric reads (positive then negative ids), None if it needs all of them."""
        return [*self.positive.values(), *self.negative.values()] if self.linear else None

    def on_columns(self, columns: Tensor) -> Tensor:
        """The metric from logits restricted to `vocab_ids`: (batch, pos, len(vocab_ids)) -> (batch,)."""
        last = columns[:, -1, :].float()
        n_pos = len(self.positive)
        return last[:, :n_pos].mean(-1) - last[:, n_pos:].mean(-1)

    def __call__(self, logits: Tensor) -> Tensor:
        """(batch, pos, vocab) logits -> (batch,) metric per prompt."""
        if self.name == "logit_diff":
            return self.on_columns(logits[:, -1:, self.vocab_ids])
        t = len(self.target_ids)
        logp = logits[:, -t:, :].float().log_softmax(-1)
        ids = torch.tensor(self.target_ids, device=logits.device).expand(logits.shape[0], -1)
        return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)

    def direction(self, W_U: Tensor, b_U: Tensor | None) -> tuple[Tensor, float]:
        """Unembedding direction (d_model,) and bias term such that metric = ln_final(resid) · direction + bias."""
        if not self.linear:
            raise ValueError(f"metric {self.name} is not linear in the residual stream")
        pos, neg = list(self.positive.values()), list(self.negative.values())
        direction = W_U[:, pos].mean(-1) - W_U[:, neg].mean(-1)
        bias = 0.0 if b_U is None else float(b_U[pos].mean() - b_U[neg].mean())
        return direction, bias


def _words(spec: str | None, default: tuple[str, ...]) -> list[str]:
    if not spec:
        return list(default)
    if spec.startswith("@"):
        from pathlib import Path

        path = Path(spec[1:])
        if not path.is_file():
            raise UserError(f"word list file not found: {path}")
        return [w.strip() for w in path.read_text(encoding="utf-8").replace(",", "\n").splitlines() if w.strip()]
    return [w.strip() for w in spec.split(",") if w.strip()]


def build_metric(
    spec: str, tokenizer: PreTrainedTokenizerBase, positive: str | None = None, negative: str | None = None
) -> Metric:
    """`logit_diff` (with optional comma lists or @files of positive/negative words) or `target:TEXT`."""
    if spec == "logit_diff":
        pos = single_token_ids(tokenizer, _words(positive, POSITIVE_WORDS))
        neg = single_token_ids(tokenizer, _words(negative, NEGATIVE_WORDS))
        if len(pos) < MIN_WORDS or len(neg) < MIN_WORDS:
            raise UserError(f"logit_diff needs >= {MIN_WORDS} positive and negative words that are single tokens "
                            f"in this vocabulary; found {sorted(pos)} / {sorted(neg)}: pass --positive/--negative")
        overlap = set(pos.values()) & set(neg.values())
        if overlap:
            raise UserError(f"positive and negative words share tokens {sorted(overlap)}")
        return Metric("logit_diff", positive=pos, negative=neg)
    if spec.startswith("target:"):
        text = spec[len("target:"):]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("metric target:TEXT needs a non-empty TEXT (e.g. 'target: great')")
        return Metric(f"target:{text}", target=text, target_ids=list(ids))
    if spec.startswith("reward:"):
        return RewardMetric(spec, directory=spec[len("reward:"):])
    raise UserError(f"unknown metric {spec!r}; use logit_diff, target:TEXT or reward:DIR")


@dataclass
class RewardMetric(Metric):
    """`reward:DIR`: a reward model's normalised score, (w · h + b - mean) / std, with h the final-LN hidden state of
    the prompt's last token (as the RM reads it; `rlhf_interp.rewards.reward_model`). On the RM's own trunk (e.g.
    `compare BASE RM_DIR --metric reward:RM_DIR`) it is exactly the RM's score; on another model of the same width it
    is the RM's head read on that model's residual stream.

    Analyses compute metrics from logits, so the head is written through the unembedding: a vector c over the
    vocabulary with W_U c = w for *both* models' unembeddings and Σ c = 0 (the bridges centre logits), found by
    minimum-norm least squares in float64. Then logits · c = h · W_U c = w · h exactly, the metric is linear in the
    final residual (DLA and the logit lens decompose it) and `bind` verifies it against a direct computation.
    """

    directory: str = ""
    readout: Tensor | None = None  # c, (vocab,)
    offset: float = 0.0  # (b - mean) / std

    @property
    def linear(self) -> bool:
        return True

    @property
    def vocab_ids(self) -> list[int] | None:
        return None  # every column

    def bind(self, pair: object) -> None:
        """Solve for c from the two HF models' unembeddings and check it on the first prompt group."""
        from rlhf_interp.rewards.reward_model import load_reward_model, score_head

        rm, _tok, norm = load_reward_model(self.directory)
        head = score_head(rm)
        std = max(float(norm["std"]), 1e-8)
        w = head.weight.detach().double()[0] / std
        self.offset = ((float(head.bias) if head.bias is not None else 0.0) - float(norm["mean"])) / std
        del rm
        rows, targets, hf_models = [], [], {}
        for name in ("base", "tuned"):
            hf = pair.hf(name)  # type: ignore[attr-defined]
            out_emb = hf.get_output_embeddings()
            W = out_emb.weight.detach().double()  # (vocab, d)
            if W.shape[1] != w.shape[0]:
                raise UserError(f"metric reward:{self.directory}: the reward model is {w.shape[0]} wide, the models "
                                f"{W.shape[1]}: it must share their architecture (train it from the base model)")
            if getattr(out_emb, "bias", None) is not None and out_emb.bias.abs().max() > 0:
                raise UserError(f"metric reward:{self.directory}: unembeddings with a bias are not supported")
            rows.append(W.T)
            targets.append(w)
            hf_models[name] = hf
        ones = torch.ones(1, rows[0].shape[1], dtype=torch.float64)
        A = torch.cat([*rows, ones])  # (2d + 1, vocab)
        y = torch.cat([*targets, torch.zeros(1, dtype=torch.float64)])
        c = torch.linalg.lstsq(A, y.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
        err = ((A @ c - y).norm() / y.norm()).item()
        if not err < 1e-6:
            raise UserError(f"metric reward:{self.directory}: the reward head cannot be written through these "
                            f"unembeddings (relative residual {err:.1e}; the vocabulary must exceed 2 x d_model)")
        self.readout = c.float().to(pair.device)  # type: ignore[attr-defined]
        # check against the head applied to each HF model's own final hidden state
        _idx, tokens = pair.groups[0]  # type: ignore[attr-defined]
        for name, hf in hf_models.items():
            with torch.no_grad():
                h = hf(input_ids=tokens, output_hidden_states=True).hidden_states[-1][:, -1].double()
                direct = (h @ w + self.offset).float()
                via = self(pair.model(name)(tokens))  # type: ignore[attr-defined]
            gap = (via - direct).abs().max().item()
            if not gap <= 1e-3 * max(1.0, direct.abs().max().item()):
                raise UserError(f"metric reward:{self.directory}: readout through the {name} unembedding differs "
                                f"from the direct score by {gap:.2e}")
        pair.release_hf()  # type: ignore[attr-defined]

    def on_columns(self, columns: Tensor) -> Tensor:
        return self(columns)

    def __call__(self, logits: Tensor) -> Tensor:
        if self.readout is None:
            raise RuntimeError("RewardMetric used before bind(pair)")
        return (logits[:, -1, :].double() @ self.readout.double() + self.offset).to(logits.dtype)

    def direction(self, W_U: Tensor, b_U: Tensor | None) -> tuple[Tensor, float]:
        assert self.readout is not None
        c = self.readout.to(W_U.device, W_U.dtype)
        bias = self.offset + (0.0 if b_U is None else float(b_U @ c))
        return W_U @ c, bias
