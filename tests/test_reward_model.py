"""Reward model from preference pairs: the pair format, Bradley–Terry training, `rm:DIR`, and `reward:DIR` as the
metric of `compare`; pairs -> RM -> PPO -> compare end to end."""

import json

import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, run_cli

from rlhf_interp.errors import UserError
from rlhf_interp.rewards import get_reward
from rlhf_interp.rewards.reward_model import (
    Pair,
    RMConfig,
    builtin_pairs,
    load_pairs,
    load_reward_model,
    raw_scores,
    train_reward_model,
)


def _write_pairs(path, n=48):
    rows = []
    for i in range(n):  # a learnable preference: "great" continuations over "awful" ones
        rows.append({"prompt": "This movie is", "chosen": f" great and fun {i % 5}",
                     "rejected": f" awful and dull {i % 7}"})
    rows.append({"chosen": "The plot is great", "rejected": "The plot is awful"})  # implicit shared prefix
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pair_file_format_and_errors(tmp_path):
    pairs = load_pairs(_write_pairs(tmp_path / "p.jsonl"))
    assert pairs[0] == Pair("This movie is", " great and fun 0", " awful and dull 0")
    assert pairs[-1].texts == ("The plot is great", "The plot is awful")
    bad = tmp_path / "bad.jsonl"
    for text, needle in [('{"chosen": "a"}\n{"chosen": "a", "rejected": "b"}\n', ":1: needs string fields"),
                         ('{"chosen": "a", "rejected": "b"}\nnot json\n', ":2: not valid JSON"),
                         ('{"chosen": "a", "rejected": "a"}\n', "same text"),
                         ('{"chosen": "a", "rejected": "b"}\n', "at least 2")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=needle):
            load_pairs(bad)


def test_builtin_pairs_share_an_opening_and_come_from_opposite_reviews():
    pairs = builtin_pairs(0)
    assert len(pairs) > 2000
    assert all(p.chosen != p.rejected and p.chosen.startswith(" ") for p in pairs)
    assert {p.prompt for p in pairs} >= {"This movie is", "The acting was", "The plot is"}
    assert all(len(p.chosen.split()) <= 12 for p in pairs)
    assert builtin_pairs(0) == pairs  # seeded


def test_reward_model_learns_pairs_and_scores_normalised(tmp_path):
    card = train_reward_model(RMConfig(pairs=str(_write_pairs(tmp_path / "p.jsonl")), out=str(tmp_path / "rm"),
                                       epochs=3, lr=1e-3, eval_fraction=0.2))
    assert card["heldout_after"]["accuracy"] == 1.0 and card["heldout_after"]["margin_mean"] > 0.5
    for name in ("config.json", "model.safetensors", "tokenizer.json", "reward_norm.json", "rm_card.json"):
        assert (tmp_path / "rm" / name).exists(), name
    model, tok, norm = load_reward_model(tmp_path / "rm")
    assert model.config.num_labels == 1
    pairs = load_pairs(tmp_path / "p.jsonl")
    # the stored mean/std are those of the training responses' raw scores: normalised scores have mean ~0 over all
    reward = get_reward(f"rm:{tmp_path / 'rm'}")
    s = torch.tensor(reward([t for p in pairs for t in p.texts]))
    assert abs(s.mean().item()) < 0.3 and 0.7 < s.std().item() < 1.3
    with torch.no_grad():
        raw = raw_scores(model, tok, ["This movie is great", "This movie is awful"])
    assert reward(["This movie is great", "This movie is awful"]) == pytest.approx(
        ((raw - norm["mean"]) / norm["std"]).tolist(), abs=1e-5)
    # batching and padding do not change a text's score
    with torch.no_grad():
        alone = raw_scores(model, tok, ["This movie is great"])
    assert alone.item() == pytest.approx(raw[0].item(), abs=1e-5)
    # a classifier reward reads the same directory (raw logit)
    clf = get_reward(f"classifier:{tmp_path / 'rm'}", output="logit")
    assert len(clf(["This movie is great"])) == 1


def test_reward_model_cli_errors(tmp_path):
    assert_one_line_error(run_cli("reward-model", "--out", str(tmp_path / "rm"), "--pairs", str(tmp_path / "none")),
                          "preference file not found")
    assert_one_line_error(run_cli("train", "--out", str(tmp_path / "r"), "--reward", f"rm:{tmp_path}", "--steps", "1"),
                          "not a directory written by `rlhf-interp reward-model`")


@pytest.mark.slow
def test_pairs_to_reward_model_to_ppo_to_compare(tmp_path):
    from rlhf_interp.analysis import compare
    from rlhf_interp.ppo import run_training

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                             for p in builtin_pairs(0)[:160]))
    proc = run_cli("reward-model", "--pairs", str(pairs), "--out", str(tmp_path / "rm"), "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "held out: accuracy" in proc.stdout
    rm = tmp_path / "rm"
    summary = run_training(overrides={"out": str(tmp_path / "run"), "reward": f"rm:{rm}", "steps": 2,
                                      "batch_size": 8, "minibatches": 2, "ppo_epochs": 1, "response_length": 10,
                                      "eval_samples_per_prompt": 2, "log_every": 2})
    assert summary["steps"] == 2
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert m[["score_mean", "kl_k1", "policy_loss"]].notna().all().all()
    # the RM as the metric: on the RM's own trunk the metric equals the RM's normalised score of the prompt
    prompts = ["This movie is", "The acting was", "The plot is"]
    tables = compare("embedded", str(rm / "trunk"), prompts=prompts, metric=f"reward:{rm}", analyses="logit_diff,dla",
                     out=tmp_path / "cmp", report=False)
    summary_cmp = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    expected = get_reward(f"rm:{rm}")(prompts)
    assert summary_cmp["metric"]["tuned"] == pytest.approx(sum(expected) / 3, abs=1e-3)
    assert "dla" in " ".join(tables)
    # compare on the PPO run with the RM metric
    compare(str(tmp_path / "run"), prompts=prompts, metric=f"reward:{rm}", analyses="logit_diff",
            out=tmp_path / "cmp2", report=False)
    assert json.loads((tmp_path / "cmp2" / "summary.json").read_text())["metric"]["name"] == f"reward:{rm}"
