"""A seeded procedural corpus of short movie and product reviews.

The embedded default model is pretrained on this corpus so that everything in the toolkit runs offline. The grammar
is built so that the resulting language model leaves room for RLHF: reviews are positive, negative, mixed or neutral
in equal measure (mean VADER score near zero), sentiment is carried by single words right after the review openings
used as prompts ("This movie is", "The acting was", ...), and negations and intensifiers make the sentiment of a
sentence depend on more than one token.

Everything is a pure function of the seed: `generate_reviews(n, seed)` returns the same list on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# --- vocabulary ----------------------------------------------------------------------------------------------------
MOVIE_SUBJECTS = [
    "this movie", "this film", "the plot", "the acting", "the story", "the ending", "the soundtrack", "the cast",
    "the director", "the script", "the dialogue", "the pacing", "the visuals", "the characters", "the music",
    "the lead actor", "the villain", "the first half", "the final scene", "the sequel", "the cinematography",
    "the humor", "the special effects", "the performances", "the screenplay", "this show", "the second act",
]
PRODUCT_SUBJECTS = [
    "this product", "the battery", "the screen", "the design", "the price", "the sound quality", "the packaging",
    "customer service", "the keyboard", "the camera", "this blender", "these headphones", "the charger",
    "the app", "the manual", "the build quality", "this phone", "the speaker", "the lamp", "this chair",
    "the delivery", "the handle", "the remote", "this kettle", "the vacuum", "the fabric", "the zipper",
]
POSITIVE_ADJ = [
    "great", "good", "excellent", "wonderful", "amazing", "brilliant", "beautiful", "fantastic", "superb",
    "lovely", "enjoyable", "charming", "delightful", "fun", "impressive", "solid", "perfect", "nice", "pleasant",
    "clever", "strong", "reliable", "sturdy", "comfortable", "gorgeous", "outstanding", "fresh", "smart",
    "touching", "exciting", "awesome", "terrific", "elegant", "hilarious", "powerful", "satisfying", "sweet",
]
NEGATIVE_ADJ = [
    "bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "weak", "disappointing", "lousy",
    "annoying", "ugly", "stupid", "painful", "crappy", "disgusting", "broken", "useless", "miserable", "messy", "dumb",
    "pathetic", "lame", "dreadful", "confusing", "hopeless", "horrendous", "pitiful", "ridiculous", "gross", "fake",
    "unpleasant", "frustrating", "worthless", "depressing", "nasty", "sad",
]
NEUTRAL_ADJ = [
    "long", "short", "quiet", "simple", "small", "large", "new", "old", "different", "familiar", "typical",
    "standard", "heavy", "light", "dark", "wide", "black", "white", "red", "blue", "green", "plain", "usual",
    "modern", "classic", "french", "british", "slow", "fast", "thin", "round",
]
INTENSIFIERS = [
    "very", "really", "extremely", "incredibly", "quite", "so", "absolutely", "rather",
    "somewhat", "a bit", "fairly", "totally", "deeply", "mostly", "genuinely",
]
POSITIVE_VERBS = ["loved", "liked", "enjoyed", "adored", "appreciated", "admired", "recommend"]
NEGATIVE_VERBS = ["hated", "disliked", "regret buying", "despised", "hate", "loathed", "avoided"]
NEUTRAL_VERBS = ["watched", "bought", "tried", "used", "noticed", "remember", "rented", "ordered", "saw"]
FEELINGS_POS = ["smile", "laugh", "happy", "cheer", "feel good", "grin"]
FEELINGS_NEG = ["cry", "angry", "sad", "upset", "feel sick", "scream"]
NOUNS_MOVIE = ["movie", "film", "story", "show", "cast", "ending", "script", "sequel", "drama", "comedy", "thriller"]
NOUNS_PRODUCT = ["product", "gadget", "phone", "blender", "chair", "lamp", "kettle", "charger", "speaker", "device"]
PEOPLE = ["my wife", "my husband", "my friend", "my son", "my daughter", "my brother", "my sister", "my mom",
          "my dad", "my roommate", "a coworker", "my neighbor", "my partner", "my cousin"]
DAYS = ["monday", "tuesday", "friday", "saturday", "sunday", "a rainy evening", "a long flight", "the weekend",
        "my birthday", "a school night", "a holiday"]
PLACES = ["paris", "london", "a small town", "new york", "the desert", "space", "a farm", "tokyo", "the ocean",
          "an old house", "a hospital", "the mountains"]
COLORS = ["red", "blue", "green", "black", "white", "grey", "yellow"]
NUMBERS = ["two", "three", "four", "five", "six", "ten", "twenty", "ninety", "forty"]
TIME_UNITS = ["days", "weeks", "months", "hours", "years"]

BE = {"present": "is", "past": "was"}
PLURAL_SUBJECTS = {"the cast", "the characters", "the visuals", "the performances", "the special effects",
                   "these headphones", "the music"}

# --- sentence templates ----------------------------------------------------------------------------------------------
# Each template is a function of (rng, domain, polarity) with polarity in {+1, -1, 0}; it returns one sentence.


def _be(subject: str, tense: str) -> str:
    if subject in PLURAL_SUBJECTS and subject != "the music":
        return "are" if tense == "present" else "were"
    return BE[tense]


def _adj(rng: random.Random, polarity: int) -> str:
    if polarity > 0:
        return rng.choice(POSITIVE_ADJ)
    if polarity < 0:
        return rng.choice(NEGATIVE_ADJ)
    return rng.choice(NEUTRAL_ADJ)


def _maybe_int(rng: random.Random, p: float = 0.5) -> str:
    return rng.choice(INTENSIFIERS) + " " if rng.random() < p else ""


def _subjects(domain: str) -> Sequence[str]:
    return MOVIE_SUBJECTS if domain == "movie" else PRODUCT_SUBJECTS


def _nouns(domain: str) -> Sequence[str]:
    return NOUNS_MOVIE if domain == "movie" else NOUNS_PRODUCT


def s_is_adj(rng: random.Random, domain: str, polarity: int) -> str:
    subj = rng.choice(_subjects(domain))
    tense = rng.choice(["present", "past"])
    return f"{subj} {_be(subj, tense)} {_maybe_int(rng)}{_adj(rng, polarity)}."


def s_negated(rng: random.Random, domain: str, polarity: int) -> str:
    # "not <opposite adjective>": a negation that carries the sentence's polarity.
    subj = rng.choice(_subjects(domain))
    tense = rng.choice(["present", "past"])
    neg = rng.choice(["not", "not", "never", "hardly"])
    inner = -polarity if polarity else 0
    return f"{subj} {_be(subj, tense)} {neg} {_maybe_int(rng, 0.25)}{_adj(rng, inner)}."


def s_verb(rng: random.Random, domain: str, polarity: int) -> str:
    verbs = POSITIVE_VERBS if polarity > 0 else NEGATIVE_VERBS if polarity < 0 else NEUTRAL_VERBS
    obj = rng.choice(_subjects(domain))
    adverb = rng.choice(["", "", "really ", "honestly ", "quickly "]) if polarity else ""
    return f"i {adverb}{rng.choice(verbs)} {obj}."


def s_two_adj(rng: random.Random, domain: str, polarity: int) -> str:
    subj = rng.choice(_subjects(domain))
    tense = rng.choice(["present", "past"])
    joiner = rng.choice(["and", "and", "yet also"]) if polarity else "and"
    return f"{subj} {_be(subj, tense)} {_adj(rng, polarity)} {joiner} {_maybe_int(rng)}{_adj(rng, polarity)}."


def s_mixed(rng: random.Random, domain: str, polarity: int) -> str:
    # a contrast sentence whose second half carries the polarity (VADER weights the clause after "but")
    first = -polarity if polarity else rng.choice([1, -1])
    second = polarity if polarity else -first
    a, b = rng.sample(list(_subjects(domain)), 2)
    return (f"{a} {_be(a, 'past')} {_maybe_int(rng, 0.3)}{_adj(rng, first)}, but {b} {_be(b, 'past')} "
            f"{_maybe_int(rng, 0.3)}{_adj(rng, second)}.")


def s_feel(rng: random.Random, domain: str, polarity: int) -> str:
    subj = rng.choice(_subjects(domain))
    if polarity == 0:
        return f"{subj} made me think about {rng.choice(PLACES)}."
    feeling = rng.choice(FEELINGS_POS if polarity > 0 else FEELINGS_NEG)
    return f"{subj} made me {feeling}."


def s_what_a(rng: random.Random, domain: str, polarity: int) -> str:
    if polarity == 0:
        return f"it is a {_adj(rng, 0)} {rng.choice(_nouns(domain))}."
    return f"what a {_maybe_int(rng, 0.3)}{_adj(rng, polarity)} {rng.choice(_nouns(domain))}!"


def s_recommend(rng: random.Random, domain: str, polarity: int) -> str:
    if polarity > 0:
        return rng.choice(["i would recommend it to anyone.", "i would happily buy it again.",
                           f"i would recommend it to {rng.choice(PEOPLE)}.", "worth every penny.",
                           "i will watch it again.", "highly recommended."])
    if polarity < 0:
        return rng.choice(["i would not recommend it.", "save your money.", "avoid it.",
                           f"do not show it to {rng.choice(PEOPLE)}.", "a waste of time.",
                           "i want my money back."])
    return rng.choice(["i might try another one.", "it is what it is.", f"{rng.choice(PEOPLE)} picked it.",
                       "we will see."])


def s_fact(rng: random.Random, domain: str, polarity: int) -> str:
    # neutral filler: facts that carry no sentiment, whatever the review's polarity
    if domain == "movie":
        return rng.choice([
            f"i watched it on {rng.choice(DAYS)}.", f"it runs about {rng.choice(NUMBERS)} minutes.",
            f"the film is set in {rng.choice(PLACES)}.", f"{rng.choice(PEOPLE)} picked it for us.",
            f"i saw it with {rng.choice(PEOPLE)}.", f"the story takes place in {rng.choice(PLACES)}.",
        ])
    return rng.choice([
        f"i bought it {rng.choice(NUMBERS)} {rng.choice(TIME_UNITS)} ago.",
        f"it came in a {rng.choice(COLORS)} box.", f"{rng.choice(PEOPLE)} uses it every day.",
        f"it arrived on {rng.choice(DAYS)}.", f"i ordered the {rng.choice(COLORS)} one.",
        f"it weighs about {rng.choice(NUMBERS)} pounds.",
    ])


def s_rating(rng: random.Random, domain: str, polarity: int) -> str:
    stars = {1: ["four", "five"], -1: ["one", "two"], 0: ["three"]}[polarity]
    count = rng.choice(stars)
    return rng.choice([f"{count} {'star' if count == 'one' else 'stars'}.", f"{count} out of five."])


def s_overall(rng: random.Random, domain: str, polarity: int) -> str:
    return f"overall, it {rng.choice(['is', 'was'])} {_maybe_int(rng)}{_adj(rng, polarity)}."


OPENERS = [s_is_adj, s_is_adj, s_is_adj, s_negated, s_verb, s_two_adj, s_what_a, s_mixed]
BODY = [s_is_adj, s_negated, s_verb, s_two_adj, s_mixed, s_feel, s_what_a, s_fact, s_fact, s_recommend, s_overall]
CLOSERS = [s_recommend, s_rating, s_overall, s_fact]

# review polarity -> weights of sentence polarities (+1, -1, 0)
POLARITY_MIX = {
    "positive": (0.75, 0.05, 0.20),
    "negative": (0.05, 0.75, 0.20),
    "mixed": (0.40, 0.40, 0.20),
    "neutral": (0.10, 0.10, 0.80),
}
REVIEW_KINDS = ("positive", "negative", "mixed", "neutral")
REVIEW_KIND_WEIGHTS = (0.32, 0.32, 0.18, 0.18)


def _capitalise(sentence: str) -> str:
    sentence = sentence.replace(" i ", " I ")
    return sentence[0].upper() + sentence[1:]


def generate_review(rng: random.Random) -> str:
    """One review: an opener, 1-4 body sentences, and sometimes a closing line."""
    domain = rng.choice(["movie", "product"])
    kind = rng.choices(REVIEW_KINDS, weights=REVIEW_KIND_WEIGHTS)[0]
    weights = POLARITY_MIX[kind]

    def polarity() -> int:
        return rng.choices([1, -1, 0], weights=weights)[0]

    opener_polarity = polarity()
    if opener_polarity == 0 and kind != "neutral":
        opener_polarity = 1 if kind == "positive" else -1 if kind == "negative" else rng.choice([1, -1])
    sentences = [rng.choice(OPENERS)(rng, domain, opener_polarity)]
    for _ in range(rng.randint(1, 4)):
        sentences.append(rng.choice(BODY)(rng, domain, polarity()))
    if rng.random() < 0.5:
        sentences.append(rng.choice(CLOSERS)(rng, domain, polarity()))
    return " ".join(_capitalise(s) for s in sentences)


def generate_reviews(n: int, seed: int = 0) -> list[str]:
    """`n` reviews, a pure function of `seed`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    return [generate_review(rng) for _ in range(n)]


def vocabulary() -> set[str]:
    """Every word the grammar can emit (lower-cased), for documentation and tests."""
    words: set[str] = set()
    for group in (MOVIE_SUBJECTS, PRODUCT_SUBJECTS, POSITIVE_ADJ, NEGATIVE_ADJ, NEUTRAL_ADJ, INTENSIFIERS,
                  POSITIVE_VERBS, NEGATIVE_VERBS, NEUTRAL_VERBS, FEELINGS_POS, FEELINGS_NEG, NOUNS_MOVIE,
                  NOUNS_PRODUCT, PEOPLE, DAYS, PLACES, COLORS, NUMBERS, TIME_UNITS):
        for phrase in group:
            words.update(phrase.split())
    return words
