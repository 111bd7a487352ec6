"""PPO pieces against hand computations and reference loops."""

import math

import pytest
import torch

from rlhf_interp.ppo import core

M = torch.tensor([[True, True, True], [True, True, False]])


def test_masked_mean_var_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert core.masked_mean(x, M).item() == pytest.approx(3.0)  # (1+2+3+4+5)/5, the 100 is padding
    assert core.masked_var(x, M).item() == pytest.approx(2.5)  # sample variance of 1..5
    w = core.masked_whiten(x, M)
    assert w[1, 2].item() == 0.0
    valid = w[M]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.var().item() == pytest.approx(1.0, abs=1e-5)
    assert w[0, 0].item() == pytest.approx((1 - 3) / math.sqrt(2.5), abs=1e-5)


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    k1, k3 = core.kl_estimates(logp, ref)
    assert k1.tolist() == pytest.approx([math.log(2), -math.log(2)])
    # k3 = (r - 1) - log r, r = q/p: r=0.5 -> -0.5 + ln 2; r=2 -> 1 - ln 2
    assert k3.tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    assert (k3 >= 0).all()


def test_kl_estimators_expectation_matches_exact_kl():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(50), torch.randn(50)
    p, logp, logq = p_logits.softmax(-1), p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    exact = (p * (logp - logq)).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True)
    k1, k3 = core.kl_estimates(logp[tokens], logq[tokens])
    assert k1.mean().item() == pytest.approx(exact.item(), rel=0.05)
    assert k3.mean().item() == pytest.approx(exact.item(), rel=0.05)
    assert exact.item() > 0


def test_rewards_score_at_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    rewards, non_score = core.compute_rewards(torch.tensor([1.0, 2.0]), kl, 0.5, M)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert non_score[1, 2].item() == 0.0


def gae_reference(rewards, values, lengths, gamma, lam):
    """Textbook per-episode loop over valid tokens, terminal after the last one."""
    out = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        for t in range(n):
            adv, discount = 0.0, 1.0
            for k in range(t, n):
                next_v = values[b, k + 1] if k + 1 < n else 0.0
                delta = rewards[b, k] + gamma * next_v - values[b, k]
                adv += discount * delta
                discount *= gamma * lam
            out[b, t] = adv
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_against_reference_loop(gamma, lam):
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.arange(6).expand(3, 6) < torch.tensor(lengths)[:, None]
    adv, ret = core.compute_gae(rewards, values, mask, gamma, lam)
    ref = gae_reference(rewards, values, lengths, gamma, lam)
    assert torch.allclose(adv, ref, atol=1e-5)
    assert torch.allclose(ret[mask], (ref + values)[mask], atol=1e-5)
    assert (adv[~mask] == 0).all()


def test_gae_by_hand():
    # two tokens, gamma=1, lam=1: A_1 = r1 - v1; A_0 = r0 + v1 - v0 + A_1 = r0 + r1 - v0
    adv, _ = core.compute_gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2).bool(), 1, 1)
    assert adv[0].tolist() == pytest.approx([2.5, 1.75])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = core.clipped_policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: max(-2.2, -2.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_clipped_value_loss_by_hand():
    values, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    loss, frac = core.clipped_value_loss(values, old, ret, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    # token 0: unclipped (1-2)^2=1, clipped (0.2-2)^2=3.24 -> 3.24; token 1: 1 and 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_entropy_and_logprobs():
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]]])
    assert core.entropy_from_logits(logits).item() == pytest.approx(math.log(2))
    assert core.logprobs_of(logits, torch.tensor([[1]])).item() == pytest.approx(-math.log(2))
    logp = logits.log_softmax(-1)  # what the trainer computes once for both
    assert core.entropy_from_logprobs(logp).item() == pytest.approx(math.log(2))
    assert core.token_logprobs(logp, torch.tensor([[3]])).item() == float("-inf")  # a filtered token


def test_adaptive_kl_controller():
    ctl = core.KLController(0.1, target=6.0, horizon=10_000)
    ctl.update(12.0, 1000)  # error clipped to +0.2 -> beta * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    fixed = core.KLController(0.1)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.1


def test_running_moments_match_numpy():
    torch.manual_seed(2)
    xs = [torch.randn(7) * 3 + 1, torch.randn(5), torch.randn(9) - 2]
    rm = core.RunningMoments()
    for x in xs:
        rm.update(x)
    allx = torch.cat(xs)
    assert rm.mean == pytest.approx(allx.mean().item(), abs=1e-5)
    assert rm.var == pytest.approx(allx.var(unbiased=False).item(), abs=1e-4)


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert core.explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.zeros(1, 3) + 2, ret, mask) == pytest.approx(0.0)
