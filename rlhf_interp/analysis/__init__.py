"""`compare`: everything `rlhf-interp compare BASE TUNED` computes, as tidy pandas DataFrames.

Each analysis is one module with one function of the loaded pair; adding one is a module plus one line in ANALYSES.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_interp.errors import UserError

# name -> (function(pair, ctx) -> {table name: DataFrame}); ordered: later ones may read earlier tables
ANALYSES: dict[str, Callable[[Any, dict[str, Any]], dict[str, pd.DataFrame]]] = {}
# opt-in analyses run only when named (`--analyses all,crosscoder`), never as part of 'all'
OPT_IN: set[str] = set()


def register(name: str, opt_in: bool = False) -> Callable:
    def deco(fn: Callable) -> Callable:
        ANALYSES[name] = fn
        if opt_in:
            OPT_IN.add(name)
        return fn

    return deco


@register("behaviour")
def _behaviour(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.behaviour import behaviour

    return behaviour(pair, ctx["reward"], ctx["samples_per_prompt"], ctx["new_tokens"], ctx["seed"])


@register("logit_diff")
def _logit_diff(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.logits import logit_diff, token_shift

    return {"logit_diff": logit_diff(pair, ctx["seed"]), "token_shift": token_shift(pair)}


@register("logit_lens")
def _logit_lens(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.lens import logit_lens

    return {"logit_lens": logit_lens(pair)}


@register("dla")
def _dla(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.dla import dla_tables

    return dla_tables(pair)


@register("ablation")
def _ablation(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.ablation import ablation

    return {"ablation": ablation(pair, ctx["seed"])}


@register("patching")
def _patching(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.patching import patching_head_pos, patching_heads, patching_layers

    seed = ctx["seed"]
    heads = patching_heads(pair, seed=seed)
    return {"patching_layers": patching_layers(pair, seed=seed), "patching_heads": heads,
            "patching_head_pos": patching_head_pos(pair, heads, seed=seed)}


@register("attribution_patching")
def _attribution(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.attribution import attribution_patching, join_exact

    tables = ctx["tables"]
    return {"attribution_patching": join_exact(attribution_patching(pair), tables.get("patching_heads"),
                                               tables.get("patching_layers"))}


@register("attention_diff")
def _attention(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.attention import attention_diff, attention_patterns

    diff = attention_diff(pair)
    return {"attention_diff": diff, "attention_patterns": attention_patterns(pair, diff)}


@register("weight_diff")
def _weights(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.weights import weight_diff

    return {"weight_diff": weight_diff(pair)}


@register("unembed_change")
def _unembed_change(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.unembed import unembed_change

    return {"unembed_change": unembed_change(pair)}


@register("direction")
def _direction(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.direction import direction

    return {"direction": direction(pair, ctx["seed"])}


@register("adl")
def _adl(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.adl import adl

    return adl(pair, ctx)


@register("amplification")
def _amplification(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.amplification import amplification

    return amplification(pair, ctx["reward"], ctx["samples_per_prompt"], ctx["new_tokens"], ctx["seed"])


@register("diff_mining")
def _diff_mining(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.diff_mining import diff_mining

    return {"diff_mining": diff_mining(pair, ctx)}


@register("crosscoder", opt_in=True)
def _crosscoder(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    from rlhf_interp.analysis.crosscoder import crosscoder

    return crosscoder(pair, ctx)


def parse_analyses(spec: str | list[str] | None) -> list[str]:
    if spec is None or spec == "all" or spec == ["all"]:
        return [n for n in ANALYSES if n not in OPT_IN]
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if "all" in names:  # 'all,crosscoder': every default analysis plus the opt-in ones named
        names = [n for n in ANALYSES if n not in OPT_IN] + [n for n in names if n != "all"]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise UserError(f"unknown analysis {', '.join(unknown)}; choose from {', '.join(ANALYSES)} or all")
    return [n for n in ANALYSES if n in names]  # registry order


def open_pair(base: str, tuned: str | None = None, prompts: str | Path | list[str] | None = None,
              metric: str = "logit_diff", positive: str | None = None, negative: str | None = None,
              device: str = "cpu") -> Any:
    """The loaded pair `compare` analyses (see `rlhf_interp.load_pair`)."""
    from rlhf_interp.analysis.pair import load_pair, resolve_pair
    from rlhf_interp.prompts import default_prompts, load_prompts

    base_src, tuned_src = resolve_pair(base, tuned)
    if prompts is None:
        from rlhf_interp.models import load_tokenizer

        prompt_list = default_prompts(load_tokenizer(base_src))
    elif isinstance(prompts, list):
        prompt_list = prompts
    else:
        prompt_list = load_prompts(prompts)
    return load_pair(base_src, tuned_src, prompt_list, metric, positive, negative, device=device)


def run_analysis(name: str, pair: Any, ctx: dict[str, Any], strict: bool = True,
                 fn: Callable[[Any, dict[str, Any]], dict[str, pd.DataFrame]] | None = None) -> str | None:
    """Run one registered analysis (or `fn`), adding its tables to ctx["tables"]. With strict=False an unexpected
    exception (not a `UserError`) is returned as a one-line message instead of raised, so the other analyses still
    run."""
    try:
        ctx["tables"].update((fn or ANALYSES[name])(pair, ctx))
    except UserError:
        raise
    except Exception as e:
        if strict:
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        return f"{type(e).__name__}: {e}{loc}"
    return None


def _check_inputs(base: str, tuned: str | None, out: str | Path | None, diff_corpus: str | Path | None,
                  trajectory: bool, crosscoder: str | None) -> None:
    """compare's checks that need no model: each raises UserError with one line."""
    if crosscoder is not None:
        from rlhf_interp.analysis.crosscoder import parse_config

        parse_config(crosscoder)
    if diff_corpus is not None and not Path(diff_corpus).is_file():
        raise UserError(f"--diff-corpus: file not found: {diff_corpus}")
    if trajectory:
        from rlhf_interp.analysis.trajectory import run_points

        if tuned is not None:
            raise UserError("--trajectory reads a run directory's snapshots: pass the run directory alone "
                            "(compare RUN --trajectory), not BASE TUNED")
        run_points(base)  # a run without snapshots says how to make them
    if out is not None:
        from rlhf_interp.io import ensure_writable_dir

        ensure_writable_dir(out)


def compare(
    base: str,
    tuned: str | None = None,
    prompts: str | Path | list[str] | None = None,
    metric: str = "logit_diff",
    analyses: str | list[str] | None = "all",
    out: str | Path | None = None,
    seed: int = 0,
    reward: str = "vader",
    report: bool = True,
    samples_per_prompt: int = 4,
    new_tokens: int = 32,
    positive: str | None = None,
    negative: str | None = None,
    device: str = "cpu",
    strict: bool = True,
    diff_corpus: str | Path | None = None,
    trajectory: bool = False,
    crosscoder: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Load BASE and TUNED (or a run directory's base/ and tuned/), run the analyses, return their tables.

    With `out`, also writes OUT/tables/<name>.csv, OUT/samples.jsonl, OUT/summary.json and (unless report=False)
    OUT/report.html with OUT/figures/*.png, all atomically. With strict=False an analysis that fails unexpectedly is
    recorded in OUT/summary.json under "failed" (name -> message) while the others still run. `diff_corpus`: a text
    file (one text a line) for the model-diffing analyses (adl, diff_mining); default: unconditional samples of the
    base model. `trajectory`: BASE is a run directory with snapshots; also measure base vs every snapshot
    (`rlhf_interp.analysis.trajectory`) into the `trajectory` table.
    `crosscoder`: settings of the opt-in crosscoder analysis, "KEY=VALUE,..." (see
    `rlhf_interp.analysis.crosscoder.CrosscoderConfig`).
    """
    import torch

    from rlhf_interp.progress import progress_bar

    names = parse_analyses(analyses)
    _check_inputs(base, tuned, out, diff_corpus, trajectory, crosscoder)  # bad input fails before the models load
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    pair = open_pair(base, tuned, prompts, metric, positive, negative, device)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    ctx: dict[str, Any] = {"seed": seed, "reward": reward, "samples_per_prompt": samples_per_prompt,
                           "new_tokens": new_tokens, "tables": {},
                           "diff_corpus": diff_corpus, "crosscoder": crosscoder}
    failed: dict[str, str] = {}
    with progress_bar() as bar:
        task = bar.add_task("compare", total=len(names), info="")
        ctx["say"] = (lambda text: None) if bar.disable else bar.console.print  # a line above the bar
        for name in names:
            bar.update(task, info=name)
            t = time.perf_counter()
            error = run_analysis(name, pair, ctx, strict)
            if error is not None:
                failed[name] = error
            timings[name] = time.perf_counter() - t
            bar.advance(task)
    if trajectory:
        t = time.perf_counter()
        from rlhf_interp.analysis.trajectory import trajectory as run_trajectory

        error = run_analysis("trajectory", pair, ctx, strict, fn=lambda p, c: run_trajectory(p, c, base))
        if error is not None:
            failed["trajectory"] = error
        timings["trajectory"] = time.perf_counter() - t
    tables: dict[str, pd.DataFrame] = ctx["tables"]
    if out is not None:
        from rlhf_interp.analysis.summary import build_summary, write_outputs

        summary = build_summary(pair, tables, timings, seed)
        if failed:
            summary["failed"] = failed
        write_outputs(Path(out), tables, summary)
        if report:
            from rlhf_interp.report.render import render_compare

            render_compare(Path(out))
    return tables


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["ANALYSES", "compare", "file_sha256", "open_pair", "run_analysis"]
