import math

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from rlhf_interp.errors import UserError
from rlhf_interp.models import EMBEDDED_DIR
from rlhf_interp.rewards import RewardError, check_scores, get_reward


def test_vader_and_periods():
    vader = get_reward("vader")
    pos, neg = vader(["a wonderful, brilliant film", "an awful, boring mess"])
    assert pos > 0.5 and neg < -0.5
    assert get_reward("periods")(["a. b. c.", "none"]) == [3.0, 0.0]


def test_check_scores_rejects_bad_output():
    with pytest.raises(RewardError, match="returned inf for sample 'b'"):
        check_scores("x", lambda texts: [1.0, math.inf], ["a", "b"])
    with pytest.raises(RewardError, match="must return a list of numbers"):
        check_scores("x", lambda texts: None, ["a"])


def test_reward_spec_errors():
    with pytest.raises(UserError, match="needs an argument"):
        get_reward("classifier")
    with pytest.raises(UserError, match="takes no argument"):
        get_reward("vader:x")
    with pytest.raises(UserError, match="directory not found"):
        get_reward("classifier:/no/such/dir")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A random 2-label GPT-2 sequence classifier with its own (embedded) tokenizer."""
    d = tmp_path_factory.mktemp("clf")
    tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tok.pad_token_id)
    GPT2ForSequenceClassification(config).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_classifier_reward_prob_logit_and_label(classifier_dir):
    texts = ["This movie is great.", "The plot was not good at all, sadly.", "Bad."]
    prob = get_reward(f"classifier:{classifier_dir}")(texts)
    assert all(0 <= p <= 1 for p in prob)
    neg = get_reward(f"classifier:{classifier_dir}", label="negative")(texts)
    assert neg == pytest.approx([1 - p for p in prob], abs=1e-5)
    logits = get_reward(f"classifier:{classifier_dir}", output="logit")(texts)
    # batching and padding do not change a text's score
    single = [get_reward(f"classifier:{classifier_dir}", output="logit")([t])[0] for t in texts]
    assert logits == pytest.approx(single, abs=1e-4)
    with pytest.raises(UserError, match="no label 'happy'"):
        get_reward(f"classifier:{classifier_dir}", label="happy")


@pytest.mark.slow
def test_imdb_classifier_builds_offline_with_heldout_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_INTERP_CACHE", str(tmp_path))
    reward = get_reward("imdb")
    assert reward.card["heldout_accuracy"]["imdb"] >= 0.85
    good, bad = reward(["a wonderful, moving film with great acting", "a boring, awful waste of time"])
    assert good > 0.5 > bad
    assert (tmp_path / "imdb-bow-v1" / "card.json").exists()
