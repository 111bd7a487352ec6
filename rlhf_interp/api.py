"""The notebook API: `load_pair`, `compare`, `train` (re-exported by `rlhf_interp`), and `rlhf_interp.analyses`.

Nothing heavy is imported at module level: `import rlhf_interp` stays fast; torch and TransformerLens load on the
first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rlhf_interp.analysis.pair import ModelPair


def load_pair(
    base: str,
    tuned: str | None = None,
    prompts: str | Path | list[str] | None = None,
    metric: str = "logit_diff",
    device: str = "cpu",
    positive: str | None = None,
    negative: str | None = None,
) -> ModelPair:
    """Load a base and a tuned model as TransformerLens bridges, ready for the analyses.

    Args:
        base: base model: 'embedded', a local HF directory, a hub name, or a training run directory (then omit
            `tuned`: its base/ and tuned/ are loaded).
        tuned: tuned model, same forms as `base`.
        prompts: a list of prompt strings, a prompt file (one per line or JSONL), or None for the model's default set.
        metric: 'logit_diff' (mean logit of positive minus negative single-token words at the next token; where
            fewer than 3 of either are single tokens it becomes 'logprob_diff': the mean log-prob of each word's full
            tokenization, positive minus negative), 'logprob_diff', 'target:TEXT' or 'reward:DIR'.
        device: 'cpu', 'cuda', 'auto'.
        positive, negative: the metric's word lists (comma list or @file); default: the built-in sentiment words.

    Returns:
        A `ModelPair`: `.base` and `.tuned` (TransformerBridge; `.run_with_cache`, hooks...), `.prompts`, `.metric`
        (callable on logits -> one value per prompt), `.tokenizer`, `.groups` (prompts batched by token length).
        Pass it to `rlhf_interp.analyses.<name>(pair)`.

    Example:
        >>> pair = rlhf_interp.load_pair("runs/demo")
        >>> tables = rlhf_interp.analyses.patching(pair)
        >>> tables["patching_heads"].nlargest(3, "effect")
    """
    from rlhf_interp.analysis import open_pair
    from rlhf_interp.models import resolve_device

    return open_pair(base, tuned, prompts, metric, positive, negative, str(resolve_device(device)))


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
    """Everything `rlhf-interp compare` computes: load the pair, run the analyses, return {table name: DataFrame}.

    Args:
        base, tuned, prompts, metric, device, positive, negative: as in `load_pair`.
        analyses: 'all', or names from `rlhf_interp.analyses.names()` (comma string or list).
        out: if given, write OUT/tables/*.csv, OUT/summary.json, OUT/samples.jsonl and (report=True) OUT/report.html.
        seed: seed of sampling and bootstrap CIs.
        reward: reward of the behaviour analysis ('vader', 'periods', 'imdb', 'classifier:DIR', 'python:mod:fn').
        samples_per_prompt, new_tokens: sampling of the behaviour analysis.
        strict: False: an analysis that fails unexpectedly is recorded in summary.json ("failed") and the others
            still run; True (default): the exception propagates.
        diff_corpus: a text file (one text a line) for the model-diffing analyses (adl, diff_mining); default:
            unconditional samples of the base model.
        trajectory: `base` is a training run directory with snapshots (`train --snapshot-every K`): also measure the
            base against every snapshot (metric gap, its activation/read-out split, KL, reward, ADL norms, weight
            change) into the `trajectory` table (see `rlhf_interp.analysis.trajectory`).
        crosscoder: settings of the opt-in `crosscoder` analysis (run it with analyses="all,crosscoder"), e.g.
            "kind=l1,layer=2,steps=1000" (keys: kind, layer, latents, k, l1, steps, batch, lr, texts, ...).
    """
    from rlhf_interp.analysis import compare as _compare

    return _compare(base, tuned, prompts=prompts, metric=metric, analyses=analyses, out=out, seed=seed, reward=reward,
                    report=report, samples_per_prompt=samples_per_prompt, new_tokens=new_tokens, positive=positive,
                    negative=negative, device=device, strict=strict, diff_corpus=diff_corpus,
                    trajectory=trajectory,
                    crosscoder=crosscoder)


def train(
    config: str | Path | None = None,
    *,
    model: str | None = None,
    reward: str | None = None,
    prompts: str | None = None,
    out: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune a model with PPO against a reward (what `rlhf-interp train` does); returns the run summary.

    Args:
        config: a TOML file of config keys (flat or a [train] table).
        model, reward, prompts, out, steps, seed: the most used config keys (None: config file / default).
        overrides: any other config keys, e.g. {"kl_coef": 0.1, "batch_size": 32}; `rlhf-interp train-keys`
            (or `rlhf_interp.ppo.config.TrainConfig`) lists them with defaults and meaning.
        resume: continue the run in `out` from its checkpoint.
        overwrite: replace an existing run in `out`.

    Returns:
        {"run": run directory, "steps", "episodes", "train_seconds", "eval_before", "eval_after", ...}; the run
        directory holds base/, tuned/ (HF checkpoints), metrics.csv, eval.csv, samples.jsonl and report.html.
    """
    from rlhf_interp.ppo import run_training

    named = {"model": model, "reward": reward, "prompts": prompts, "out": out, "steps": steps, "seed": seed}
    merged = {k: v for k, v in named.items() if v is not None}
    merged.update(overrides or {})
    return run_training(config, merged, resume=resume, overwrite=overwrite)
