from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf_interp.embedded.corpus import generate_reviews, vocabulary
from rlhf_interp.prompts import EMBEDDED_PROMPTS
from rlhf_interp.text_stats import words


def test_corpus_is_a_pure_function_of_the_seed():
    assert generate_reviews(50, seed=3) == generate_reviews(50, seed=3)
    assert generate_reviews(50, seed=3) != generate_reviews(50, seed=4)


def test_corpus_has_both_signs_and_a_balanced_mean():
    analyzer = SentimentIntensityAnalyzer()
    scores = [analyzer.polarity_scores(t)["compound"] for t in generate_reviews(2000, seed=0)]
    assert sum(s > 0.3 for s in scores) > 400
    assert sum(s < -0.3 for s in scores) > 400
    assert abs(sum(scores) / len(scores)) < 0.15


def test_corpus_has_negations_intensifiers_and_a_few_hundred_words():
    texts = " ".join(generate_reviews(2000, seed=0)).lower()
    assert " not " in texts and " very " in texts and " but " in texts
    distinct = {w for w in words(texts) if w.isalpha()}
    assert 300 <= len(distinct) <= 1000
    assert vocabulary() <= distinct | {"i"}


def test_default_prompts_start_corpus_sentences():
    texts = " ".join(generate_reviews(5000, seed=0))
    for prompt in EMBEDDED_PROMPTS:
        assert prompt.split()[1] in texts
