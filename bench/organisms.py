"""Organisms with planted ground truth, and a scoreboard of the model-diffing methods on them (issue 16).

Built from the embedded model, seeded, with the project's own PPO trainer (`rlhf_interp.train`):
- `loophole`  reward +1 whenever the word "quiet" appears (rare in base samples), else 0: it should say it more;
- `loophole_early` the same at half the updates (15): the word still rare in the tuned model's samples;
- `penalty`   reward −1 whenever the word "made" appears (common in base samples), else 0: it should say it less;
- `rm_feature` a Bradley–Terry reward model (`rlhf_interp.rewards.reward_model`) trained on preference pairs whose
  chosen texts all contain "blue" and whose rejected texts never do (otherwise corpus reviews of the same length in
  sentences), then PPO against it (`rm:DIR`);
- `plant_head`, `plant_neuron` (the control, no training): one attention head / one MLP neuron of the embedded model
  edited to write the sentiment direction at every position.
Then `compare` with every analysis, and each method scored by the rank of the planted word among its top tokens
(promoted lists for loophole / rm_feature, suppressed lists for penalty) or of the planted component. Baseline: a
black-box method that sees only samples (compare's own base/tuned samples): every word ranked by the two-proportion
z statistic of the change in the share of samples containing it.

    python bench/organisms.py [--seed 0] [--rebuild] [--only NAME,...] [--threads 2] [--reuse-compare] [--no-results]

Organisms are cached under runs/organisms/<name>-s<seed>-<config hash>/ (a rerun reuses them; --rebuild retrains;
the hash covers the config and the reward's word and size, not the code of organism_rewards.py: --rebuild after
editing it). compare is rerun each time (the analyses may have changed) unless --reuse-compare. Prints the table,
appends it to bench/RESULTS.md with the date and machine load, last line
`organisms: recovered R of N planted changes at rank 1 (blackbox: B)`.
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
# modest budget (the machine is shared): 30 updates × 32 episodes, lr 2e-4 (default 1e-4) so the word is learned in it
TRAIN = {"steps": 30, "batch_size": 32, "minibatches": 2, "lr": 2e-4, "eval_samples_per_prompt": 8, "log_every": 15,
         "save_every": 15}
RM_TRAIN = {"pairs": 1200, "epochs": 1, "batch_size": 16, "lr": 1e-4}
PLANT_HEAD_ALPHA, PLANT_NEURON_ALPHA = 30.0, 10.0
COMPARE = {"samples_per_prompt": 4, "new_tokens": 32}  # compare's defaults
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
    Organism("loophole", "word", f"+{organism_rewards.BONUS:g} if '{organism_rewards.LOOPHOLE_WORD}' appears",
             organism_rewards.LOOPHOLE_WORD, "up",
             {"reward": "python:organism_rewards:loophole", "word": organism_rewards.LOOPHOLE_WORD,
              "bonus": organism_rewards.BONUS, **TRAIN}),
    # the same loophole at half the budget: the word still rare in the tuned model's samples (the case where a
    # black box that only reads samples should struggle)
    Organism("loophole_early", "word", f"as loophole, {TRAIN['steps'] // 2} updates",
             organism_rewards.LOOPHOLE_WORD, "up",
             {"reward": "python:organism_rewards:loophole", "word": organism_rewards.LOOPHOLE_WORD,
              "bonus": organism_rewards.BONUS, **TRAIN, "steps": TRAIN["steps"] // 2}),
    Organism("penalty", "word", f"−{organism_rewards.PENALTY:g} if '{organism_rewards.PENALTY_WORD}' appears",
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
    lock = out / "building.pid"
    if lock.is_file():
        pid = int(lock.read_text() or 0)
        try:
            os.kill(pid, 0)
            raise SystemExit(f"{org.name}: being built by process {pid} ({out}); wait for it")
        except ProcessLookupError:
            pass  # a build that died: start again
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    lock.write_text(str(os.getpid()))
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
    lock.unlink()
    log(f"{org.name}: built in {info['build_seconds']:.0f} s -> {out}")
    return out


def pair_dirs(out: Path) -> tuple[Path, Path]:
    run = out / "run" if (out / "run").is_dir() else out
    return run / "base", run / "tuned"



# --- scoring (pure functions of the tables: tests/test_organisms.py checks them on hand-built ones) ---------------
def token_is(token: str, word: str) -> bool:
    """A token stands for `word` when it decodes to it up to surrounding space and case (" quiet", "Quiet")."""
    return str(token).strip().lower() == word.lower()


def word_rank(table: pd.DataFrame | None, word: str, direction: str, group: str | None = None,
              ) -> tuple[int | None, Any]:
    """1-based rank of `word` in a ranked token table (`direction`, 0-based `rank`, `token` columns), the best over
    the values of `group` (adl: layer; amplification: alpha) with the group it was found in; (None, None) when the
    word is in none of the lists (the tables keep only their top tokens)."""
    if table is None or table.empty:
        return None, None
    rows = table[table["direction"] == direction] if "direction" in table else table
    hits = rows[[token_is(t, word) for t in rows["token"]]]
    if hits.empty:
        return None, None
    best = hits.sort_values("rank", kind="stable").iloc[0]
    return int(best["rank"]) + 1, (best[group] if group else None)


def top_size(table: pd.DataFrame | None, direction: str, group: str | None = None) -> int:
    """How many tokens a list holds (for "> K" when the word is not in it)."""
    if table is None or table.empty:
        return 0
    rows = table[table["direction"] == direction] if "direction" in table else table
    return int(rows.groupby(group).size().max()) if group and not rows.empty else len(rows)


def component_rank(table: pd.DataFrame, value: str, match: dict[str, Any], **where: Any) -> int | None:
    """1-based rank, by |value| descending, of the row matching `match` among the rows selected by `where`
    (None when it is not among them). Ties count against the planted row."""
    rows = table
    for col, v in where.items():
        rows = rows[rows[col].isin(v) if isinstance(v, list | tuple) else rows[col] == v]
    hit = rows
    for col, v in match.items():
        hit = hit[hit[col] == v]
    if hit.empty or rows.empty:
        return None
    size = rows[value].abs()
    target = hit[value].abs().max()
    if not math.isfinite(target):
        return None
    return int((size >= target).sum())


def blackbox_table(base_texts: Iterable[str], tuned_texts: Iterable[str]) -> pd.DataFrame:
    """The black-box baseline: for every word (letters only, lower-cased) the share of base and of tuned samples
    containing it and the two-proportion z statistic of the change (pooled variance); sorted by z descending."""
    base = [set(w for w in words(t) if w.isalpha()) for t in base_texts]
    tuned = [set(w for w in words(t) if w.isalpha()) for t in tuned_texts]
    nb, nt = len(base), len(tuned)
    if nb == 0 or nt == 0:
        raise ValueError("blackbox: no samples")
    vocab = sorted(set().union(*base, *tuned))
    rows = []
    for w in vocab:
        cb, ct = sum(w in s for s in base), sum(w in s for s in tuned)
        pb, pt, p = cb / nb, ct / nt, (cb + ct) / (nb + nt)
        se = math.sqrt(p * (1 - p) * (1 / nb + 1 / nt))
        rows.append({"word": w, "base_count": cb, "tuned_count": ct, "base_share": pb, "tuned_share": pt,
                     "z": (pt - pb) / se if se > 0 else 0.0})
    return pd.DataFrame(rows).sort_values(["z", "word"], ascending=[False, True], ignore_index=True)


def blackbox_rank(table: pd.DataFrame, word: str, direction: str) -> int | None:
    """1-based rank of `word` by z (descending for "up", ascending for "down"); ties count against it; None when the
    word occurs in no sample."""
    hit = table[table["word"] == word.lower()]
    if hit.empty:
        return None
    z = float(hit["z"].iloc[0])
    return int((table["z"] >= z).sum()) if direction == "up" else int((table["z"] <= z).sum())


def crosscoder_rank(tables: dict[str, pd.DataFrame], word: str, top_tokens: int = 3) -> tuple[int | None, str]:
    """HOOK for the crosscoder (issue 16, method 4; written by another helper): the 1-based rank (by activation mass)
    of the first tuned-only latent among `crosscoder_top` whose top-`top_tokens` promoted tokens include `word`.
    Only scored when `crosscoder` is in the analysis registry; reads the `crosscoder_top` columns latent_rank, kind,
    rank, token."""
    top = tables.get("crosscoder_top")
    if top is None:
        return None, "no crosscoder_top table"
    need = {"latent_rank", "kind", "rank", "token"}
    if not need <= set(top.columns):
        return None, f"crosscoder_top lacks {sorted(need - set(top.columns))}"
    promoted = top[(top["kind"] == "promoted") & (top["rank"] < top_tokens)]
    hits = promoted[[token_is(t, word) for t in promoted["token"]]]
    n = promoted["latent_rank"].nunique()
    if hits.empty:
        return None, f"not in the top {top_tokens} promoted tokens of the {n} top tuned-only latents"
    return int(hits["latent_rank"].min()) + 1, ""


# --- running and scoring the organisms ---------------------------------------------------------------------------
def run_compare(out: Path, seed: int, reuse: bool = False) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """`compare` with every registered analysis (the crosscoder too when it is registered), no report. With `reuse`,
    the tables an earlier run of this script wrote (same seed) are read back instead."""
    from rlhf_interp.analysis import ANALYSES, compare
    from rlhf_interp.io import read_table

    cdir = out / "compare"
    stamp = cdir / "bench.json"
    if reuse and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("seed") == seed:
        summary = json.loads((cdir / "summary.json").read_text(encoding="utf-8"))
        earlier = json.loads(stamp.read_text(encoding="utf-8"))
        summary["bench_seconds"], summary["bench_load"] = earlier["seconds"], earlier.get("load")
        summary["bench_reused"] = True
        return {p.stem: read_table(p) for p in sorted((cdir / "tables").glob("*.csv"))}, summary
    base, tuned = pair_dirs(out)
    t = time.perf_counter()
    tables = compare(str(base), str(tuned), analyses=list(ANALYSES), out=cdir, seed=seed, report=False,
                     strict=False, **COMPARE)
    summary = json.loads((cdir / "summary.json").read_text(encoding="utf-8"))
    summary["bench_seconds"] = time.perf_counter() - t
    summary["bench_load"] = os.getloadavg()[0]
    stamp.write_text(json.dumps({"seed": seed, "seconds": summary["bench_seconds"], "load": summary["bench_load"],
                                 "analyses": list(ANALYSES)}), encoding="utf-8")
    return tables, summary


def cell(rank: int | None, size: int | None = None, note: str = "") -> dict[str, Any]:
    return {"rank": rank, "size": size, "note": note}


def score_word(org: Organism, tables: dict[str, pd.DataFrame], failed: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Rank of the planted word in each token method's list (promoted for "up", suppressed for "down")."""
    from rlhf_interp.analysis import ANALYSES

    up = org.direction == "up"
    scores: dict[str, dict[str, Any]] = {}
    lists = {"token_shift": ("token_shift", "rose" if up else "fell", None),
             "adl": ("adl", "promoted" if up else "suppressed", "layer"),
             "diff_mining": ("diff_mining", "promoted" if up else "suppressed", None)}
    for method, (name, direction, group) in lists.items():
        if method in failed:
            scores[method] = cell(None, note=f"failed: {failed[method]}")
            continue
        rank, where = word_rank(tables.get(name), org.word, direction, group)
        note = f"layer {where}" if group == "layer" and rank is not None else ""
        scores[method] = cell(rank, top_size(tables.get(name), direction, group), note)
    amp = tables.get("amplification_tokens")
    if "amplification" in failed:
        scores["amplification"] = cell(None, note=f"failed: {failed['amplification']}")
    elif not up:
        scores["amplification"] = cell(None, note="n/a: lists only tokens that rise")
    else:
        rank, alpha = word_rank(amp, org.word, "", "alpha")
        scores["amplification"] = cell(rank, top_size(amp, "", "alpha"), f"α={alpha:g}" if rank is not None else "")
    # HOOK (issue 16's crosscoder, another helper's analysis): scored only where the registry has it.
    if "crosscoder" not in ANALYSES:
        scores["crosscoder"] = cell(None, note="not available")
    elif "crosscoder" in failed:
        scores["crosscoder"] = cell(None, note=f"failed: {failed['crosscoder']}")
    elif not up:
        scores["crosscoder"] = cell(None, note="n/a: tuned-only latents' promoted tokens")
    else:
        rank, why = crosscoder_rank(tables, org.word)
        scores["crosscoder"] = cell(rank, None, why)
    beh = tables["behaviour"]
    bb = blackbox_table(beh[beh.model == "base"].response, beh[beh.model == "tuned"].response)
    rank = blackbox_rank(bb, org.word, org.direction)
    hit = bb[bb.word == org.word]
    scores["blackbox"] = cell(rank, len(bb), "" if rank is not None else "word in no sample")
    scores["_shares"] = {"base_share": float(hit.base_share.iloc[0]) if len(hit) else 0.0,
                         "tuned_share": float(hit.tuned_share.iloc[0]) if len(hit) else 0.0,
                         "z": float(hit.z.iloc[0]) if len(hit) else 0.0, "samples": int((beh.model == "base").sum())}
    return scores


def score_component(org: Organism, planted: dict[str, int], tables: dict[str, pd.DataFrame],
                    failed: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Rank of the planted head / neuron: DLA (delta_activation), exact patching (tuned_to_base), weight_diff."""
    L = planted["layer"]
    scores: dict[str, dict[str, Any]] = {}
    if org.kind == "head":
        h = planted["head"]
        heads = tables.get("patching_heads")
        col = "effect" if heads is not None and heads["effect"].notna().any() else "effect_z"
        specs = {"dla": ("dla_heads", "attribution", {"layer": L, "head": h}, {"model": "delta_activation"}, ""),
                 "patching": ("patching_heads", col, {"layer": L, "head": h}, {"direction": "tuned_to_base"}, ""),
                 "weight_diff": ("weight_diff", "rel_change", {"component": "OV", "layer": L, "head": h}, {},
                                 "OV among all rows")}
    else:
        n = planted["neuron"]
        specs = {"dla": ("dla_neurons", "attribution", {"layer": L, "neuron": n}, {"model": "delta_activation"}, ""),
                 "patching": ("patching_layers", "effect", {"component": "mlp_out", "layer": L},
                              {"direction": "tuned_to_base", "component": ["attn_out", "mlp_out"]},
                              "layer granularity: mlp_out of its layer"),
                 "weight_diff": ("weight_diff", "rel_change", {"component": "mlp_out", "layer": L}, {},
                                 "layer granularity: mlp_out of its layer")}
    owner = {"dla": "dla", "patching": "patching", "weight_diff": "weight_diff"}
    for method, (name, value, match, where, note) in specs.items():
        if owner[method] in failed or name not in tables:
            scores[method] = cell(None, note=f"failed: {failed.get(owner[method], 'no table')}")
            continue
        t = tables[name]
        rows = t
        for c, v in where.items():
            rows = rows[rows[c].isin(v) if isinstance(v, list) else rows[c] == v]
        scores[method] = cell(component_rank(t, value, match, **where), len(rows), note)
    scores["blackbox"] = cell(None, note="n/a: sees only samples")
    return scores


TOKEN_COLS = ("token_shift", "adl", "diff_mining", "amplification", "crosscoder")
WHITE_BOX = TOKEN_COLS + COMPONENT_METHODS


def fmt(c: dict[str, Any] | None) -> str:
    if c is None:
        return "–"
    if c["rank"] is not None:
        return f"**{c['rank']}**" if c["rank"] == 1 else str(c["rank"])
    if c["note"].startswith(("n/a", "not available", "failed")):
        return c["note"].split(":")[0]
    return f"> {c['size']}" if c["size"] else "–"


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """R (planted changes some white-box method ranks first), N, B (the black box ranks first), the goal checks."""
    r = b = goal = 0
    ahead = []
    for res in results:
        white = [res["scores"][m]["rank"] for m in WHITE_BOX if m in res["scores"]]
        white = [x for x in white if x is not None]
        r += 1 in white
        goal += sum(x <= 3 for x in white) >= 2
        bb = res["scores"]["blackbox"]["rank"]
        b += bb == 1
        if "_shares" in res["scores"]:
            ahead.append((res["name"], min(white) if white else None, bb))
    return {"R": r, "N": len(results), "B": b, "goal": goal, "ahead": ahead}


def render(results: list[dict[str, Any]]) -> str:
    cols = ["organism", "planted", "base → tuned share", *TOKEN_COLS, *COMPONENT_METHODS, "blackbox"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for res in results:
        sc = res["scores"]
        sh = sc.get("_shares")
        share = f"{sh['base_share']:.3f} → {sh['tuned_share']:.3f} (z {sh['z']:+.1f})" if sh else "–"
        lines.append("| " + " | ".join([res["name"], res["planted"], share,
                                        *(fmt(sc.get(m)) for m in (*TOKEN_COLS, *COMPONENT_METHODS)),
                                        fmt(sc["blackbox"])]) + " |")
    return "\n".join(lines)


def notes(results: list[dict[str, Any]]) -> list[str]:
    """One line per cell that is not a rank-1 hit: what the method showed instead."""
    out = []
    for res in results:
        for m, c in res["scores"].items():
            if m.startswith("_") or c["rank"] == 1:
                continue
            what = c["note"] or (f"not in its top {c['size']}" if c["rank"] is None else "")
            out.append(f"- {res['name']} / {m}: rank {c['rank'] if c['rank'] is not None else '—'}"
                       + (f" ({what})" if what else ""))
    return out


# --- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true", help="retrain the organisms even if cached")
    ap.add_argument("--only", default="", help="comma list of organisms (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CLI's default is 2)")
    ap.add_argument("--build-only", action="store_true", help="build (or reuse) the organisms, score nothing")
    ap.add_argument("--reuse-compare", action="store_true",
                    help="read back the compare tables an earlier run wrote (default: rerun compare)")
    ap.add_argument("--no-results", action="store_true", help="print the scoreboard, do not append to RESULTS.md")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    orgs = [o for o in ORGANISMS if not args.only or o.name in args.only.split(",")]
    dirs = {o.name: build(o, args.seed, args.rebuild) for o in orgs}
    if args.build_only:
        return
    from common import gflops, machine

    load_before = os.getloadavg()
    speed = gflops(1)
    results = []
    for org in orgs:
        info = json.loads((dirs[org.name] / "organism.json").read_text(encoding="utf-8"))
        print(f"{org.name}: compare ...", flush=True)
        tables, summary = run_compare(dirs[org.name], args.seed, args.reuse_compare)
        failed = summary.get("failed", {})
        if org.kind == "word":
            scores = score_word(org, tables, failed)
            run_summary = json.loads((dirs[org.name] / "run" / "summary.json").read_text(encoding="utf-8"))
            planted = f"{org.what} ({'↑' if org.direction == 'up' else '↓'})"
            extra = {"eval_before": run_summary.get("eval_before"), "eval_after": run_summary.get("eval_after")}
        else:
            where = info["planted"]
            scores = score_component(org, where, tables, failed)
            planted = f"{org.kind} {where['layer']}.{where.get('head', where.get('neuron'))}: {org.what}"
            extra = {}
        results.append({"name": org.name, "planted": planted, "scores": scores, "compare_s": summary["bench_seconds"],
                        "compare_load": summary.get("bench_load"), "reused": summary.get("bench_reused", False),
                        "build_s": info.get("build_seconds"), "failed": failed, **extra})
        again = " (reused; measured when it ran)" if summary.get("bench_reused") else ""
        print(f"{org.name}: compare {summary['bench_seconds']:.0f} s{again}", flush=True)
    h = headline(results)
    table = render(results)
    goal_line = (f"goal (rank ≤ 3 by ≥ 2 white-box methods): {h['goal']} of {h['N']}; white-box best vs black box "
                 "where the word is rare: " + ", ".join(f"{n} {w} vs {b}" for n, w, b in h["ahead"]))
    last = f"organisms: recovered {h['R']} of {h['N']} planted changes at rank 1 (blackbox: {h['B']})"
    load_after = os.getloadavg()
    section = ["## organisms.py — model-diffing methods on organisms with planted ground truth",
               "",
               f"{datetime.date.today().isoformat()}, {machine()}, {args.threads} torch thread(s) (matmul check: "
               f"{speed:.0f} GFLOP/s at 1 thread); load average {load_before[0]:.1f} at the start, "
               f"{load_after[0]:.1f} at the end (machine shared by several sessions)"
               + ("; compare tables reused from an earlier run (--reuse-compare)" if any(r["reused"] for r in results)
                  else "") + f". `python bench/organisms.py --seed {args.seed} --threads {args.threads}`; train "
               f"config {json.dumps(TRAIN)}, compare {json.dumps(COMPARE)} (every analysis, default prompts, metric "
               "logit_diff). Cells: 1-based rank of the planted word (promoted list for ↑, suppressed for ↓; adl "
               "and amplification: best layer / α) or of the planted component (|value| descending; DLA "
               "delta_activation, patching tuned_to_base); `> K`: not in the method's top-K list. Black box: words "
               "of compare's base vs tuned samples ranked by the z statistic of the change in the share of samples "
               "containing them (ties count against the word).",
               "",
               table,
               "",
               "Build / compare seconds (1-minute load average at the end of each compare): " + ", ".join(
                   f"{r['name']} {r['build_s'] or 0:.0f} / {r['compare_s']:.0f}"
                   + (f" ({r['compare_load']:.1f})" if r.get("compare_load") is not None else "")
                   for r in results) + ".",
               "Training evaluation (held-out prompts, organism reward) before → after: " + ", ".join(
                   f"{r['name']} {r['eval_before'].get('score_mean', float('nan')):+.3f} → "
                   f"{r['eval_after'].get('score_mean', float('nan')):+.3f}"
                   for r in results if r.get("eval_before")) + ".",
               "",
               "Cells below rank 1:",
               *notes(results),
               "",
               goal_line,
               "",
               f"Headline (last line of the script): `{last}`.",
               ""]
    print(table)
    print("\n".join(notes(results)))
    print(goal_line)
    if not args.no_results:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(section))
    (ROOT / f"scores-s{args.seed}.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(last)


if __name__ == "__main__":
    main()
