"""Model-diffing analyses (adl, amplification, diff_mining) on planted changes the tests make."""

import pytest
import torch

from rlhf_interp.analysis.adl import adl
from rlhf_interp.analysis.amplification import amplification, lockstep_sample
from rlhf_interp.analysis.diff_mining import diff_mining
from rlhf_interp.analysis.pair import load_pair
from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm, resolve_model_spec, save_model
from rlhf_interp.prompts import EMBEDDED_PROMPTS
from rlhf_interp.sampling import sample_seeded

LAYER, NEURON = 2, 123


def self_margin_token(model, tok) -> int:
    """A word token whose own (LN-gain weighted) unembedding direction reads back as itself first, by the widest
    margin: the planted direction then has an unambiguous top token."""
    W = model.transformer.wte.weight.detach()
    g = model.transformer.ln_f.weight.detach()
    d = (W * g) - (W * g).mean(-1, keepdim=True)
    scores = (d * g) @ W.T  # logits of every token j for direction d_t (rows t)
    self_s = scores.diagonal().clone()
    scores.fill_diagonal_(-float("inf"))
    margin = self_s - scores.max(-1).values
    words = [i for i in range(W.shape[0]) if tok.decode([i]).strip().isalpha() and len(tok.decode([i]).strip()) > 3]
    return max(words, key=lambda i: margin[i].item())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The embedded model with MLP neuron (LAYER, NEURON) switched on and writing one token's unembedding direction."""
    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    t = self_margin_token(model, tok)
    d = model.transformer.wte.weight.detach()[t] * model.transformer.ln_f.weight.detach()
    d = d / d.norm()
    mlp = model.transformer.h[LAYER].mlp
    with torch.no_grad():
        mlp.c_fc.bias[NEURON] += 3.0  # (nearly) always on
        mlp.c_proj.weight[NEURON] += 10.0 * d  # dominates the change of its old output (act_t - act_b) * w_old
    out = tmp_path_factory.mktemp("diffing") / "neuron"
    save_model(model, tok, out)
    pair = load_pair(resolve_model_spec("embedded"), resolve_model_spec(out), list(EMBEDDED_PROMPTS), "logit_diff")
    return pair, t, out


def test_adl_puts_the_planted_token_first_at_its_layer(planted):
    pair, t, _ = planted
    ctx = {"seed": 0, "new_tokens": 16}
    tables = adl(pair, ctx)
    df, norms = tables["adl"], tables["adl_norm"]
    top = df[(df.direction == "promoted") & (df["rank"] == 0)].set_index("layer")
    assert top.loc[LAYER, "token_id"] == t
    assert norms.norm[norms.layer < LAYER].max() < 1e-5 * norms.norm[norms.layer == LAYER].item()
    assert norms.norm[norms.layer == LAYER].item() > 1.0
    assert set(df.layer) == set(range(LAYER, 4))  # no token list where there is no difference
    assert "adl_steering" not in tables  # no reward in ctx: no steering
    # the diff at the planted layer points along the planted direction (centred, as the bridge's residual)
    model, _ = load_causal_lm(str(EMBEDDED_DIR))
    d = model.transformer.wte.weight.detach()[t] * model.transformer.ln_f.weight.detach()
    d = d - d.mean()
    cos = torch.nn.functional.cosine_similarity(ctx["adl_delta"][LAYER], d, dim=0)
    assert cos.item() > 0.99


def test_diff_corpus_file_and_mining(planted, tmp_path):
    pair, t, _ = planted
    corpus = tmp_path / "c.txt"
    corpus.write_text("the movie was long\n\nI liked the phone a lot\nthe end\n")
    ctx = {"seed": 0, "diff_corpus": str(corpus)}
    df = diff_mining(pair, ctx)
    assert sum(b.shape[0] for b in ctx["diff_corpus_tokens"]) == 3
    promoted = df[df.direction == "promoted"]
    assert promoted.iloc[0].token_id == t
    n = promoted.iloc[0].positions
    assert promoted.iloc[0]["count"] == n  # top-1 at every position read
    assert promoted.iloc[0].mean_logit_diff > 0


def test_steering_alpha_zero_is_base_and_positive_alpha_moves_towards_tuned(planted):
    pair, _, _ = planted
    tables = adl(pair, {"seed": 0, "new_tokens": 8, "reward": "periods", "samples_per_prompt": 1})
    st = tables["adl_steering"].set_index("alpha")
    assert abs(st.loc[0.0, "kl_vs_base"]) < 1e-5
    assert st.loc[4.0, "kl_vs_base"] > st.loc[1.0, "kl_vs_base"] > 0


def test_amplification_alpha_zero_is_tuned_sampling(planted):
    pair, t, out = planted
    prompts = [p for p in EMBEDDED_PROMPTS for _ in range(2)]
    model, tok = load_causal_lm(str(out))
    ref, texts = sample_seeded(model, tok, prompts, 12, seed=3)
    amp = lockstep_sample([pair.hf("tuned"), pair.hf("base")], lambda ls: ls[0] + 0.0 * (ls[0] - ls[1]), tok,
                          prompts, 12, seed=3, kl_against=(0,))
    assert torch.equal(amp["response_ids"], ref.response_ids.cpu())
    assert amp["texts"] == texts
    assert amp["kl"][0].abs().max().item() < 1e-5
    tables = amplification(pair, "periods", 2, 12, seed=3, alphas=(0.0, 2.0))
    s = tables["amplification"].set_index("alpha")
    assert s.loc[0.0, "kl_vs_tuned"] < 1e-5 < s.loc[2.0, "kl_vs_tuned"]
    assert s.loc[2.0, "kl_vs_base"] > s.loc[0.0, "kl_vs_base"]  # amplifying moves further from base
    samp = tables["amplification_samples"]
    assert list(samp[samp.alpha == 0.0].response) == texts
    # the planted token is boosted by the difference: amplified sampling writes it at least as often
    word = pair.tokenizer.decode([t])
    assert samp[samp.alpha == 2.0].response.str.count(word).sum() >= samp[samp.alpha == 0.0].response.str.count(
        word).sum() > 0
