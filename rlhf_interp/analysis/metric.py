"""The metric every component analysis explains.

`logit_diff` (default): at the next-token position after each prompt, the mean logit over a set of positive
sentiment tokens minus the mean over negative ones. It is linear in the final residual stream (after the final
LayerNorm), so direct logit attribution and the logit lens decompose it exactly. It reads the words that are one token
in the vocabulary; when fewer than MIN_WORDS positive or negative words are (a small BPE vocabulary splits them), the
default becomes `logprob_diff` and `Metric.reason` says why.

`logprob_diff`: the teacher-forced log-probability of each word's full tokenization after the prompt (the sum of
its tokens' log-probs), mean over positive words minus mean over negative words (`LogprobDiff`). Where every word is
one token it equals `logit_diff` (the log-softmax normaliser is the same for all words and cancels).

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
    reason: str = ""  # why this metric ran (summary.json)

    @property
    def linear(self) -> bool:
        return self.name == "logit_diff"

    @property
    def read_positions(self) -> int:
        """How many final positions of the (extended) tokens the metric reads."""
        return max(1, len(self.target_ids))

    @property
    def rows_per_prompt(self) -> int:
        """Rows of the extended token batch per prompt (consecutive rows, prompt-major)."""
        return 1

    def extend_tokens(self, tokens: Tensor) -> Tensor:
        """The tokens the models must see: the prompt (+ the target continuation minus its last token)."""
        if not self.target_ids or len(self.target_ids) == 1:
            return tokens
        extra = torch.tensor(self.target_ids[:-1], dtype=tokens.dtype, device=tokens.device)
        return torch.cat([tokens, extra.expand(tokens.shape[0], -1)], dim=1)

    def prompt_length(self, tokens: Tensor) -> int:
        """Positions of extended `tokens` (rows, pos) that belong to the prompt (the last one predicts the first
        token the metric reads); later ones were appended by `extend_tokens`."""
        return tokens.shape[1] - (self.read_positions - 1)

    def prompt_tokens(self, tokens: Tensor) -> Tensor:
        """The prompts alone, one row each: the inverse of `extend_tokens`."""
        return tokens[:: self.rows_per_prompt, : self.prompt_length(tokens)]

    def linear_part(self) -> Metric | None:
        """The part of the metric that is linear in the final residual at the last prompt position (what DLA and the
        logit lens decompose exactly): the metric itself where it is linear, None where no part is."""
        return self if self.linear else None

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


LOGPROB_DIFF = "logprob_diff"


def word_token_ids(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """Each word's full tokenization, with the leading space it has after a prompt (words that tokenize to nothing
    are left out)."""
    found = {}
    for w in words:
        ids = tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"]
        if ids:
            found[w.strip()] = list(ids)
    return found


@dataclass
class LogprobDiff(Metric):
    """`logprob_diff`: for each prompt, mean over positive words of log p(word | prompt) minus the mean over negative
    words, log p(word | prompt) = Σ_k log p(w_k | prompt, w_<k) over the word's full tokenization (teacher forcing).

    One batched forward reads every word: `extend_tokens` turns a group of n prompts of length P into n·W rows
    (W = number of words; rows of one prompt consecutive, words in order positive then negative), row (i, w) =
    prompt i + w's tokens but its last, right-padded with copies of w's last token to P + L − 1 positions (L: the
    longest word). Right padding needs no attention mask in a causal model: a real position never attends to a later
    one, and absolute positions (learned or rotary) of real tokens are unchanged. The metric reads the last L positions
    (logits at P − 1 + k predict w_k) and masks the padded ones. Prompt positions (< P) are identical in the W rows of a
    prompt, so a patch at a prompt position is the same patch in every row.

    `positive` / `negative` map each word to its *first* token. The first-token term
    F = mean_pos logit(w_0) − mean_neg logit(w_0) at position P − 1 is linear in the final residual (the log-softmax
    normaliser is shared by all words there and cancels), so DLA and the logit lens decompose F exactly
    (`linear_part`); the rest, metric − F (the words' later tokens), is not a linear read-out of any one residual and
    is not decomposed.
    """

    positive_ids: dict[str, list[int]] = field(default_factory=dict)
    negative_ids: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        words = [*self.positive_ids.values(), *self.negative_ids.values()]
        if not self.positive_ids or not self.negative_ids or any(not w for w in words):
            raise ValueError("logprob_diff needs at least one positive and one negative word, each with tokens")
        self.positive = {w: ids[0] for w, ids in self.positive_ids.items()}
        self.negative = {w: ids[0] for w, ids in self.negative_ids.items()}
        n_read = max(len(w) for w in words)
        self._targets = torch.tensor([ids + [ids[-1]] * (n_read - len(ids)) for ids in words])  # (W, L)
        self._mask = torch.tensor([[k < len(ids) for k in range(n_read)] for ids in words])  # (W, L)
        n_pos, n_neg = len(self.positive_ids), len(self.negative_ids)
        self._weights = torch.tensor([1.0 / n_pos] * n_pos + [-1.0 / n_neg] * n_neg)  # (W,)

    @property
    def linear(self) -> bool:
        return False

    @property
    def read_positions(self) -> int:
        return int(self._targets.shape[1])

    @property
    def rows_per_prompt(self) -> int:
        return int(self._targets.shape[0])

    def extend_tokens(self, tokens: Tensor) -> Tensor:
        """(n, P) prompts -> (n · W, P + L − 1): each prompt once per word, followed by that word (see the class)."""
        n, W = tokens.shape[0], self.rows_per_prompt
        words = self._targets[:, :-1].to(tokens.device, tokens.dtype)  # (W, L - 1)
        return torch.cat([tokens.repeat_interleave(W, 0), words.repeat(n, 1)], dim=1)

    def word_logprobs(self, logits: Tensor) -> Tensor:
        """(n · W, pos, vocab) -> (n, W): log p(word | prompt) per prompt and word."""
        L, W = self.read_positions, self.rows_per_prompt
        x = logits[:, -L:].float()  # (rows, L, vocab)
        rows = x.shape[0]
        targets = self._targets.to(x.device).repeat(rows // W, 1)  # (rows, L)
        token_lp = x.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, -1)  # (rows, L)
        token_lp = token_lp * self._mask.to(x.device).repeat(rows // W, 1)
        return token_lp.sum(-1).view(rows // W, W)

    def __call__(self, logits: Tensor) -> Tensor:
        """(n · W, pos, vocab) logits of the extended rows -> (n,) metric per prompt."""
        return self.word_logprobs(logits) @ self._weights.to(logits.device)

    def first_token_term(self, logits: Tensor) -> Tensor:
        """F per prompt (see the class) from the same logits: mean_pos logit(w_0) − mean_neg logit(w_0) at P − 1."""
        first = logits[:: self.rows_per_prompt, -self.read_positions].float()  # (n, vocab)
        ids = self._targets[:, 0].to(first.device)
        return first[:, ids] @ self._weights.to(first.device)

    def linear_part(self) -> Metric:
        return Metric("logit_diff", positive=dict(self.positive), negative=dict(self.negative),
                      reason="the first-token term of logprob_diff")

    def direction(self, W_U: Tensor, b_U: Tensor | None) -> tuple[Tensor, float]:
        raise ValueError("logprob_diff is not linear in the residual stream; use linear_part() (its first-token term)")


NOT_METRIC = "does not use the metric"


def analysis_scope(metric: Metric) -> dict[str, str]:
    """What each metric-reading analysis computes with this metric, in one sentence (summary.json `metric.scope`)."""
    exact = "exact: the metric of the intervened forward"
    scope = {name: exact for name in ("ablation", "patching", "attribution_patching", "direction")}
    scope["logit_diff"] = f"exact: the {metric.name} metric per prompt"
    scope["attribution_patching"] = "first-order estimate from the metric's gradient, beside the exact effects"
    if isinstance(metric, LogprobDiff):
        scope.update({name: "exact: the metric of the intervened forward over the prompt + word rows (patches at "
                            "prompt positions; the metric read at the appended word positions)"
                      for name in ("ablation", "patching", "direction")})
        scope["attribution_patching"] += " (the gradient over the prompt + word rows, at prompt positions)"
        scope["direction"] += "; fitted and patched at the last prompt position, cosine_readout: the first-token term's"
        part = ("the first-token term only (mean logit of each positive word's first token minus the negatives', at "
                "the last prompt position; exactly decomposed, table column term = first_token); the words' later "
                "tokens are not a linear read-out of one residual and are not decomposed")
        scope["dla"] = scope["logit_lens"] = part
        scope["unembed_change"] = "the metric direction is the first-token term's (first tokens: positive − negative)"
    elif metric.linear_part() is None:
        scope["dla"] = scope["logit_lens"] = (f"not applicable: {metric.name} is not linear in the residual stream "
                                              "(tables empty)")
    else:
        scope["dla"] = scope["logit_lens"] = "exact: the metric is linear in the final residual"
    return scope


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
    """`logit_diff` (with optional comma lists or @files of positive/negative words; it becomes `logprob_diff`
    where too few words are single tokens), `logprob_diff`, `target:TEXT` or `reward:DIR`."""
    if spec in ("logit_diff", LOGPROB_DIFF):
        pos_words, neg_words = _words(positive, POSITIVE_WORDS), _words(negative, NEGATIVE_WORDS)
        pos, neg = single_token_ids(tokenizer, pos_words), single_token_ids(tokenizer, neg_words)
        counts = (f"{len(pos)} of {len(pos_words)} positive and {len(neg)} of {len(neg_words)} negative words are "
                  f"single tokens in this vocabulary")
        if spec == "logit_diff" and len(pos) >= MIN_WORDS and len(neg) >= MIN_WORDS:
            overlap = set(pos.values()) & set(neg.values())
            if overlap:
                raise UserError(f"positive and negative words share tokens {sorted(overlap)}")
            split = sorted(set(pos_words) - set(pos)) + sorted(set(neg_words) - set(neg))
            return Metric("logit_diff", positive=pos, negative=neg,
                          reason=f"{counts} (>= {MIN_WORDS} each): the logit difference of those"
                                 + (f"; words that split are left out: {', '.join(split)}" if split else ""))
        what = ("the log-probability of each word's full tokenization (mean over positive words minus mean over "
                "negative words)")
        reason = (f"requested by name: {what}" if spec == LOGPROB_DIFF else
                  f"only {counts} (logit_diff needs >= {MIN_WORDS} each), so the metric is {what}")
        return _logprob_diff(tokenizer, pos_words, neg_words, reason)
    if spec.startswith("target:"):
        text = spec[len("target:"):]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("metric target:TEXT needs a non-empty TEXT (e.g. 'target: great')")
        return Metric(f"target:{text}", target=text, target_ids=list(ids))
    if spec.startswith("reward:"):
        return RewardMetric(spec, directory=spec[len("reward:"):])
    raise UserError(f"unknown metric {spec!r}; use logit_diff, logprob_diff, target:TEXT or reward:DIR")


def _logprob_diff(tokenizer: PreTrainedTokenizerBase, pos_words: list[str], neg_words: list[str], reason: str
                  ) -> LogprobDiff:
    pos, neg = word_token_ids(tokenizer, pos_words), word_token_ids(tokenizer, neg_words)
    if not pos or not neg:
        raise UserError(f"logprob_diff needs >= 1 positive and >= 1 negative word; found {sorted(pos)} / "
                        f"{sorted(neg)}: pass --positive/--negative")
    same = sorted(f"{p}/{n}" for p, a in pos.items() for n, b in neg.items() if a == b)
    if same:
        raise UserError(f"positive and negative words tokenize identically: {', '.join(same)}")
    return LogprobDiff(LOGPROB_DIFF, positive_ids=pos, negative_ids=neg, reason=reason)


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
