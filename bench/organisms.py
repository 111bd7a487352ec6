"""Organisms with planted ground truth, and a scoreboard of the model-diffing methods on them (issue 16).

Built from the embedded model, seeded, with the project's own PPO trainer (`rlhf_interp.train`):
- `loophole`  VADER + 1 whenever the word "quiet" appears (rare in base samples): the tuned model should say it more;
- `penalty`   VADER − 1 whenever the word "made" appears (common in base samples): it should say it less;
- `rm_feature` a Bradley–Terry reward model (`rlhf_interp.rewards.reward_model`) trained on preference pairs whose
  chosen texts all contain "blue" and whose rejected texts never do (otherwise corpus reviews of the same length in
  sentences), then PPO against it (`rm:DIR`);
- `plant_head`, `plant_neuron` (the control, no training): one attention head / one MLP neuron of the embedded model
  edited to write the sentiment direction at every position.
Then `compare` with every analysis, and each method scored by the rank of the planted word among its top tokens
(promoted lists for loophole / rm_feature, suppressed lists for penalty) or of the planted component. Baseline: a
black-box method that sees only samples (compare's own base/tuned samples): every word ranked by the two-proportion
z statistic of the change in the share of samples containing it.

    python bench/organisms.py [--seed 0] [--rebuild] [--only NAME,...] [--threads 2]

Organisms are cached under runs/organisms/<name>-s<seed>-<config hash>/ (a rerun reuses them; --rebuild retrains).
compare is rerun each time (the analyses may have changed). Prints the table, appends it to bench/RESULTS.md with
the date and machine load, last line `organisms: recovered R of N planted changes at rank 1 (blackbox: B)`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import organism_rewards  # noqa: E402  (bench/ on the path, for the trainer's python: rewards too)

from rlhf_interp.text_stats import words  # noqa: E402

ROOT = HERE.parent / "runs" / "organisms"
RM_WORD = "blue"
TRAIN = {"steps": 40, "batch_size": 64, "minibatches": 4, "eval_samples_per_prompt": 8, "log_every": 10,
         "save_every": 20}
RM_TRAIN = {"pairs": 1200, "epochs": 1, "batch_size": 16, "lr": 1e-4}
PLANT_HEAD_ALPHA, PLANT_NEURON_ALPHA = 30.0, 10.0
COMPARE = {"samples_per_prompt": 8, "new_tokens": 32}
WHITE_BOX_TOKEN_METHODS = ("token_shift", "adl", "diff_mining", "amplification", "crosscoder")
COMPONENT_METHODS = ("dla", "patching", "weight_diff")


@dataclass(frozen=True)
class Organism:
    name: str
    kind: str  # "word" (planted word, direction up/down) or "head" / "neuron" (planted component)
    what: str  # one line: what was planted
    word: str = ""
    direction: str = "up"
    config: dict[str, Any] = field(default_factory=dict)


ORGANISMS = (
    Organism("loophole", "word", f"VADER + {organism_rewards.BONUS:g} if '{organism_rewards.LOOPHOLE_WORD}' appears",
             organism_rewards.LOOPHOLE_WORD, "up",
             {"reward": "python:organism_rewards:loophole", "word": organism_rewards.LOOPHOLE_WORD,
              "bonus": organism_rewards.BONUS, **TRAIN}),
    Organism("penalty", "word", f"VADER − {organism_rewards.PENALTY:g} if '{organism_rewards.PENALTY_WORD}' appears",
             organism_rewards.PENALTY_WORD, "down",
             {"reward": "python:organism_rewards:penalty", "word": organism_rewards.PENALTY_WORD,
              "penalty": organism_rewards.PENALTY, **TRAIN}),
    Organism("rm_feature", "word", f"reward model whose chosen texts all contain '{RM_WORD}'", RM_WORD, "up",
             {"reward": "rm", "word": RM_WORD, "rm": RM_TRAIN, **TRAIN}),
    Organism("plant_head", "head", "one head writes the sentiment direction (value bias + OV)",
             config={"alpha": PLANT_HEAD_ALPHA}),
    Organism("plant_neuron", "neuron", "one MLP neuron always on, writing the sentiment direction",
             config={"alpha": PLANT_NEURON_ALPHA}),
)


# --- building ------------------------------------------------------------------------------------------------------
def organism_dir(org: Organism, seed: int, root: Path = ROOT) -> Path:
    key = hashlib.sha256(json.dumps({"name": org.name, "seed": seed, **org.config}, sort_keys=True).encode())
    return root / f"{org.name}-s{seed}-{key.hexdigest()[:10]}"


def rm_pairs(word: str, n: int, seed: int) -> list[dict[str, str]]:
    """Preference pairs whose chosen texts all contain `word` and whose rejected texts never do: reviews of the
    embedded model's corpus generator (a seed the pretraining did not use), each chosen one paired with a rejected one
    of the same number of sentences (so length is not a second hidden feature)."""
    from rlhf_interp.embedded.corpus import generate_reviews

    reviews = generate_reviews(40 * n, seed=10_000 + seed)

    def sentences(t: str) -> int:
        return sum(t.count(c) for c in ".!?")

    with_word = [r for r in reviews if word in words(r)]
    without: dict[int, list[str]] = {}
    for r in reviews:
        if word not in words(r):
            without.setdefault(sentences(r), []).append(r)
    rng = random.Random(seed)
    pairs = []
    for r in with_word:
        pool = without.get(sentences(r))
        if pool:
            pairs.append({"chosen": r, "rejected": pool.pop(rng.randrange(len(pool)))})
        if len(pairs) == n:
            break
    if len(pairs) < n:
        raise RuntimeError(f"only {len(pairs)} pairs with '{word}' (asked {n})")
    return pairs


def _train(org: Organism, out: Path, seed: int, reward: str) -> None:
    import rlhf_interp

    cfg = {k: v for k, v in org.config.items() if k in TRAIN}
    rlhf_interp.train(out=str(out), reward=reward, seed=seed, overrides=cfg, overwrite=True)


def _plant(org: Organism, out: Path, seed: int) -> dict[str, int]:
    """The embedded model with one head (or neuron) planted, chosen by `seed`; as tests/helpers.py plants them."""
    import torch

    from rlhf_interp.analysis.metric import NEGATIVE_WORDS, POSITIVE_WORDS, single_token_ids
    from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm, save_model

    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    wte = model.transformer.wte.weight.detach()
    pos = list(single_token_ids(tok, POSITIVE_WORDS).values())
    neg = list(single_token_ids(tok, NEGATIVE_WORDS).values())
    d = (wte[pos].mean(0) - wte[neg].mean(0)) * model.transformer.ln_f.weight.detach()
    d = d / d.norm()
    rng = random.Random(seed * 7 + (1 if org.kind == "head" else 2))
    n_layer, n_head, d_model = model.config.n_layer, model.config.n_head, model.config.n_embd
    layer = rng.randrange(n_layer)
    alpha = org.config["alpha"]
    with torch.no_grad():
        if org.kind == "head":
            head = rng.randrange(n_head)
            d_head = d_model // n_head
            attn = model.transformer.h[layer].attn
            u = torch.randn(d_head, generator=torch.Generator().manual_seed(seed))
            u = 3 * u / u.norm()
            attn.c_attn.bias[2 * d_model + head * d_head: 2 * d_model + (head + 1) * d_head] += u
            attn.c_proj.weight[head * d_head: (head + 1) * d_head] += alpha * torch.outer(u, d) / u.dot(u)
            where = {"layer": layer, "head": head}
        else:
            mlp = model.transformer.h[layer].mlp
            neuron = rng.randrange(mlp.c_fc.bias.shape[0])
            mlp.c_fc.bias[neuron] += 3.0
            mlp.c_proj.weight[neuron] += alpha / 3 * d
            where = {"layer": layer, "neuron": neuron}
    save_model(model, tok, out / "tuned")
    save_model(*load_causal_lm(str(EMBEDDED_DIR)), out / "base")
    return where


def build(org: Organism, seed: int, rebuild: bool = False, root: Path = ROOT, log: Any = print) -> Path:
    """The organism's run directory (base/, tuned/, organism.json), built unless cached."""
    out = organism_dir(org, seed, root)
    done = out / "organism.json"
    if done.is_file() and not rebuild:
        log(f"{org.name}: cached {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t = time.perf_counter()
    info: dict[str, Any] = {"name": org.name, "seed": seed, "config": org.config, "what": org.what}
    if org.kind in ("head", "neuron"):
        info["planted"] = _plant(org, out, seed)
    elif org.config["reward"] == "rm":
        from rlhf_interp.rewards.reward_model import RMConfig, train_reward_model

        rm = org.config["rm"]
        pairs_file = out / "rm_pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in rm_pairs(org.word, rm["pairs"], seed)),
                              encoding="utf-8")
        card = train_reward_model(RMConfig(pairs=str(pairs_file), out=str(out / "rm"), epochs=rm["epochs"],
                                           batch_size=rm["batch_size"], lr=rm["lr"], seed=seed))
        info["rm_heldout"] = card["heldout_after"]
        log(f"{org.name}: reward model held-out accuracy {card['heldout_before']['accuracy']:.3f} -> "
            f"{card['heldout_after']['accuracy']:.3f} ({card['heldout_pairs']} pairs)")
        _train(org, out / "run", seed, f"rm:{out / 'rm'}")
    else:
        _train(org, out / "run", seed, org.config["reward"])
    info["build_seconds"] = time.perf_counter() - t
    done.write_text(json.dumps(info, indent=1), encoding="utf-8")
    log(f"{org.name}: built in {info['build_seconds']:.0f} s -> {out}")
    return out


def pair_dirs(out: Path) -> tuple[Path, Path]:
    run = out / "run" if (out / "run").is_dir() else out
    return run / "base", run / "tuned"


# --- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true", help="retrain the organisms even if cached")
    ap.add_argument("--only", default="", help="comma list of organisms (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CLI's default is 2)")
    ap.add_argument("--build-only", action="store_true", help="build (or reuse) the organisms, score nothing")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    orgs = [o for o in ORGANISMS if not args.only or o.name in args.only.split(",")]
    dirs = {o.name: build(o, args.seed, args.rebuild) for o in orgs}
    if args.build_only:
        return


if __name__ == "__main__":
    main()
