"""The data of the report's explorable view, built from the saved tables only (the report never loads a model).

`explore_data(tables)` -> a JSON-ready dict: hoverable heatmaps, the per-prompt metric, attention patterns of the
heads that changed most (table `attention_patterns`), and the per-token KL over the tuned samples. `explore.js`
(inline in the HTML, no library, no network) draws it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

Tables = dict[str, pd.DataFrame]


def _num(v: Any) -> float | None:
    v = float(v)
    return float(f"{v:.4g}") if math.isfinite(v) else None


def _grid(df: pd.DataFrame, value: str, title: str, percent: bool, diverging: bool = True,
          floor: float | None = None) -> dict[str, Any]:
    """One layer × head grid; its colour scale is at least `floor` wide (default: 5% of the gap for shares, 0.01
    for non-negative values), so that values far below what matters stay pale instead of saturating."""
    grid = df.pivot(index="layer", columns="head", values=value).sort_index().sort_index(axis=1)
    values = [[_num(v) for v in row] for row in grid.to_numpy(dtype=float)]
    finite = [abs(v) for row in values for v in row if v is not None]
    if floor is None:
        floor = 0.05 if percent else (0.01 if not diverging else 0.0)
    return {"title": title, "percent": percent, "diverging": diverging,
            "rows": [int(r) for r in grid.index], "cols": [int(c) for c in grid.columns], "values": values,
            "vmax": max([*finite, floor, 1e-12])}


def _heatmaps(t: Tables) -> list[dict[str, Any]]:
    from rlhf_interp.report.figures import gap_floor

    units = gap_floor(t)  # metric-unit grids: at least ±5% of the gap, as the PNGs
    out = []
    if (df := t.get("patching_heads")) is not None and len(df):
        out.append(_grid(df[df.direction == "tuned_to_base"], "effect",
                         "Patching a head tuned → base: share of the gap recovered", True))
    if (df := t.get("dla_heads")) is not None and len(df):
        own = "delta_activation" if (df.model == "delta_activation").any() else "delta"
        title = ("DLA per head: the head's own change (fixed read-out)" if own == "delta_activation"
                 else "DLA per head, tuned − base")
        out.append(_grid(df[df.model == own], "attribution", title + " (metric units)", False, floor=units))
    if (df := t.get("ablation")) is not None and len(df):
        heads = df[(df.component == "head") & (df.kind == "mean") & (df.model == "tuned")]
        if len(heads):
            out.append(_grid(heads, "effect", "Mean-ablating a head in the tuned model: Δ metric", False, floor=units))
    if (df := t.get("attention_diff")) is not None and len(df):
        out.append(_grid(df, "js_divergence", "Attention change: JS divergence (nats)", False, diverging=False))
    return out


def _prompts(t: Tables) -> list[dict[str, Any]]:
    df = t.get("logit_diff")
    if df is None or df.empty:
        return []
    df = df[df.prompt != "(mean)"]
    wide = df.pivot_table(index="prompt", columns="model", values="metric", sort=False)
    return [{"prompt": str(p), **{m: _num(r[m]) for m in ("base", "tuned", "delta") if m in r}}
            for p, r in wide.iterrows()]


def _attention(t: Tables) -> dict[str, Any]:
    df = t.get("attention_patterns")
    if df is None or df.empty:
        return {}
    heads = df[["layer", "head"]].drop_duplicates().astype(int).values.tolist()
    prompts = []
    for i, sub in df.groupby("prompt_index", sort=True):
        n = int(sub["query"].max()) + 1
        tokens = [""] * n
        for q, tok in sub[["query", "query_token"]].drop_duplicates("query").values:
            tokens[int(q)] = "" if pd.isna(tok) else str(tok)
        patterns: dict[str, dict[str, list[list[float]]]] = {"base": {}, "tuned": {}}
        for (model, L, h), part in sub.groupby(["model", "layer", "head"]):
            m = [[0.0] * n for _ in range(n)]
            for q, k, w in part[["query", "key", "weight"]].values:
                m[int(q)][int(k)] = round(float(w), 4)
            patterns[str(model)][f"{int(L)}.{int(h)}"] = m
        prompts.append({"index": int(i), "prompt": str(sub["prompt"].iloc[0]), "tokens": tokens, **patterns})
    return {"heads": heads, "prompts": prompts}


def _token_kl(t: Tables, limit: int = 48) -> list[dict[str, Any]]:
    kl, beh = t.get("token_kl"), t.get("behaviour")
    if kl is None or kl.empty:
        return []
    tuned = beh[beh.model == "tuned"].set_index("sample") if beh is not None and len(beh) else None
    out = []
    for sample, sub in list(kl.groupby("sample", sort=True))[:limit]:
        row = tuned.loc[sample] if tuned is not None and sample in tuned.index else None
        out.append({"sample": int(sample), "prompt": "" if row is None else str(row["prompt"]),
                    "reward": None if row is None else _num(row["reward"]),
                    "tokens": [["" if pd.isna(tok) else str(tok), _num(v)]
                               for tok, v in sub.sort_values("pos")[["token", "kl"]].values]})
    return out


def explore_data(t: Tables) -> dict[str, Any]:
    return {"heatmaps": _heatmaps(t), "prompts": _prompts(t), "attention": _attention(t), "kl": _token_kl(t)}


def explore_json(t: Tables) -> str:
    """The data as JSON safe inside <script type="application/json"> (no "<", ">" or "&" characters)."""
    text = json.dumps(explore_data(t), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explore_js() -> str:
    return (Path(__file__).parent / "explore.js").read_text(encoding="utf-8")
