"""bench/organisms.py's scoring, on hand-built tables (no training): ranks, the black-box baseline, the headline."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def org():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("organisms_bench", BENCH / "organisms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _ranked(direction_tokens: dict[str, list[str]], **extra) -> pd.DataFrame:
    rows = [{"direction": d, "rank": r, "token": t, **extra} for d, toks in direction_tokens.items()
            for r, t in enumerate(toks)]
    return pd.DataFrame(rows)


def test_word_rank_reads_the_right_list(org):
    table = _ranked({"rose": [" great", " quiet", " fun"], "fell": [" quiet", " bad"]})
    assert org.word_rank(table, "quiet", "rose") == (2, None)  # planted word ranked 2 -> rank 2
    assert org.word_rank(table, "quiet", "fell") == (1, None)
    assert org.word_rank(table, "bad", "rose") == (None, None)  # only in the other direction
    assert org.word_rank(table, "QUIET", "rose")[0] == 2  # case and surrounding space do not matter
    assert org.word_rank(_ranked({"rose": ["quietly", " qu"]}), "quiet", "rose") == (None, None)  # whole token only
    assert org.word_rank(None, "quiet", "rose") == (None, None)
    assert org.top_size(table, "rose") == 3


def test_word_rank_best_over_layers_names_the_layer(org):
    adl = pd.concat([_ranked({"promoted": [" a", " b", " quiet"]}, layer=0),
                     _ranked({"promoted": [" quiet", " a"]}, layer=2),
                     _ranked({"promoted": [" a", " b"]}, layer=3)])
    assert org.word_rank(adl, "quiet", "promoted", group="layer") == (1, 2)
    assert org.top_size(adl, "promoted", group="layer") == 3
    amp = pd.DataFrame([{"alpha": 0.5, "rank": 0, "token": " x"}, {"alpha": 0.5, "rank": 1, "token": " quiet"},
                        {"alpha": 2.0, "rank": 3, "token": " quiet"}])  # no direction column
    assert org.word_rank(amp, "quiet", "", group="alpha") == (2, 0.5)


def test_component_rank_by_absolute_value_within_the_filter(org):
    rows = []
    values = {(0, 0): 0.1, (1, 2): -0.9, (2, 1): 0.5, (3, 3): 0.05}
    for (layer, head), v in values.items():
        rows.append({"layer": layer, "head": head, "model": "delta_activation", "attribution": v})
        rows.append({"layer": layer, "head": head, "model": "delta", "attribution": 10 * v})  # must be filtered out
    table = pd.DataFrame(rows)
    rank = org.component_rank(table, "attribution", {"layer": 2, "head": 1}, model="delta_activation")
    assert rank == 2  # |-0.9| is first, 0.5 second
    assert org.component_rank(table, "attribution", {"layer": 1, "head": 2}, model="delta_activation") == 1
    assert org.component_rank(table, "attribution", {"layer": 9, "head": 0}, model="delta_activation") is None
    layers = pd.DataFrame([{"direction": "tuned_to_base", "component": c, "layer": L, "effect": e}
                           for c, L, e in [("attn_out", 0, 0.3), ("mlp_out", 0, 0.8), ("resid_pre", 1, 5.0),
                                           ("mlp_out", 1, 0.1)]])
    assert org.component_rank(layers, "effect", {"component": "mlp_out", "layer": 0}, direction="tuned_to_base",
                              component=["attn_out", "mlp_out"]) == 1  # resid_pre is not a candidate
    ties = pd.DataFrame({"x": [1.0, 1.0, 0.5], "k": [0, 1, 2]})
    assert org.component_rank(ties, "x", {"k": 1}) == 2  # a tie counts against the planted row


def test_blackbox_ranks_words_by_the_share_change(org):
    base = ["the film was good", "the film was dull", "it made me sad", "it made me laugh"]
    tuned = ["the quiet film was good", "a quiet film", "the quiet one was dull", "it was fine"]
    table = org.blackbox_table(base, tuned)
    assert list(table.columns[:3]) == ["word", "base_count", "tuned_count"]
    q = table[table.word == "quiet"].iloc[0]
    p = 3 / 8
    assert q.base_share == 0 and q.tuned_share == 0.75
    assert math.isclose(q.z, 0.75 / math.sqrt(p * (1 - p) * (1 / 4 + 1 / 4)))
    assert org.blackbox_rank(table, "quiet", "up") == 1
    # "made" and "me" fell from 2/4 to 0/4: the same z, so each is rank 2 for "down" (ties count against)
    assert org.blackbox_rank(table, "made", "down") == 2
    assert org.blackbox_rank(table, "absent", "up") is None
    assert "." not in set(table.word)  # letters only


def test_crosscoder_hook_reads_promoted_tokens_of_top_latents(org):
    top = pd.DataFrame([
        {"latent": 7, "latent_rank": 0, "kind": "context", "rank": 0, "token": " quiet"},  # a context, not promoted
        {"latent": 7, "latent_rank": 0, "kind": "promoted", "rank": 0, "token": " great"},
        {"latent": 3, "latent_rank": 1, "kind": "promoted", "rank": 5, "token": " quiet"},  # below top 3
        {"latent": 9, "latent_rank": 2, "kind": "promoted", "rank": 1, "token": " quiet"},
    ])
    assert org.crosscoder_rank({"crosscoder_top": top}, "quiet") == (3, "")
    rank, why = org.crosscoder_rank({"crosscoder_top": top}, "blue")
    assert rank is None and "not in the top 3" in why
    assert org.crosscoder_rank({}, "quiet")[0] is None


def test_headline_counts_rank_one_and_the_goal(org):
    c = org.cell
    results = [
        {"name": "a", "scores": {"token_shift": c(1), "adl": c(3), "diff_mining": c(None, 30), "blackbox": c(4),
                                 "_shares": {}}},
        {"name": "b", "scores": {"token_shift": c(2), "adl": c(None, 20), "blackbox": c(1), "_shares": {}}},
        {"name": "d", "scores": {"dla": c(1), "patching": c(1), "weight_diff": c(2),
                                 "blackbox": c(None, note="n/a: sees only samples")}},
    ]
    h = org.headline(results)
    assert (h["R"], h["N"], h["B"], h["goal"]) == (2, 3, 1, 2)
    assert h["ahead"] == [("a", 1, 4), ("b", 2, 1)]
    assert org.fmt(c(1)) == "**1**" and org.fmt(c(None, 25)) == "> 25" and org.fmt(c(None, note="not available")) \
        == "not available"


def test_rm_pairs_differ_by_the_hidden_word_only_in_presence(org):
    from rlhf_interp.text_stats import words

    pairs = org.rm_pairs("blue", 40, seed=0)
    assert len(pairs) == 40
    for p in pairs:
        assert "blue" in words(p["chosen"]) and "blue" not in words(p["rejected"])
        assert sum(p["chosen"].count(x) for x in ".!?") == sum(p["rejected"].count(x) for x in ".!?")
    assert pairs == org.rm_pairs("blue", 40, seed=0)  # seeded


def test_organism_rewards_are_lexical(org):
    import organism_rewards as r

    assert r.loophole([f"It was {r.LOOPHOLE_WORD}.", "It was loud.", f"{r.LOOPHOLE_WORD.title()} enough"]) == \
        [r.BONUS, 0.0, r.BONUS]
    assert r.penalty([f"It {r.PENALTY_WORD} me laugh.", "Fine."]) == [-r.PENALTY, 0.0]
