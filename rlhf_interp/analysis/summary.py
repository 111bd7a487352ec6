"""OUT/summary.json: what was compared, the metric for both models, the top components by each analysis, timings."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_interp.io import atomic_write_text, write_table


def head_effect_column(df: pd.DataFrame | None) -> str:
    """`effect` (whole head output), or `effect_z` where head outputs are not additive and `effect` is NaN."""
    return "effect" if df is None or not len(df) or df.effect.notna().any() else "effect_z"


def _top(df: pd.DataFrame | None, value: str, keys: list[str], n: int = 5, **where: Any) -> list[dict[str, Any]]:
    if df is None or not len(df):
        return []
    for k, v in where.items():
        df = df[df[k] == v]
    df = df.dropna(subset=[value])
    df = df.assign(_abs=df[value].abs()).nlargest(n, "_abs")
    return [{**{k: (None if pd.isna(r[k]) else (int(r[k]) if k in ("layer", "head", "pos", "neuron") else r[k]))
                for k in keys}, value: float(r[value])} for _, r in df.iterrows()]


def _multi_token(pair: Any) -> dict[str, Any]:
    """For `logprob_diff`: each word's tokens, and the first-token term (what DLA and the logit lens decompose) for
    both models beside the metric, so the share of the gap they explain can be read."""
    import torch

    from rlhf_interp.analysis.metric import LogprobDiff

    metric = pair.metric
    if not isinstance(metric, LogprobDiff):
        return {}
    decode = pair.tokenizer.decode
    words = {w: [decode([t]) for t in ids] for w, ids in {**metric.positive_ids, **metric.negative_ids}.items()}
    term = {}
    for name in ("base", "tuned"):
        values = torch.empty(len(pair.prompts))
        with torch.no_grad():
            for idx, tokens in pair.groups:
                values[idx] = metric.first_token_term(pair.model(name)(tokens)).cpu()
        term[name] = values
    return {"tokenization": words, "max_word_tokens": metric.read_positions,
            "first_token_term": {"base": term["base"].mean().item(), "tuned": term["tuned"].mean().item(),
                                 "gap": (term["tuned"] - term["base"]).mean().item()}}


def build_summary(pair: Any, tables: dict[str, pd.DataFrame], timings: dict[str, float], seed: int) -> dict[str, Any]:
    import torch
    import transformer_lens
    import transformers

    from rlhf_interp.analysis import file_sha256
    from rlhf_interp.analysis.attribution import correlations
    from rlhf_interp.analysis.metric import analysis_scope
    from rlhf_interp.analysis.pair import metric_per_prompt

    base_m = metric_per_prompt(pair.base, pair)
    tuned_m = metric_per_prompt(pair.tuned, pair)

    def describe(source: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"spec": source.spec, "location": source.location}
        if source.path is not None:
            weights = sorted(source.path.glob("*.safetensors"))
            info["sha256"] = {w.name: file_sha256(w) for w in weights}
        return info

    summary: dict[str, Any] = {
        "base": describe(pair.base_source),
        "tuned": describe(pair.tuned_source),
        "prompts": len(pair.prompts),
        "prompt_groups": [len(idx) for idx, _ in pair.groups],
        "metric": {"name": pair.metric.name, "reason": pair.metric.reason, "positive": sorted(pair.metric.positive),
                   "negative": sorted(pair.metric.negative), "target": pair.metric.target,
                   "base": base_m.mean().item(), "tuned": tuned_m.mean().item(),
                   "gap": (tuned_m - base_m).mean().item(), **_multi_token(pair),
                   "scope": analysis_scope(pair.metric)},
        "top": {
            "patching_heads": _top(tables.get("patching_heads"), head_effect_column(tables.get("patching_heads")),
                                   ["layer", "head"],
                                   direction="tuned_to_base"),
            "patching_layers": _top(tables.get("patching_layers"), "effect", ["component", "layer", "pos", "token"],
                                    direction="tuned_to_base"),
            "dla_heads": _top(tables.get("dla_heads"), "attribution", ["layer", "head"], model="delta_activation"),
            "dla_layers": _top(tables.get("dla_layers"), "attribution", ["component", "layer"],
                               model="delta_activation"),
            "dla_neurons": _top(tables.get("dla_neurons"), "attribution", ["layer", "neuron"],
                                model="delta_activation"),
            "ablation_tuned": _top(tables.get("ablation"), "effect", ["component", "layer", "head", "kind"],
                                   model="tuned"),
            "attention_diff": _top(tables.get("attention_diff"), "js_divergence", ["layer", "head"]),
            "weight_diff": _top(tables.get("weight_diff"), "rel_change", ["component", "layer", "head"]),
        },
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "seed": seed,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "transformer_lens": getattr(transformer_lens, "__version__", "unknown")},
    }
    if "attribution_patching" in tables:
        summary["attribution_vs_exact_correlation"] = correlations(tables["attribution_patching"])
    if "behaviour_summary" in tables:
        summary["behaviour"] = tables["behaviour_summary"].to_dict(orient="records")
    return summary


def write_outputs(out: Path, tables: dict[str, pd.DataFrame], summary: dict[str, Any]) -> None:
    for name, df in tables.items():
        write_table(out / "tables" / f"{name}.csv", df)
    if "behaviour" in tables:
        rows = tables["behaviour"].to_dict(orient="records")
        atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
