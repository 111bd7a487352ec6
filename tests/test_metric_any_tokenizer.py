"""The metric for any tokenizer: `logprob_diff` on the TRL-style pair (a tiny GPT-2 with its own 1,024-token BPE
vocabulary in which no sentiment word is one token, as a pair fine-tuned by TRL from such a model would be).

- the full `compare` runs on it without refusing, summary.json says which metric ran and why, and a planted head
  tops patching (exactly, 100% of the gap) and DLA of the first-token term;
- the metric equals a plain-transformers computation, one unpadded sequence at a time;
- where every word is one token it equals logit_diff (and a one-word-each logprob_diff equals the target:TEXT
  difference, the old log-prob definition);
- patching, ablation and the fused engine on it equal hooked full forwards of plain transformers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from arch_models import make_tiny_model
from helpers import plant_head as plant_single_token_head
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import rlhf_interp
from rlhf_interp.analysis.metric import NEGATIVE_WORDS, POSITIVE_WORDS, LogprobDiff, build_metric, single_token_ids
from rlhf_interp.analysis.pair import metric_per_prompt
from rlhf_interp.embedded.corpus import generate_reviews
from rlhf_interp.embedded.pretrain import train_tokenizer
from rlhf_interp.models import load_causal_lm, save_model
from rlhf_interp.sampling import prompt_token_ids

WORDS = POSITIVE_WORDS + NEGATIVE_WORDS
CANDIDATE_PROMPTS = ["This movie is", "The acting was", "The plot is", "The ending was", "This film is",
                     "The script was", "The design is", "The price was"]
PLANTED = (1, 1)


def trl_style_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE trained with `tokenizers` on reviews with every sentiment word blanked out, so that none of
    them is merged into one token (as in a small vocabulary of its own)."""
    pattern = re.compile(r"\b(" + "|".join(WORDS) + r")\b", re.IGNORECASE)
    texts = [pattern.sub("the", r) for r in generate_reviews(400, seed=0)]
    return train_tokenizer(texts, vocab_size)


def plant_first_token_head(src: Path, out: Path, layer: int, head: int, alpha: float = 30.0) -> Path:
    """Copy of `src` whose head writes alpha × the direction that raises logprob_diff's first-token term (through the
    final LayerNorm gain) at every position: a value bias u and an OV map u -> direction (as helpers.plant_head)."""
    model, tok = load_causal_lm(str(src))
    metric = build_metric("logprob_diff", tok)
    wte = model.transformer.wte.weight.detach()
    d = (wte[list(metric.positive.values())].mean(0) - wte[list(metric.negative.values())].mean(0))
    d = d * model.transformer.ln_f.weight.detach()
    d = d / d.norm()
    attn = model.transformer.h[layer].attn
    d_model, n_heads = model.config.n_embd, model.config.n_head
    d_head = d_model // n_heads
    u = torch.randn(d_head, generator=torch.Generator().manual_seed(7))
    u = 3 * u / u.norm()
    with torch.no_grad():
        attn.c_attn.bias[2 * d_model + head * d_head : 2 * d_model + (head + 1) * d_head] += u
        attn.c_proj.weight[head * d_head : (head + 1) * d_head] += alpha * torch.outer(u, d) / u.dot(u)
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="module")
def trl_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """base/ (random tiny GPT-2, its own 1,024-token vocabulary), tuned/ (a planted head), noisy/ (base with every
    weight perturbed), prompts of one length."""
    root = tmp_path_factory.mktemp("trl_style")
    torch.manual_seed(0)
    tok = trl_style_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_model(GPT2LMHeadModel(config).eval(), tok, root / "base")
    plant_first_token_head(root / "base", root / "tuned", *PLANTED)
    noisy, _ = load_causal_lm(str(root / "base"))  # every weight changed: no cell is trivially zero
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for param in noisy.parameters():
            param += 0.3 * param.std() * torch.randn(param.shape, generator=g)
    save_model(noisy, tok, root / "noisy")
    length = len(prompt_token_ids(tok, CANDIDATE_PROMPTS[0]))
    same = [p for p in CANDIDATE_PROMPTS if len(prompt_token_ids(tok, p)) == length][:2]
    assert len(same) == 2
    return {"root": root, "tokenizer": tok, "prompts": same}


def test_trl_style_vocabulary_splits_every_sentiment_word(trl_pair: dict) -> None:
    tok = trl_pair["tokenizer"]
    assert len(tok) == 1024
    assert single_token_ids(tok, WORDS) == {}
    metric = build_metric("logit_diff", tok)  # the default no longer refuses: it falls back
    assert isinstance(metric, LogprobDiff) and metric.name == "logprob_diff"
    assert "0 of 17 positive and 0 of 17 negative words are single tokens" in metric.reason
    assert metric.rows_per_prompt == 34 and metric.read_positions == max(
        len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS)


@pytest.mark.slow
def test_trl_style_pair_runs_full_compare_with_logprob_diff(trl_pair: dict, tmp_path: Path) -> None:
    root, out = trl_pair["root"], tmp_path / "cmp"
    prompts = [*trl_pair["prompts"], "I watched this film last night and"]  # a second prompt length too
    t = rlhf_interp.compare(str(root / "base"), str(root / "tuned"), prompts=prompts, samples_per_prompt=1,
                            new_tokens=4, out=out, strict=False)
    summary = json.loads((out / "summary.json").read_text())
    assert "failed" not in summary, summary.get("failed")
    m = summary["metric"]
    assert m["name"] == "logprob_diff"
    assert "single tokens" in m["reason"] and "full tokenization" in m["reason"]
    assert sorted(m["positive"]) == sorted(POSITIVE_WORDS) and all(len(v) > 1 for v in m["tokenization"].values())
    assert m["scope"]["dla"].startswith("the first-token term") and m["scope"]["patching"].startswith("exact")
    assert m["gap"] > 0.2  # the planted head raises the metric

    ld = t["logit_diff"].set_index(["prompt", "model"]).metric
    assert ld[("(mean)", "delta")] == pytest.approx(m["gap"], abs=1e-5)
    # the planted head is the only change: patching its whole output recovers the whole gap, every other head none
    ph = t["patching_heads"][t["patching_heads"].direction == "tuned_to_base"].set_index(["layer", "head"]).effect
    assert ph[PLANTED] == pytest.approx(1.0, abs=1e-3)
    assert ph.drop(PLANTED).abs().max() < 1e-3
    # DLA decomposes the first-token term exactly and finds the head in its activation part
    dl = t["dla_layers"]
    assert (dl.term == "first_token").all() and (t["logit_lens"].term == "first_token").all()
    total = dl[dl.component == "total"].set_index("model").attribution
    assert total["delta"] == pytest.approx(m["first_token_term"]["gap"], abs=1e-4)
    heads = t["dla_heads"][t["dla_heads"].model == "delta_activation"]
    assert tuple(heads.loc[heads.attribution.abs().idxmax(), ["layer", "head"]]) == PLANTED
    # per-position tables stop at the prompt; the closing rows still close the books
    pl = t["patching_layers"]
    cells = pl[pl.component.isin(["resid_pre", "attn_out", "mlp_out"])]
    assert cells.pos.max() == len(prompt_token_ids(trl_pair["tokenizer"], prompts[0])) - 1
    both = pl[pl.component == "final_resid+unembed"].set_index("direction").effect
    assert both.tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    ab = t["ablation"][(t["ablation"].model == "tuned") & (t["ablation"].kind == "zero")
                       & (t["ablation"].component == "head")]
    assert tuple(ab.loc[ab.effect.abs().idxmax(), ["layer", "head"]]) == PLANTED
    assert t["attribution_patching"].pos.max() == cells.pos.max()
    full = t["direction"][t["direction"].method == "full_difference"].set_index("layer").recovery
    assert full.notna().all() and full[1] > 0.5  # the last prompt position after the planted head carries most
    html = (out / "report.html").read_text()
    assert "logprob_diff" in html and "first-token term" in html


def _hf_word_logprob(model, ids: list[int], n_prompt: int, hooks: list | None = None) -> float:
    """log p(ids[n_prompt:] | ids[:n_prompt]) with plain transformers: one unpadded sequence, optional hooks."""
    handles = [module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
               for module, fn, pre in (hooks or [])]
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
    finally:
        for h in handles:
            h.remove()
    lp = logits.log_softmax(-1)
    return sum(lp[n_prompt - 1 + k, t].item() for k, t in enumerate(ids[n_prompt:]))


def _hf_metric(model, tok, metric: LogprobDiff, prompts: list[str], hooks_for=None) -> float:
    """Mean over prompts of (mean positive − mean negative) word log-prob, one sequence at a time;
    `hooks_for(ids, n_prompt)` gives the hooks of that sequence's forward."""
    values = []
    for prompt in prompts:
        p_ids = prompt_token_ids(tok, prompt)
        side = []
        for words in (metric.positive_ids, metric.negative_ids):
            lps = [_hf_word_logprob(model, p_ids + w, len(p_ids), hooks_for(p_ids + w, len(p_ids))
                                    if hooks_for else None) for w in words.values()]
            side.append(sum(lps) / len(lps))
        values.append(side[0] - side[1])
    return sum(values) / len(values)


def test_logprob_diff_equals_plain_transformers_one_sequence_at_a_time(trl_pair: dict) -> None:
    root, prompts = trl_pair["root"], [*trl_pair["prompts"], "I watched this film last night and"]
    pair = rlhf_interp.load_pair(str(root / "base"), str(root / "tuned"), prompts=prompts)
    metric = pair.metric
    assert isinstance(metric, LogprobDiff)
    assert len(pair.groups) == 2 and all(t.shape[0] == len(i) * 34 for i, t in pair.groups)
    for name in ("base", "tuned"):
        hf = AutoModelForCausalLM.from_pretrained(root / name).eval()
        batched = metric_per_prompt(pair.model(name), pair)
        for i, prompt in enumerate(prompts):
            assert batched[i].item() == pytest.approx(_hf_metric(hf, pair.tokenizer, metric, [prompt]), abs=2e-4)
        # the first-token term is the first-token log-prob difference (the shared normaliser cancels)
        for idx, tokens in pair.groups:
            term = metric.first_token_term(pair.model(name)(tokens))
            for b, i in enumerate(idx):
                p_ids = prompt_token_ids(pair.tokenizer, prompts[i])
                with torch.no_grad():
                    lp = hf(torch.tensor([p_ids])).logits[0, -1].float().log_softmax(-1)
                ref = lp[list(metric.positive.values())].mean() - lp[list(metric.negative.values())].mean()
                assert term[b].item() == pytest.approx(ref.item(), abs=1e-4)


def test_logprob_diff_equals_old_definitions_where_they_coincide(trl_pair: dict, tmp_path: Path) -> None:
    # single-token words: logprob_diff on exactly logit_diff's words is logit_diff, prompt by prompt, and so is
    # every patching effect
    base = make_tiny_model("gpt2", tmp_path / "base")
    tuned = plant_single_token_head(base, tmp_path / "tuned", *PLANTED)
    prompts = ["This movie is", "The acting was", "I thought the plot"]
    old = rlhf_interp.load_pair(str(base), str(tuned), prompts=prompts)
    assert old.metric.name == "logit_diff" and "single tokens" in old.metric.reason
    pos, neg = ",".join(old.metric.positive), ",".join(old.metric.negative)
    new = rlhf_interp.load_pair(str(base), str(tuned), prompts=prompts, metric="logprob_diff", positive=pos,
                                negative=neg)
    assert isinstance(new.metric, LogprobDiff) and new.metric.read_positions == 1
    for name in ("base", "tuned"):
        assert torch.allclose(metric_per_prompt(new.model(name), new), metric_per_prompt(old.model(name), old),
                              atol=1e-4)
    heads_old, heads_new = rlhf_interp.analyses.patching(old), rlhf_interp.analyses.patching(new)
    for table in ("patching_heads", "patching_layers"):
        a, b = heads_old[table].effect.to_numpy(), heads_new[table].effect.to_numpy()
        assert a.shape == b.shape and abs(a - b).max() < 1e-3, table
    # multi-token words: logprob_diff with one word a side is the difference of the two target:TEXT log-probs
    root, tok, p2 = trl_pair["root"], trl_pair["tokenizer"], trl_pair["prompts"]
    one = rlhf_interp.load_pair(str(root / "base"), str(root / "tuned"), prompts=p2, metric="logprob_diff",
                                positive="wonderful", negative="boring")
    great = rlhf_interp.load_pair(str(root / "base"), str(root / "tuned"), prompts=p2, metric="target: wonderful")
    dull = rlhf_interp.load_pair(str(root / "base"), str(root / "tuned"), prompts=p2, metric="target: boring")
    assert len(tok(" wonderful", add_special_tokens=False)["input_ids"]) > 1
    for name in ("base", "tuned"):
        ref = metric_per_prompt(great.model(name), great) - metric_per_prompt(dull.model(name), dull)
        assert torch.allclose(metric_per_prompt(one.model(name), one), ref, atol=1e-4)


def _capture(store: dict, key: str, pre: bool):
    def fn(module, args, output=None):
        x = args[0] if pre else (output[0] if isinstance(output, tuple) else output)
        store[key] = x.detach().clone()

    return fn


def _replace(donor: dict, key: str, pos: int | None, pre: bool, cols: slice | None = None):
    """Hook writing the donor's activation (all positions or one; all columns or a head's slice)."""
    def fn(module, args, output=None):
        x = (args[0] if pre else (output[0] if isinstance(output, tuple) else output)).clone()
        src = donor[key]
        rows = slice(None) if pos is None else slice(pos, pos + 1)
        c = slice(None) if cols is None else cols
        x[:, rows, c] = src[:, rows, c]
        if pre:
            return (x, *args[1:])
        return (x, *output[1:]) if isinstance(output, tuple) else x

    return fn


@pytest.fixture(scope="module")
def noisy(trl_pair: dict) -> dict:
    """base vs noisy (every weight perturbed) on two prompts of one length: the pair and the plain HF models."""
    root, prompts = trl_pair["root"], trl_pair["prompts"]
    pair = rlhf_interp.load_pair(str(root / "base"), str(root / "noisy"), prompts=prompts)
    hf = {name: AutoModelForCausalLM.from_pretrained(root / path).eval()
          for name, path in (("base", "base"), ("tuned", "noisy"))}
    return {"pair": pair, "hf": hf, "prompts": prompts, "d_head": hf["base"].config.n_embd // hf["base"].config.n_head}


def _sites(model, layer: int) -> dict:
    """Where each activation is read and written in a plain HF GPT-2: name -> (module, pre-hook?)."""
    block = model.transformer.h[layer]
    return {"resid_pre": (block, True), "attn_out": (block.attn, False), "mlp_out": (block.mlp, False),
            "z": (block.attn.c_proj, True)}


def test_patching_on_logprob_diff_equals_hooked_full_forwards(noisy: dict) -> None:
    """Exact patching on logprob_diff = plain-transformers forwards with hooks, one unpadded (prompt + word) sequence
    at a time, the donor's activation taken from the same sequence."""
    from rlhf_interp.analysis.patching import patching_heads, patching_layers

    pair, hf, prompts, d_head = noisy["pair"], noisy["hf"], noisy["prompts"], noisy["d_head"]
    tok, metric = pair.tokenizer, pair.metric

    def patched(recv: str, donor: str, site: str, layer: int, pos: int | None, head: int | None) -> float:
        def hooks_for(ids: list[int], _n: int) -> list:
            store: dict = {}
            module, pre = _sites(hf[donor], layer)[site]
            _hf_word_logprob(hf[donor], ids, _n, [(module, _capture(store, site, pre), pre)])
            module, pre = _sites(hf[recv], layer)[site]
            cols = None if head is None else slice(head * d_head, (head + 1) * d_head)
            return [(module, _replace(store, site, pos, pre, cols), pre)]

        return _hf_metric(hf[recv], tok, metric, prompts, hooks_for)

    layers = patching_layers(pair)
    heads = patching_heads(pair)
    for direction, recv, donor in (("tuned_to_base", "base", "tuned"), ("base_to_tuned", "tuned", "base")):
        clean = _hf_metric(hf[recv], tok, metric, prompts)
        lrows = layers[layers.direction == direction].set_index(["component", "layer", "pos"]).metric
        for comp in ("resid_pre", "attn_out", "mlp_out"):  # per component, the cell that moves the metric most
            sub = lrows.loc[comp]
            layer, pos = (int(v) for v in (sub - clean).abs().idxmax())
            ref = patched(recv, donor, comp, layer, pos, None)
            assert abs(ref - clean) > 1e-3  # the cell matters
            assert lrows[(comp, layer, pos)] == pytest.approx(ref, abs=2e-5)
        hrows = heads[heads.direction == direction].set_index(["layer", "head"]).metric_z
        refs = {(layer, head): patched(recv, donor, "z", layer, None, head) for layer, head in hrows.index}
        assert max(abs(r - clean) for r in refs.values()) > 1e-3
        for key, ref in refs.items():
            assert hrows[key] == pytest.approx(ref, abs=2e-5), key



def test_ablation_on_logprob_diff_equals_hooked_full_forwards(noisy: dict) -> None:
    """Zero, mean and resample ablation of one head on logprob_diff = plain-transformers forwards with hooks."""
    from rlhf_interp.analysis.ablation import ablation

    pair, hf, prompts, d_head = noisy["pair"], noisy["hf"], noisy["prompts"], noisy["d_head"]
    tok, metric = pair.tokenizer, pair.metric
    # zero-ablation of head (1, 1) in the perturbed model, at every position of the prompt + word rows
    ab = ablation(pair).set_index(["model", "kind", "component", "layer", "head"]).effect
    c_proj = hf["tuned"].transformer.h[PLANTED[0]].attn.c_proj
    cols = slice(PLANTED[1] * d_head, (PLANTED[1] + 1) * d_head)

    def zero_head(module, args):
        x = args[0].clone()
        x[:, :, cols] = 0.0
        return (x, *args[1:])

    clean = _hf_metric(hf["tuned"], tok, metric, prompts)
    ref = _hf_metric(hf["tuned"], tok, metric, prompts, lambda ids, n: [(c_proj, zero_head, True)]) - clean
    assert abs(ref) > 1e-3
    assert ab[("tuned", "zero", "head", *PLANTED)] == pytest.approx(ref, abs=2e-5)
    # mean and resample: after BOS, the head's z from the same word after the other prompts (per-position mean over
    # prompts; with two prompts the only derangement swaps them), each (prompt + word) sequence on its own
    z = {}  # (prompt ids, word ids) -> the head's z on that sequence (pos, d_head)
    for prompt in prompts:
        p_ids = prompt_token_ids(tok, prompt)
        for w in [*metric.positive_ids.values(), *metric.negative_ids.values()]:
            store: dict = {}
            _hf_word_logprob(hf["tuned"], p_ids + w, len(p_ids), [(c_proj, _capture(store, "z", True), True)])
            z[(tuple(p_ids), tuple(w))] = store["z"][0, :, cols]
    keys = {tuple(prompt_token_ids(tok, p)) for p in prompts}

    def from_others(kind: str):
        def hooks_for(ids: list[int], n: int) -> list:
            p_ids, w = tuple(ids[:n]), tuple(ids[n:])
            others = [z[(q, w)] for q in keys if q != p_ids]
            value = torch.stack([z[(q, w)] for q in keys]).mean(0) if kind == "mean" else others[0]

            def put(module, args):
                x = args[0].clone()
                x[:, 1:, cols] = value[1:]
                return (x, *args[1:])

            return [(c_proj, put, True)]

        return hooks_for

    for kind in ("mean", "resample"):
        ref = _hf_metric(hf["tuned"], tok, metric, prompts, from_others(kind)) - clean
        assert abs(ref) > 2e-4  # ten times the tolerance below
        assert ab[("tuned", kind, "head", *PLANTED)] == pytest.approx(ref, abs=2e-5), kind



def test_fused_engine_on_logprob_diff_rows_equals_hooked_sweep(noisy: dict) -> None:
    """The fused engine (positions read: the appended ones, rows padded) agrees with hooked bridge forwards."""
    from rlhf_interp.analysis.fused import engine_for
    from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache

    pair, metric = noisy["pair"], noisy["pair"].metric
    n_prompt = len(prompt_token_ids(pair.tokenizer, noisy["prompts"][0]))
    _, tokens = pair.main_group
    cells = [Cell(hook, L, pos=p) for hook in LAYER_COMPONENTS.values() for L in range(pair.n_layers)
             for p in range(n_prompt)] + [Cell(HEAD_HOOK, L, head=h) for L in range(2) for h in range(4)]
    cache = run_cache(pair.tuned, tokens, sorted({c.name for c in cells}))
    assert engine_for(pair.base, tokens) is not None  # the fused engine verified itself on the padded rows
    fused = patch_sweep(pair.base, cache, tokens, cells, metric, fused=True)
    hooked = patch_sweep(pair.base, cache, tokens, cells, metric, fused=False)
    assert (fused - hooked).abs().max().item() < 1e-4
