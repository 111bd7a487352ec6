"""`trajectory` (`compare RUN --trajectory`): when did RLHF change what? The same base-vs-model numbers, computed
for every snapshot a training run kept (`train --snapshot-every K` writes RUN/snapshots/step-NNNNNN/; step 0 is the
base) and for the final tuned model when it is not one of them.

Per point (step, model M), always against the run's base B, with the functions the plain compare uses, so the row of
a snapshot equals `compare B M` on the same prompts and seed:
- `metric`, `metric_gap`: the metric under M and the mean gap M − B over the compare prompts (95% bootstrap CI in
  ci_low / ci_high), as `logit_diff`'s "(mean)" rows;
- `dla_delta`, `dla_delta_activation`, `dla_delta_readout` (linear metrics): the gap per component (embed, attn L,
  mlp L, biases, total) split into the part the components' own outputs carry and the part the read-out (final-norm
  scale, gain, unembedding) carries, as `dla_layers`;
- `kl_per_sequence`, `kl_per_token`: the exact KL(M ‖ B) = Σ_v p_M(v) log(p_M(v) / p_B(v)) at every position of
  samples drawn from M (teacher-forced through both bridges, as `behaviour`'s `token_kl`), summed per sequence and
  averaged over samples / averaged over tokens; on the run's evaluation prompts (prompts_eval.txt) when the run
  has them, else on the compare prompts (`component` says which);
- `reward_resampled`: the mean reward (the compare's `--reward`) of those samples, as `behaviour_summary`; it and
  `kl_per_sequence` carry 95% bootstrap CIs over the samples;
- `reward_logged_eval`, `kl_logged_eval`: the run's own evaluation of the policy at that step (eval.csv: the run's
  reward on its fixed eval set; its KL is the trainer's k1 estimate), where it evaluated at that step;
- `reward_logged_rollout`: the mean score of the rollouts this policy generated (metrics.csv row step + 1: update
  s + 1 samples with the policy after s updates), where logged;
- `adl_norm`, `adl_rel_norm` per layer: the Activation Difference Lens norm ‖mean (M − B) residual‖ after each layer
  over the first tokens of the diff corpus (absolute and relative to the base residual's mean norm), as `adl_norm`;
- `weight_rel_change`: ‖W_M − W_B‖ / ‖W_B‖ (Frobenius) per component kind and layer on the raw checkpoint tensors,
  aggregated from `weight_diff`'s rows (QK and OV over the layer's query heads, mlp_in, mlp_out, every norm's gain
  and bias, embed, pos_embed, unembed; layer empty: over all layers of that kind), and `all_params` over every
  parameter of the HF checkpoints.

Memory: the base bridge stays loaded; each snapshot is loaded, measured and released before the next (the tuned
bridge of the compare pair is paged out meanwhile).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rlhf_interp.errors import UserError

COLUMNS = ["step", "quantity", "layer", "component", "value", "ci_low", "ci_high"]
ADL_POSITIONS = 5  # the first k tokens after BOS, as the `adl` analysis


def snapshot_dirs(run: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of RUN/snapshots/step-NNNNNN/, sorted by step; a UserError that says how to make them."""
    root = Path(run)
    if not ((root / "base").is_dir() and (root / "tuned").is_dir()):
        raise UserError(f"--trajectory needs a training run directory (with base/, tuned/ and snapshots/); {run} is "
                        "not one: pass the run directory alone (compare RUN --trajectory)")
    snaps = root / "snapshots"
    found = sorted((int(d.name[5:]), d) for d in snaps.glob("step-*") if d.is_dir() and d.name[5:].isdigit()) \
        if snaps.is_dir() else []
    if not found:
        raise UserError(f"{root} has no snapshots ({snaps}/step-NNNNNN/): train with --snapshot-every K (e.g. "
                        f"rlhf-interp train --out {root} --snapshot-every 10 ...) to keep the policy every K updates")
    return found


def run_points(run: str | Path) -> list[tuple[int, Path, str]]:
    """(step, model directory, label) for every snapshot, plus the final tuned model when its step is not one of them
    (its step: the number of updates in metrics.csv, else summary.json)."""
    root = Path(run)
    points = [(step, d, "snapshot") for step, d in snapshot_dirs(root)]
    steps = {s for s, _, _ in points}
    final = _final_step(root)
    if final is None:
        tuned_sha = _weights_sha(root / "tuned")
        if tuned_sha is None or tuned_sha not in {_weights_sha(d) for _, d, _ in points}:
            raise UserError(f"{root}: cannot tell the tuned model's step (no metrics.csv or summary.json)")
    elif final not in steps:
        points.append((final, root / "tuned", "tuned"))
    return sorted(points)


def _final_step(root: Path) -> int | None:
    if (root / "metrics.csv").is_file():
        from rlhf_interp.io import read_table

        m = read_table(root / "metrics.csv")
        if len(m) and "step" in m.columns:
            return int(m.step.max())
    if (root / "summary.json").is_file():
        steps = json.loads((root / "summary.json").read_text(encoding="utf-8")).get("steps")
        return int(steps) if steps is not None else None
    return None


def _weights_sha(d: Path) -> str | None:
    from rlhf_interp.analysis import file_sha256

    f = d / "model.safetensors"
    return file_sha256(f) if f.is_file() else None


def _logged(root: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    from rlhf_interp.io import read_table

    evals = read_table(root / "eval.csv") if (root / "eval.csv").is_file() else None
    metrics = read_table(root / "metrics.csv") if (root / "metrics.csv").is_file() else None
    return evals, metrics


def eval_prompts(root: Path, fallback: list[str]) -> tuple[list[str], str]:
    """The run's evaluation prompts (prompts_eval.txt) and a label of where they came from."""
    f = root / "prompts_eval.txt"
    if f.is_file():
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if lines:
            return lines, "eval_set"
    return list(fallback), "compare_prompts"


def _rel(delta_sq: float, base_sq: float) -> float:
    return math.sqrt(delta_sq / base_sq) if base_sq > 0 else float("nan")


def weight_change(sub: Any) -> list[dict[str, Any]]:
    """Relative Frobenius change per component kind, per layer and over all layers (layer None), from `weight_diff`'s
    rows on the raw checkpoint tensors: ‖ΔW‖ / ‖W_base‖ = sqrt(Σ change_norm²) / sqrt(Σ base_norm²) over the kind's
    rows (a layer's heads, every layer). A layer's row equals weight_diff's for one-row kinds (mlp_in, mlp_out, ...)."""
    from rlhf_interp.analysis.weights import weight_diff

    wd = weight_diff(sub)
    rows: list[dict[str, Any]] = []
    sq = wd.assign(c2=wd.change_norm.astype(float) ** 2, b2=wd.base_norm.astype(float) ** 2)
    for (comp, layer), g in sq[sq.layer.notna()].groupby(["component", "layer"], sort=False):
        rows.append({"quantity": "weight_rel_change", "layer": int(layer), "component": comp,
                     "value": _rel(float(g.c2.sum()), float(g.b2.sum()))})
    for comp, g in sq.groupby("component", sort=False):
        rows.append({"quantity": "weight_rel_change", "layer": None, "component": comp,
                     "value": _rel(float(g.c2.sum()), float(g.b2.sum()))})
    return rows


def checkpoint_change(base_dir: Path, model_dir: Path) -> float | None:
    """‖θ_M − θ_B‖ / ‖θ_B‖ over every tensor of the two HF checkpoints (model.safetensors, read lazily); None when
    a checkpoint is sharded or the tensor names differ."""
    from safetensors import safe_open

    fb, fm = base_dir / "model.safetensors", model_dir / "model.safetensors"
    if not (fb.is_file() and fm.is_file()):
        return None
    d = n = 0.0
    with safe_open(str(fb), "pt") as sb, safe_open(str(fm), "pt") as sm:
        if set(sb.keys()) != set(sm.keys()):
            return None
        for key in sb.keys():  # noqa: SIM118 (safe_open is not a mapping)
            wb, wm = sb.get_tensor(key).double(), sm.get_tensor(key).double()
            d += float((wm - wb).pow(2).sum())
            n += float(wb.pow(2).sum())
    return _rel(d, n)


def _sampled(pair: Any, model_hf: Any, prompts: list[str], reward: str, samples_per_prompt: int, new_tokens: int,
             seed: int, where: str) -> list[dict[str, Any]]:
    """Mean reward, KL per sequence and KL per token of samples from `model_hf` (KL(pair.tuned ‖ pair.base) exact),
    the first two with 95% bootstrap CIs over samples."""
    from rlhf_interp.analysis.behaviour import _token_kl
    from rlhf_interp.analysis.logits import bootstrap_ci
    from rlhf_interp.rewards import check_scores, get_reward
    from rlhf_interp.sampling import sample_seeded

    batch = [p for p in prompts for _ in range(samples_per_prompt)]
    s, texts = sample_seeded(model_hf, pair.tokenizer, batch, new_tokens, seed)
    scores = np.asarray(check_scores(reward, get_reward(reward), texts), dtype=float)
    kl = pd.DataFrame(_token_kl(pair, s))
    per_seq = kl.groupby("sample").kl.sum() if len(kl) else pd.Series(dtype=float)  # as behaviour_summary
    rows = []
    for quantity, values in (("reward_resampled", scores), ("kl_per_sequence", per_seq.to_numpy())):
        low, high = bootstrap_ci(values, seed)
        mean = float(torch.tensor(values).mean()) if quantity == "reward_resampled" else float(per_seq.mean())
        rows.append({"quantity": quantity, "component": where, "value": mean, "ci_low": low, "ci_high": high})
    rows.append({"quantity": "kl_per_token", "component": where,
                 "value": float(kl.kl.mean()) if len(kl) else float("nan")})
    return rows


def _point_rows(pair: Any, sub: Any, ctx: dict[str, Any], prompts: list[str], where: str) -> list[dict[str, Any]]:
    """Every quantity for one model (`sub.tuned`) against the base (`sub.base`)."""
    from rlhf_interp.analysis.adl import diff_corpus, mean_differences
    from rlhf_interp.analysis.dla import dla_tables
    from rlhf_interp.analysis.logits import logit_diff

    rows: list[dict[str, Any]] = []
    ld = logit_diff(sub, ctx.get("seed", 0))
    mean = ld[ld.prompt == "(mean)"].set_index("model")
    rows.append({"quantity": "metric", "component": "model", "value": float(mean.metric["tuned"])})
    rows.append({"quantity": "metric_gap", "component": "total", "value": float(mean.metric["delta"]),
                 "ci_low": float(mean.ci_low["delta"]), "ci_high": float(mean.ci_high["delta"])})
    if sub.metric.linear:
        dl = dla_tables(sub)["dla_layers"]
        for r in dl[dl.model.isin(["delta", "delta_activation", "delta_readout"])].itertuples():
            rows.append({"quantity": f"dla_{r.model}", "layer": r.layer, "component": r.component,
                         "value": float(r.attribution)})
    batches = diff_corpus(pair, ctx)  # once per compare (cached in ctx), from the base model
    pair.release_hf()
    delta, base_norm, _ = mean_differences(sub, batches, ADL_POSITIONS)
    for L in range(sub.n_layers):
        norm = float(delta[L].norm())
        rows.append({"quantity": "adl_norm", "layer": L, "component": "resid_post", "value": norm})
        rows.append({"quantity": "adl_rel_norm", "layer": L, "component": "resid_post",
                     "value": norm / float(base_norm[L]) if base_norm[L] > 0 else float("nan")})
    rows += weight_change(sub)
    rows += _sampled(sub, sub.hf("tuned"), prompts, ctx.get("reward") or "vader", ctx.get("samples_per_prompt", 4),
                     ctx.get("new_tokens", 32), ctx.get("seed", 0), where)
    sub.release_hf()
    return rows


def _logged_rows(step: int, evals: pd.DataFrame | None, metrics: pd.DataFrame | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if evals is not None and "step" in evals.columns:
        at = evals[evals.step == step]
        if len(at):
            rows.append({"quantity": "reward_logged_eval", "component": "eval_set",
                         "value": float(at.score_mean.iloc[-1])})
            if "kl" in at.columns:
                rows.append({"quantity": "kl_logged_eval", "component": "eval_set", "value": float(at.kl.iloc[-1])})
    if metrics is not None and "step" in metrics.columns:
        nxt = metrics[metrics.step == step + 1]  # update step+1 rolled out with the policy after `step` updates
        if len(nxt):
            rows.append({"quantity": "reward_logged_rollout", "component": "train_prompts",
                         "value": float(nxt.score_mean.iloc[0])})
    return rows


def trajectory(pair: Any, ctx: dict[str, Any], run: str | Path) -> dict[str, pd.DataFrame]:
    """{"trajectory": tidy table (step, quantity, layer, component, value, ci_low, ci_high)} over the run's points."""
    from rlhf_interp.analysis.metric import RewardMetric
    from rlhf_interp.analysis.pair import ModelPair, check_compatible
    from rlhf_interp.models import load_bridge, load_tokenizer, page_out, release_freed_memory, resolve_model_spec
    from rlhf_interp.progress import progress_bar

    root = Path(run)
    points = run_points(root)
    prompts, where = eval_prompts(root, pair.prompts)
    evals, metrics = _logged(root)
    shas = {"base": _weights_sha(root / "base"), "tuned": _weights_sha(root / "tuned")}
    page_out(pair.tuned)  # one snapshot at a time beside the base
    rows: list[dict[str, Any]] = []
    with progress_bar() as bar:
        task = bar.add_task("trajectory", total=len(points), info="")
        for step, directory, _label in points:
            bar.update(task, info=f"step {step}")
            source = resolve_model_spec(directory)
            sha = _weights_sha(directory)
            if sha is not None and sha == shas["tuned"]:
                model, loaded = pair.tuned, False  # the final snapshot is the tuned model: already loaded
            elif sha is not None and sha == shas["base"]:
                model, loaded = pair.base, False  # step 0 (or any point with the base weights)
            else:
                model, loaded = load_bridge(source, fold_value_biases=False, device=pair.device), True
            if loaded:
                check_compatible(pair.base.cfg, model.cfg, pair.tokenizer, load_tokenizer(source))
            metric = pair.metric
            sub = ModelPair(pair.base_source, source, pair.base, model, pair.tokenizer, pair.prompts, metric,
                            pair.groups, pair.device)
            if isinstance(metric, RewardMetric):  # its read-out is solved for the two unembeddings of the pair
                sub.metric = replace(metric, readout=None)
                sub.metric.bind(sub)
            point = _point_rows(pair, sub, ctx, prompts, where) + _logged_rows(step, evals, metrics)
            change = checkpoint_change(root / "base", directory)
            if change is not None:
                point.append({"quantity": "weight_rel_change", "layer": None, "component": "all_params",
                              "value": change})
            rows += [{"step": step, **r} for r in point]
            del sub, model
            release_freed_memory()
            bar.advance(task)
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    df["layer"] = df["layer"].astype("Int64")
    return {"trajectory": df}


def series(df: pd.DataFrame, quantity: str, layer: int | None = None, component: str | None = None) -> pd.Series:
    """One quantity of a trajectory table as value by step (layer None: the rows without a layer)."""
    sel = df[df.quantity == quantity]
    if "layer" in sel.columns:
        sel = sel[sel.layer.isna()] if layer is None else sel[sel.layer == layer]
    if component is not None:
        sel = sel[sel.component == component]
    return sel.groupby("step").value.first().sort_index()


def half_way_step(steps: list[int], values: list[float]) -> int | None:
    """The first step at which a quantity has covered half of its total change (first → last value)."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    total = values[-1] - values[0]
    if total == 0:
        return None
    for s, v in zip(steps, values, strict=True):
        if (v - values[0]) / total >= 0.5:
            return s
    return None


__all__ = ["checkpoint_change", "half_way_step", "run_points", "series", "snapshot_dirs", "trajectory",
           "weight_change"]
