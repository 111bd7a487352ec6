"""The PPO trainer end to end on small budgets."""

import json

import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, run_cli
from transformers import AutoModelForCausalLM

from rlhf_interp.errors import UserError
from rlhf_interp.ppo import run_training
from rlhf_interp.ppo.config import TrainConfig, validate
from rlhf_interp.ppo.core import clipped_policy_loss, logprobs_of, masked_mean
from rlhf_interp.ppo.rollout import collect_rollout, forward_response
from rlhf_interp.ppo.rundir import RunFiles
from rlhf_interp.ppo.trainer import PPOTrainer
from rlhf_interp.rewards import RewardError

TIMING = ["episodes_per_s", "time_s"]


def small(tmp_path, **kw):
    base = {"out": str(tmp_path / "run"), "steps": 2, "batch_size": 8, "minibatches": 2, "ppo_epochs": 2,
            "response_length": 12, "eval_samples_per_prompt": 1, "log_every": 1, "save_every": 1}
    return {**base, **kw}


def test_ratio_is_one_before_the_first_update(tmp_path):
    cfg = validate(TrainConfig(out=str(tmp_path), batch_size=8, response_length=16, temperature=0.7, top_k=50))
    trainer = PPOTrainer(cfg, RunFiles(tmp_path))
    with torch.no_grad():  # a non-zero value head, so that "rollout values == recomputed values" is not 0 == 0
        torch.nn.init.normal_(trainer.value_head.summary.weight, std=0.5)
        trainer.value_head.summary.bias.fill_(0.3)
    r = collect_rollout(trainer.policy, trainer.ref, trainer.value_head, trainer.tokenizer, trainer.prompts[:8], cfg,
                        torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, hidden = forward_response(trainer.policy, r.query_ids, r.query_mask, r.response_ids, cfg, True)
        logp = logprobs_of(logits, r.response_ids)
        _loss, stats = clipped_policy_loss(logp, r.logprobs, torch.ones_like(logp), r.mask, 0.2)
    assert (logp - r.logprobs)[r.mask].abs().max().item() < 1e-4
    assert stats["approx_kl"].item() < 1e-8 and stats["clipfrac"].item() == 0.0
    assert abs(stats["ratio"].item() - 1) < 1e-5
    # policy == reference before training: the reference is scored with temperature only (no top-k), so the
    # per-token k1 is exactly -log(reference mass of the top-k set) >= 0
    ref_filtered = logprobs_of(forward_response(trainer.ref, r.query_ids, r.query_mask, r.response_ids, cfg)[0],
                               r.response_ids)
    assert (r.logprobs - ref_filtered)[r.mask].abs().max().item() < 1e-4
    assert (r.logprobs - r.ref_logprobs)[r.mask].min().item() > -1e-5
    # the rollout's values (from the sampling passes) equal the values recomputed from one full forward
    values = trainer.value_head(hidden)
    assert masked_mean(values.abs(), r.mask).item() > 0.1 and values[r.mask].std().item() > 0.01
    assert (values - r.values)[r.mask].abs().max().item() < 1e-4
    assert r.mask[:, 0].all()


@pytest.mark.slow
def test_short_training_raises_vader_reward(tmp_path):
    summary = run_training(overrides=small(tmp_path, steps=12, batch_size=32, minibatches=4, ppo_epochs=4,
                                           response_length=24, lr=3e-4, eval_samples_per_prompt=2, log_every=6,
                                           save_every=6))
    assert summary["score_gain"] > 0.1, summary
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 12 and metrics["kl_k1"].mean() >= 0
    assert metrics["kl_k1"].iloc[0] == pytest.approx(0, abs=1e-3)  # policy == base on the first rollout
    run = tmp_path / "run"
    for name in ("base", "tuned", "checkpoint", "config.toml", "eval.csv", "samples.jsonl", "summary.json",
                 "curves.png"):
        assert (run / name).exists(), name
    tuned = AutoModelForCausalLM.from_pretrained(run / "tuned")
    base = AutoModelForCausalLM.from_pretrained(run / "base")
    assert not torch.equal(tuned.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"eval", "rollout"} and {r["step"] for r in rows} >= {0, 6, 12}


@pytest.mark.parametrize("reward", ["periods", "python:reward_fns:length_reward"])
def test_other_gpt2_with_other_rewards(tmp_path, tiny_gpt2_dir, reward, monkeypatch):
    monkeypatch.chdir(tmp_path.parent if reward == "periods" else __import__("pathlib").Path(__file__).parent)
    summary = run_training(overrides=small(tmp_path, model=str(tiny_gpt2_dir), reward=reward, steps=3))
    assert summary["steps"] == 3
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics[["policy_loss", "value_loss", "kl_k1"]].notna().all().all()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "tuned")
    assert tuned.config.vocab_size == 300


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent)
    opts = small(tmp_path, reward="python:reward_fns:fail_at_call", steps=4, save_every=1, log_every=2)
    run_training(overrides={**opts, "out": str(tmp_path / "a")})
    # calls: eval@0 = 1, updates 1,2 = 2,3 (+ eval@2 = 4), update 3 = 5: fail inside update 3
    monkeypatch.setenv("RLHF_TEST_FAIL_AT_CALL", "5")
    import reward_fns

    reward_fns._calls["n"] = 0
    with pytest.raises(RewardError, match="simulated failure"):
        run_training(overrides={**opts, "out": str(tmp_path / "b")})
    assert len(pd.read_csv(tmp_path / "b" / "metrics.csv")) == 2
    monkeypatch.delenv("RLHF_TEST_FAIL_AT_CALL")
    run_training(overrides={**opts, "out": str(tmp_path / "b")}, resume=True)
    a = pd.read_csv(tmp_path / "a" / "metrics.csv").drop(columns=TIMING)
    b = pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "eval.csv"), pd.read_csv(tmp_path / "b" / "eval.csv"))
    ta = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "tuned").state_dict()
    tb = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "tuned").state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize(("reward", "needle"), [
    ("python:reward_fns:wrong_length", "returned 1 scores for"),
    ("python:reward_fns:nan_reward", "returned nan for sample"),
    ("python:reward_fns:raises", "raised RuntimeError: boom"),
    ("python:no_such_module:f", "cannot import module"),
    ("python:reward_fns:missing", "has no function"),
    ("nope", "unknown reward"),
])
def test_bad_rewards_are_one_line_errors(tmp_path, reward, needle):
    from pathlib import Path

    proc = run_cli("train", "--out", str(tmp_path / "r"), "--reward", reward, "--steps", "1", "--batch-size", "8",
                   "--minibatches", "2", "--response-length", "8", "--eval-samples-per-prompt", "1",
                   cwd=Path(__file__).parent)
    assert_one_line_error(proc, needle)
    if reward.startswith("python:reward_fns:") and reward != "python:reward_fns:missing":
        assert (tmp_path / "r" / "checkpoint" / "state.json").exists()  # state saved before stopping


@pytest.mark.parametrize(("args", "needle"), [
    (["--bogus-key", "1"], "unknown config key 'bogus_key'"),
    (["--lr", "-1"], "'lr' must be > 0"),
    (["--lam", "1.5"], "'lam' must be in [0, 1]"),
    (["--batch-size", "0"], "'batch_size' must be > 0"),
    (["--batch-size", "abc"], "'batch_size' must be int"),
    (["--batch-size", "10", "--minibatches", "4"], "divisible"),
])
def test_bad_config_values(tmp_path, args, needle):
    assert_one_line_error(run_cli("train", "--out", str(tmp_path / "r"), *args), needle)


def test_config_file_cli_precedence_and_saved_config(tmp_path):
    from rlhf_interp.ppo.config import apply_overrides, load_toml, parse_cli_overrides, to_toml

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[train]\nsteps = 7\nlr = 0.001\nadaptive_kl = true\n")
    cfg = apply_overrides(TrainConfig(), load_toml(cfg_file), "file")
    cfg = apply_overrides(cfg, parse_cli_overrides(["--steps", "3", "--no-whiten-advantages"]), "cli")
    assert (cfg.steps, cfg.lr, cfg.adaptive_kl, cfg.whiten_advantages) == (3, 0.001, True, False)
    saved = tmp_path / "saved.toml"
    saved.write_text(to_toml(cfg))
    assert apply_overrides(TrainConfig(), load_toml(saved), "saved") == cfg


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    run_training(overrides=small(tmp_path, steps=1))
    with pytest.raises(UserError, match="--resume"):
        run_training(overrides=small(tmp_path, steps=1))
    with pytest.raises(UserError, match="cannot change lr"):
        run_training(overrides=small(tmp_path, steps=2, lr=0.5), resume=True)
    summary = run_training(overrides=small(tmp_path, steps=2), resume=True)
    assert summary["steps"] == 2
    assert run_training(overrides=small(tmp_path, steps=1), overwrite=True)["steps"] == 1
