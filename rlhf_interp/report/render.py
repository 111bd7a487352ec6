"""Render a self-contained HTML report (and PNG figures) from saved tables only — no model is loaded.

Two kinds of directory: a `compare` output (tables/*.csv, summary.json) and a training run (metrics.csv, eval.csv,
samples.jsonl). Images are embedded as data URIs by default (one file that opens offline anywhere) or referenced as
relative files (`embed=False`). Model-generated text is HTML-escaped by the template's autoescaping.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from rlhf_interp.errors import UserError
from rlhf_interp.io import atomic_write_bytes, atomic_write_text, read_table

# the output contract: columns each table must have for its figure
REQUIRED = {
    "behaviour": ["model", "prompt", "response", "reward"],
    "behaviour_summary": ["model", "reward_mean", "distinct_2", "repetition_3", "eos_rate", "kl_per_sequence"],
    "token_kl": ["sample", "pos", "kl"],
    "token_shift": ["direction", "token", "delta_logprob"],
    "logit_diff": ["prompt", "model", "metric", "ci_low", "ci_high"],
    "logit_lens": ["layer", "model", "metric"],
    "dla_layers": ["layer", "component", "model", "attribution"],
    "dla_heads": ["layer", "head", "model", "attribution"],
    "ablation": ["layer", "head", "component", "model", "kind", "effect"],
    "patching_layers": ["direction", "component", "layer", "pos", "token", "effect"],
    "patching_heads": ["direction", "layer", "head", "effect"],
    "attribution_patching": ["kind", "approx", "exact"],
    "attention_diff": ["layer", "head", "js_divergence"],
    "attention_patterns": ["prompt_index", "prompt", "layer", "head", "model", "query", "key", "query_token", "weight"],
    "weight_diff": ["component", "layer", "head", "rel_change"],
    "direction": ["layer", "method", "recovery", "recovery_sd", "cosine_readout"],
    "unembed_change": ["kind", "value", "share"],
    "trajectory": ["step", "quantity", "layer", "component", "value"],
    "crosscoder_latents": ["layer", "kind", "latent", "rel_norm", "class", "nu_error", "nu_recon", "artifact"],
}


def _read_csv(path: Path, name: str) -> pd.DataFrame:
    try:
        df = read_table(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"table {path} is unreadable ({type(e).__name__}); rerun compare to regenerate it") from e
    missing = [c for c in REQUIRED.get(name, []) if c not in df.columns]
    if missing and not df.empty:
        raise UserError(f"table {path} lacks columns {', '.join(missing)}; rerun compare to regenerate it")
    return df


def load_tables(out: Path) -> dict[str, pd.DataFrame]:
    folder = out / "tables"
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise UserError(f"{out} holds no tables (expected {folder}/*.csv from `rlhf-interp compare`)")
    return {f.stem: _read_csv(f, f.stem) for f in files}


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html", "j2"]))


def _figures(out: Path, made: list[tuple[str, str, bytes, str]], embed: bool) -> list[dict[str, str]]:
    figures = []
    for name, title, png, caption in made:
        atomic_write_bytes(out / "figures" / f"{name}.png", png)
        src = "data:image/png;base64," + base64.b64encode(png).decode() if embed else f"figures/{name}.png"
        figures.append({"name": name, "title": title, "src": src, "caption": caption})
    return figures


def _version() -> str:
    from rlhf_interp import __version__

    return __version__


# "How to read this report" (compare): what each kind of number means, so no table is read as more than it measured
HOW_TO_READ: list[tuple[str, str]] = [
    ("The metric and the gap",
     "Every component analysis explains one scalar per prompt (the metric in the header: by default the mean logit of "
     "positive sentiment words minus negative ones at the next-token position; where the vocabulary splits those "
     "words, logprob_diff: the log-probability of each word's full tokenization, positive mean minus negative mean, "
     "and summary.json says why). The gap is tuned − base, averaged over prompts, with a 95% bootstrap CI over "
     "prompts (logit_diff.csv)."),
    ("Share of the gap recovered",
     "Patching rows are normalised recovery: (metric after the patch − the receiver's own metric) / (the donor's "
     "metric − the receiver's), on means over prompts. 100% moves the receiver all the way to the donor; 0% does "
     "nothing. tuned → base patches a tuned activation into the base model; base → tuned the reverse. Where a table "
     "has ci_low/ci_high they are 95% bootstrap CIs over prompts of the same statistic."),
    ("Read-out vs component",
     "RLHF changes the read-out too (final-norm gain and bias, unembedding). A delta read through each model's own "
     "read-out mixes the component's change with the read-out's. delta_activation is the component's own change "
     "read through a fixed read-out, delta_readout the read-out's change applied to a fixed activation (midpoint "
     "split: they add up to delta exactly). Components are ranked by delta_activation; the read-out's share has its "
     "own line and its own figure (\"Where the gap lives\")."),
    ("Linear vs exact",
     "Direct logit attribution and the logit lens are linear readings (the final-norm scale is frozen per prompt); "
     "activation patching and ablation run the model. A component can matter directly and little causally (or the "
     "reverse, through later layers): when they disagree, patching says what the model does."),
    ("Heads, neurons, positions",
     "Per-head rows are per query head (under grouped-query attention several query heads share one key/value "
     "head). A neuron of a gated MLP is one row of the down projection with activation act(gate)·up. Positions are "
     "token positions of the prompts as tokenized (BOS included where the tokenizer adds one)."),
    ("Thresholds and CIs",
     "Findings about behaviour (reward, length, EOS rate, repetition) read the CI of tuned − base against a "
     "threshold: a sign is reported only when the whole CI is past it, \"not conclusive\" when it straddles it. "
     "A number without a CI is a point estimate on these prompts."),
    ("Open-ended diffing",
     "The activation difference lens, logit-diff amplification and diff mining rank tokens that changed; they "
     "suggest hypotheses (a reward loophole, a new word), to be checked in the samples and with the causal tables."),
]


def render_compare(out: Path, fmt: str = "html", embed: bool = True) -> Path:
    from rlhf_interp.report.explore import explore_js, explore_json
    from rlhf_interp.report.figures import COMPARE_FIGURES, OPT_IN_FIGURES
    from rlhf_interp.report.findings import compare_findings

    tables = load_tables(out)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    made = []
    for name, title, fn in [*COMPARE_FIGURES, *OPT_IN_FIGURES]:
        result = fn(tables)
        if result is not None:
            made.append((name, title, result[0], result[1]))
    figures = _figures(out, made, embed)
    if fmt == "png":
        return out / "figures"
    samples = _compare_samples(tables.get("behaviour"))
    meta = [("base", summary.get("base", {}).get("spec", "?")), ("tuned", summary.get("tuned", {}).get("spec", "?")),
            ("prompts", summary.get("prompts", "?")), ("metric", summary.get("metric", {}).get("name", "?"))]
    html = _env().get_template("template.html.j2").render(
        title="What RLHF changed: base vs tuned", meta=meta, findings=compare_findings(tables, summary),
        figures=figures, samples=samples, samples_title="Samples: base vs tuned (same prompt, same seed)",
        samples_columns=["prompt", "base", "base reward", "tuned", "tuned reward"], version=_version(),
        tables_note="tables/*.csv, summary.json", failed=summary.get("failed") or {},
        explore_json=explore_json(tables), explore_js=explore_js(), how_to_read=HOW_TO_READ)
    atomic_write_text(out / "report.html", html)
    return out / "report.html"


def _compare_samples(df: pd.DataFrame | None, limit: int = 24) -> list[dict[str, Any]]:
    if df is None or df.empty:
        return []
    base, tuned = df[df.model == "base"].reset_index(drop=True), df[df.model == "tuned"].reset_index(drop=True)
    rows = []
    per_prompt = base.groupby("prompt", sort=False).head(1).index[:limit]
    for i in per_prompt:
        rows.append({"prompt": base.prompt[i], "base": str(base.response[i]), "base reward": float(base.reward[i]),
                     "tuned": str(tuned.response[i]), "tuned reward": float(tuned.reward[i])})
    return rows


def render_training(run: Path, fmt: str = "html", embed: bool = True) -> Path:
    from rlhf_interp.report.figures import training_curves
    from rlhf_interp.report.findings import training_findings

    metrics = _read_csv(run / "metrics.csv", "metrics")
    needed = ["step", "score_mean", "kl_k1", "kl_coef", "entropy", "clipfrac", "distinct_2"]
    missing = [c for c in needed if c not in metrics.columns]
    if missing:
        raise UserError(f"{run / 'metrics.csv'} lacks columns {', '.join(missing)}")
    evals = _read_csv(run / "eval.csv", "eval") if (run / "eval.csv").is_file() else pd.DataFrame()
    png, caption = training_curves(metrics, evals if len(evals) else None)
    figures = _figures(run, [("training_curves", "Training curves", png, caption)], embed)
    if fmt == "png":
        return run / "figures"
    samples = _training_samples(run / "samples.jsonl")
    cfg = run / "config.toml"
    meta = [("run", run.name), ("updates", len(metrics))]
    if cfg.is_file():
        import tomllib

        conf = tomllib.loads(cfg.read_text(encoding="utf-8")).get("train", {})
        meta += [(k, conf[k]) for k in ("model", "reward", "kl_coef", "batch_size", "seed") if k in conf]
    html = _env().get_template("template.html.j2").render(
        title="RLHF training run", meta=meta, findings=training_findings(metrics, evals), figures=figures,
        samples=samples, samples_title="Evaluation samples: before vs after training",
        samples_columns=["prompt", "before", "before score", "after", "after score"], version=_version(),
        tables_note="metrics.csv, eval.csv, samples.jsonl")
    atomic_write_text(run / "report.html", html)
    return run / "report.html"


def _training_samples(path: Path, limit: int = 24) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not evals:
        return []
    first, last = min(r["step"] for r in evals), max(r["step"] for r in evals)
    before = [r for r in evals if r["step"] == first]
    after = [r for r in evals if r["step"] == last]
    out = []
    for b, a in list(zip(before, after, strict=False))[:limit]:
        out.append({"prompt": b["prompt"], "before": b["response"], "before score": float(b["score"]),
                    "after": a["response"], "after score": float(a["score"])})
    return out


def render(directory: str | Path, fmt: str = "html", embed: bool = True) -> Path:
    """Render the report of a compare output or a training run directory; returns what was written."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"report directory not found: {d}")
    if fmt not in ("html", "png"):
        raise UserError(f"--format must be html or png, got {fmt!r}")
    if (d / "tables").is_dir() or not (d / "metrics.csv").is_file():
        return render_compare(d, fmt, embed)
    return render_training(d, fmt, embed)
