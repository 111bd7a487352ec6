"""Regression tests for the trainer defects of issue 15 (each failed before its fix)."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlhf_interp.ppo import core, run_training
from rlhf_interp.ppo.config import TrainConfig, validate
from rlhf_interp.ppo.evaluation import split_prompts
from rlhf_interp.ppo.rollout import collect_rollout, forward_response
from rlhf_interp.ppo.rundir import RunFiles
from rlhf_interp.ppo.trainer import PPOTrainer
from rlhf_interp.sampling import has_eos

HERE = Path(__file__).parent
M = torch.tensor([[True, True, False], [True, False, False]])


def small(tmp_path, **kw):
    base = {"out": str(tmp_path / "run"), "steps": 3, "batch_size": 8, "minibatches": 2, "ppo_epochs": 2,
            "response_length": 12, "eval_samples_per_prompt": 1, "log_every": 3, "save_every": 10}
    return {**base, **kw}


def test_masked_statistics_ignore_inf_and_nan_on_padding():
    x = torch.tensor([[1.0, 3.0, float("-inf")], [2.0, float("nan"), float("inf")]], requires_grad=True)
    assert core.masked_mean(x, M).item() == pytest.approx(2.0)
    assert core.masked_sum(x, M, -1).tolist() == [4.0, 2.0]
    core.masked_mean(x, M).backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 2] == 0
    w = core.masked_whiten(x.detach(), M)
    assert torch.isfinite(w).all() and (w[~M] == 0).all()
    rewards, non_score = core.compute_rewards(torch.tensor([1.0, 1.0]), x.detach(), 0.1, M)
    assert torch.isfinite(rewards).all() and torch.isfinite(non_score).all()
    adv, ret = core.compute_gae(rewards, x.detach(), M)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()


def test_entropy_gradient_is_finite_with_filtered_logits():
    logits = torch.tensor([[[2.0, 1.0, float("-inf"), float("-inf")]]], requires_grad=True)
    h = core.entropy_from_logits(logits)
    p = torch.tensor([2.0, 1.0]).softmax(-1)
    assert h.item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_policy_loss_finite_when_a_token_left_the_filtered_set():
    logp = torch.tensor([[float("-inf"), -1.0, float("-inf")]])  # token 0 real but now filtered; token 2 padding
    old = torch.tensor([[-2.0, -1.0, -0.5]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = core.clipped_policy_loss(logp, old, torch.tensor([[1.0, 1.0, 1.0]]), mask, 0.2)
    assert math.isfinite(loss.item()) and math.isfinite(stats["ratio"].item())


def test_kl_controller_ignores_non_finite_kl():
    ctl = core.KLController(0.2, target=6.0, horizon=10_000)
    ctl.update(float("nan"), 64)
    ctl.update(float("inf"), 64)
    assert ctl.value == 0.2
    ctl.update(12.0, 64)
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 64 / 10_000))


def test_has_eos_counts_an_eos_in_the_last_position():
    eos = 7
    ids = torch.tensor([[1, 2, 3, eos], [1, eos, 0, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    assert has_eos(ids, mask, eos).tolist() == [True, True, False]
    assert (mask.sum(-1) < 4).tolist() == [False, True, False]  # the old rule missed the first row


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.5)])
def test_reference_is_scored_with_temperature_only(tmp_path, top_k, top_p):
    cfg = validate(TrainConfig(out=str(tmp_path), batch_size=16, response_length=16, temperature=0.8,
                               top_k=top_k, top_p=top_p))
    t = PPOTrainer(cfg, RunFiles(tmp_path))
    r = collect_rollout(t.policy, t.ref, t.value_head, t.tokenizer, t.prompts[:16], cfg,
                        torch.Generator().manual_seed(0))
    assert torch.isfinite(r.ref_logprobs).all()  # padding after EOS included
    with torch.no_grad():
        logits, _ = forward_response(t.ref, r.query_ids, r.query_mask, r.response_ids, cfg, filtered=False)
        q = r.query_ids.shape[1]
        ids = torch.cat([r.query_ids, r.response_ids], 1)
        attn = torch.cat([r.query_mask, torch.ones_like(r.response_ids, dtype=torch.bool)], 1)
        from rlhf_interp.sampling import position_ids_from_mask

        full = t.ref(input_ids=ids, attention_mask=attn.long(), position_ids=position_ids_from_mask(attn)).logits
    expected = (full[:, q - 1 : -1].float() / 0.8).log_softmax(-1)
    assert torch.allclose(logits.log_softmax(-1), expected, atol=1e-4)
    k1, _ = core.kl_estimates(r.logprobs, r.ref_logprobs)
    # a filtered sampler puts more mass on each kept token than the unfiltered reference: KL >= 0 per sequence
    assert torch.isfinite(core.masked_sum(k1, r.mask, -1)).all()
    assert (core.masked_sum(k1, r.mask, -1) > -1e-4).all()


@pytest.mark.parametrize("opts", [{"top_k": 50}, {"top_p": 0.9}, {"top_k": 50, "ent_coef": 0.01},
                                  {"ent_coef": 0.05, "adaptive_kl": True}])
def test_filtered_and_entropy_training_keeps_finite_kl(tmp_path, opts):
    summary = run_training(overrides=small(tmp_path, **opts))
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(m) == 3 and (m.skipped_steps == 0).all()
    cols = ["kl_k1", "kl_k3", "policy_loss", "value_loss", "entropy", "reward_total", "kl_coef"]
    assert m[cols].notna().all().all() and torch.isfinite(torch.tensor(m[cols].to_numpy())).all()
    assert math.isfinite(summary["eval_after"]["kl"])
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert math.isfinite(state["trainer"]["kl_coef"])


def test_missing_eos_penalty_is_subtracted_from_responses_without_eos(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    run_training(overrides=small(tmp_path, reward="python:reward_fns:zero_reward", missing_eos_penalty=2.0,
                                 response_length=6))
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert (m.eos_rate < 1).any()  # six tokens: some responses have no EOS
    assert m.score_mean.to_numpy() == pytest.approx((-2.0 * (1 - m.eos_rate)).to_numpy(), abs=1e-6)


def test_whiten_scores_keeps_running_moments_of_the_raw_scores(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    run_training(overrides=small(tmp_path, reward="python:reward_fns:length_reward", whiten_scores=True,
                                 save_every=1))
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    moments = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["trainer"]["score_moments"]
    assert moments["count"] == pytest.approx(3 * 8)
    assert moments["mean"] == pytest.approx(m.score_mean.mean(), rel=1e-5)  # equal batch sizes: mean of means
    # the score added at the last token is whitened: the raw mean is far from 0, the shaped reward is not
    assert abs(m.score_mean.mean()) > 1 and abs(m.reward_total.iloc[-1]) < abs(m.score_mean.iloc[-1])


def test_evaluation_prompts_are_held_out(tmp_path):
    train, held = split_prompts([f"p{i}" for i in range(16)] * 2, 0.25)
    assert len(held) == 4 and not set(held) & set(train) and len(train) == 24
    assert split_prompts(["only"], 0.25) == (["only"], ["only"])
    run_training(overrides=small(tmp_path, steps=1))
    run = tmp_path / "run"
    tr, ev = (run / "prompts_train.txt").read_text().splitlines(), (run / "prompts_eval.txt").read_text().splitlines()
    assert len(ev) == 4 and len(tr) == 12 and not set(tr) & set(ev)
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rows if r["split"] == "eval"} == set(ev)
    assert {r["prompt"] for r in rows if r["split"] == "rollout"} <= set(tr)
    assert json.loads((run / "summary.json").read_text())["eval_held_out"] is True


def test_eval_prompts_file(tmp_path):
    f = tmp_path / "eval.txt"
    f.write_text("The acting was\nThe plot is\n")
    run_training(overrides=small(tmp_path, steps=1, eval_prompts=str(f)))
    ev = pd.read_csv(tmp_path / "run" / "eval.csv")
    assert len(ev) == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rows if r["split"] == "eval"} == {"The acting was", "The plot is"}


def test_compare_behaviour_counts_an_eos_in_the_last_position(tiny_gpt2_dir):
    """compare's behaviour table: a response whose only token is EOS has an EOS (the old rule said it had none)."""
    from types import SimpleNamespace

    from rlhf_interp.analysis.behaviour import behaviour
    from rlhf_interp.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_gpt2_dir))
    with torch.no_grad():  # final LN outputs its bias only: logits = W_E · (1000 * e_EOS), EOS is the argmax
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(1000 * model.transformer.wte.weight[tok.eos_token_id])
    run = lambda ids: model(ids).logits  # noqa: E731
    pair = SimpleNamespace(prompts=["a b", "c"], tokenizer=tok, device="cpu", hf=lambda name: model,
                           release_hf=lambda: None, base=run, tuned=run)
    tables = behaviour(pair, reward="vader", samples_per_prompt=2, new_tokens=1)
    assert tables["behaviour"].eos.all() and (tables["behaviour"].length == 1).all()
    assert (tables["behaviour_summary"].eos_rate == 1.0).all()
