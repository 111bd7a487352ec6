"""Rebuild the embedded default model from scratch: corpus -> byte-level BPE tokenizer -> tiny GPT-2 -> model card.

`rlhf-interp pretrain --out DIR` calls `pretrain(PretrainConfig(out=DIR))`. Everything is seeded; the committed
checkpoint in `rlhf_interp/embedded/model/` was produced by the default config.
"""

from __future__ import annotations

import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_interp.embedded.corpus import generate_reviews
from rlhf_interp.io import atomic_dir
from rlhf_interp.progress import progress_bar

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class PretrainConfig:
    """Hyperparameters of the embedded model (the defaults built the committed checkpoint)."""

    out: Path
    n_reviews: int = 60_000  # size of the procedural corpus
    vocab_size: int = 1024  # BPE vocabulary, special tokens included
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128  # context length; training blocks are this long
    steps: int = 480  # optimizer steps
    batch_size: int = 32  # blocks of n_positions tokens per step
    lr: float = 3e-3  # peak AdamW learning rate (linear warm-up, cosine decay to 10%)
    warmup: int = 60
    weight_decay: float = 0.05
    seed: int = 0
    eval_samples_per_prompt: int = 4  # for the model card's VADER / distinct-2 numbers
    eval_new_tokens: int = 32


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with distinct BOS, EOS and PAD tokens (ids 0, 1, 2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=128
    )


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """All reviews as one stream `BOS review EOS BOS review EOS ...` (1-D long tensor)."""
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(cfg: PretrainConfig) -> dict:
    """Build corpus, tokenizer and model; train; evaluate; save the HF directory with a model card. Returns stats."""
    t0 = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    texts = generate_reviews(cfg.n_reviews, seed=cfg.seed)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    stream = token_stream(texts, tokenizer)
    n_blocks = len(stream) // cfg.n_positions
    blocks = stream[: n_blocks * cfg.n_positions].view(n_blocks, cfg.n_positions)  # (blocks, pos)
    model = build_model(cfg, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses: list[float] = []
    with progress_bar() as bar:
        task = bar.add_task("pretrain", total=cfg.steps, info="")
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = blocks[torch.randint(0, n_blocks, (cfg.batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    train_seconds = time.perf_counter() - t0
    final_loss = sum(losses[-50:]) / len(losses[-50:])

    # the evaluation the model card reports: sampled continuations of the default prompts
    from rlhf_interp.embedded.evaluate import evaluate_base

    evaluation = evaluate_base(model, tokenizer, cfg.eval_samples_per_prompt, cfg.eval_new_tokens, seed=cfg.seed)
    stats = {
        "corpus_reviews": cfg.n_reviews,
        "corpus_tokens": len(stream),
        "corpus_distinct_words": len({w for t in texts for w in t.lower().split()}),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(final_loss, 4),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
        **evaluation,
    }
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        top_k=0,
        max_new_tokens=32,
    )
    with atomic_dir(Path(cfg.out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(cfg, stats), encoding="utf-8")
    return stats


def model_card(cfg: PretrainConfig, stats: dict) -> str:
    samples = "\n".join(f"- **{s['prompt']}**{s['response']}  (VADER {s['score']:+.2f})" for s in stats["examples"])
    hp = "\n".join(f"| `{k}` | {v} |" for k, v in asdict(cfg).items() if k != "out")
    return f"""# Embedded default model of rlhf-interp

A tiny GPT-2 (`GPT2LMHeadModel`) pretrained from scratch, offline, on a seeded procedural corpus of short movie and
product reviews (`rlhf_interp/embedded/corpus.py`). It is the organism that `rlhf-interp train` and
`rlhf-interp compare` use when no model is named. Rebuild it with `rlhf-interp pretrain --out DIR`.

- Corpus: {stats['corpus_reviews']:,} reviews, {stats['corpus_tokens']:,} tokens, {stats['corpus_distinct_words']}
  distinct words (positive, negative, mixed and neutral sentences with negations and intensifiers).
- Tokenizer: byte-level BPE, {stats['vocab_size']} tokens; BOS `<|bos|>`, EOS `<|eos|>`, PAD `<|pad|>` are distinct.
  Prompts are encoded as `<|bos|>` + text; a review ends with `<|eos|>`.
- Model: {cfg.n_layer} layers, d_model {cfg.n_embd}, {cfg.n_head} heads, context {cfg.n_positions},
  {stats['parameters']:,} parameters, dropout 0.
- Training: {cfg.steps} steps of {cfg.batch_size} × {cfg.n_positions} tokens, AdamW; final training loss
  **{stats['final_loss']:.3f}** (mean of the last 50 steps); **{stats['train_seconds']:.0f} s** on
  {stats['threads']} CPU threads ({stats['machine']}).

## Room for RLHF (measured)
{stats['eval_prompts']} default prompts × {cfg.eval_samples_per_prompt} samples, {cfg.eval_new_tokens} new tokens,
temperature 1, no top-k/top-p, seed {cfg.seed}:

| measure | value |
|---|---|
| mean VADER compound | **{stats['vader_mean']:+.3f}** (std {stats['vader_std']:.3f}) |
| fraction positive / negative (> 0.05 / < -0.05) | {stats['vader_pos_frac']:.2f} / {stats['vader_neg_frac']:.2f} |
| distinct-2 (pooled, word level) | **{stats['distinct_2']:.3f}** |
| repetition rate (3-grams) | {stats['repetition_3']:.3f} |
| EOS rate | {stats['eos_rate']:.2f} |

## Sample generations
{samples}

## Hyperparameters
| key | value |
|---|---|
{hp}
"""
