"""--log tensorboard / wandb: event files with TRL's metric names and text samples; CSV unchanged."""

import pandas as pd
import pytest

from rlhf_interp.ppo import run_training


def _opts(tmp_path, **kw):
    return {"out": str(tmp_path / "run"), "steps": 2, "batch_size": 8, "minibatches": 2, "ppo_epochs": 1,
            "response_length": 8, "eval_samples_per_prompt": 1, "log_every": 1, "save_every": 10, **kw}


def test_tensorboard_events_have_trl_names_and_samples(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(overrides=_opts(tmp_path, log="tensorboard"))
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
                 "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
                 "val/clipfrac_avg", "eval/score_mean"):
        assert name in tags, name
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    kl = [e.value for e in acc.Scalars("objective/kl")]
    assert [e.step for e in acc.Scalars("objective/kl")] == [1, 2]
    assert kl == pytest.approx(metrics.kl_k1.tolist(), rel=1e-5, abs=1e-9)
    assert [e.step for e in acc.Scalars("eval/score_mean")] == [0, 1, 2]
    assert "samples/text_summary" in acc.Tags()["tensors"]  # add_text is stored as a tensor summary


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_training(overrides=_opts(tmp_path, log="wandb", steps=1))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].glob("*.wandb"))
