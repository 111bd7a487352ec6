import torch

from rlhf_interp.models import load_causal_lm
from rlhf_interp.sampling import (
    decode_responses,
    encode_prompts,
    filter_logits,
    left_pad,
    position_ids_from_mask,
    sample,
    truncate_at_eos,
)


def test_left_pad_and_position_ids_by_hand():
    ids, mask = left_pad([[5, 6, 7], [8]], pad=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_truncate_at_eos_keeps_the_first_eos():
    responses = torch.tensor([[4, 1, 5, 1], [4, 5, 6, 7], [1, 4, 4, 4]])
    assert truncate_at_eos(responses, 1).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


def test_filter_logits_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    p = logits.softmax(-1)[0]  # 0.644, 0.237, 0.087, 0.032
    kept = torch.isfinite(filter_logits(logits, top_p=0.7)[0]).tolist()
    assert kept == [True, True, False, False]  # 0.644 < 0.7 so the second token is needed
    assert p[0] < 0.7 < p[0] + p[1]


def test_left_padding_does_not_change_logits():
    model, tok = load_causal_lm("embedded")
    ids, mask = encode_prompts(tok, ["This movie is", "The acting was not very"])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits
        alone = model(ids[0:1, mask[0]]).logits
    assert mask[0, 0].item() is False  # the first prompt is the shorter one: it was padded
    assert torch.allclose(padded[0, mask[0]], alone[0], atol=1e-4)


def test_sample_is_seeded_and_its_logprobs_match_a_full_forward():
    model, tok = load_causal_lm("embedded")
    prompts = ["This movie is", "The battery life of the phone was"]
    a = sample(model, tok, prompts, 12, temperature=0.8, generator=torch.Generator().manual_seed(0))
    b = sample(model, tok, prompts, 12, temperature=0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.response_ids, b.response_ids)
    # recompute log-probs in one forward over prompt + response (what PPO does), same temperature
    full = torch.cat([a.query_ids, a.response_ids], 1)
    full_mask = torch.cat([a.query_mask, torch.ones_like(a.response_mask)], 1)
    with torch.no_grad():
        logits = model(full, attention_mask=full_mask.long(), position_ids=position_ids_from_mask(full_mask)).logits
    q = a.query_ids.shape[1]
    lp = filter_logits(logits[:, q - 1 : -1], temperature=0.8).log_softmax(-1)
    lp = lp.gather(-1, a.response_ids.unsqueeze(-1)).squeeze(-1)
    m = a.response_mask
    assert torch.allclose(lp[m], a.logprobs[m], atol=1e-4)
    assert all(isinstance(t, str) for t in decode_responses(tok, a))


def test_batched_greedy_equals_one_prompt_at_a_time():
    """The batched, left-padded, KV-cached loop gives each prompt what it gets alone (greedy: top_k=1)."""
    model, tok = load_causal_lm("embedded")
    prompts = ["This movie is", "The battery life of the phone was not", "The plot", "These headphones are"]
    batched = sample(model, tok, prompts, 16, top_k=1)
    for i, p in enumerate(prompts):
        alone = sample(model, tok, [p], 16, top_k=1)
        assert torch.equal(alone.response_mask[0], batched.response_mask[i])
        assert torch.equal(alone.response_ids[0], batched.response_ids[i])
        m = alone.response_mask[0]
        assert torch.allclose(alone.logprobs[0, m], batched.logprobs[i, m], atol=1e-4)


def test_stop_at_eos_changes_nothing_inside_the_mask():
    """Early stop (every row has its EOS) leaves tokens, mask and in-mask log-probs as the full-length loop has them,
    for a fixed seed; the embedded model ends its reviews well inside 48 tokens, so the stop does happen."""
    model, tok = load_causal_lm("embedded")
    prompts = ["This movie is", "The acting was", "The screen was", "The price was"] * 2
    full = sample(model, tok, prompts, 48, generator=torch.Generator().manual_seed(3), return_hidden=True)
    early = sample(model, tok, prompts, 48, generator=torch.Generator().manual_seed(3), return_hidden=True,
                   stop_at_eos=True)
    assert full.response_mask.sum(-1).max() < 48  # every row has an EOS: the early loop did stop
    assert torch.equal(full.response_mask, early.response_mask)
    assert torch.equal(full.response_ids, early.response_ids)
    m = full.response_mask
    assert torch.equal(full.logprobs[m], early.logprobs[m])
    assert torch.equal(full.hidden[m], early.hidden[m])
    assert early.response_ids.shape == full.response_ids.shape and early.hidden.shape == full.hidden.shape
