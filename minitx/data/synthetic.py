"""Corpora: a built-in synthetic language with known structure, and user text files read lazily.

The synthetic language exists so that a tiny BERT trained for two minutes on a laptop can be *checked*: the
generator knows which words are determined by their context (and by which cue), so pretraining can report
accuracy per kind of dependency against a stated chance baseline. Each sentence also carries a sentiment label
whose adjectives are learnable from co-occurrence alone, so pretraining visibly helps fine-tuning.
The grammar, the kinds and the baselines are described in docs/data.md.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field


# ---------------------------------------------------------------------------------------------------------------
# Lexicon. Nouns come as (singular, plural); only the subject noun's number decides the copula.
SUBJECT_NOUNS = [
    ("dog", "dogs"), ("cat", "cats"), ("child", "children"), ("teacher", "teachers"), ("bird", "birds"),
    ("farmer", "farmers"), ("king", "kings"), ("queen", "queens"), ("girl", "girls"), ("boy", "boys"),
    ("friend", "friends"), ("doctor", "doctors"), ("singer", "singers"), ("film", "films"), ("book", "books"),
    ("song", "songs"), ("story", "stories"), ("city", "cities"), ("horse", "horses"), ("man", "men"),
    ("woman", "women"), ("baker", "bakers"), ("sailor", "sailors"), ("poet", "poets"),
]
PLACE_NOUNS = [
    ("tree", "trees"), ("house", "houses"), ("river", "rivers"), ("hill", "hills"), ("bridge", "bridges"),
    ("garden", "gardens"), ("wall", "walls"), ("gate", "gates"), ("lake", "lakes"), ("tower", "towers"),
    ("field", "fields"), ("road", "roads"),
]
PREPOSITIONS = ["near", "behind", "under", "beside", "above", "beyond"]
RELATIVE_VERBS = ["saw", "liked", "followed", "met", "helped", "praised", "found", "heard"]  # number-neutral
SPEECH_VERBS = ["said", "noted", "claimed", "wrote"]
NEUTRAL_ADJECTIVES = ["old", "small", "big", "green", "tall", "young", "quiet", "distant"]
CAUSE_NOUNS = ["rain", "storm", "noise", "crowd", "fog", "heat", "wind", "snow"]
# Fixed phrases: the last word is determined by the word before it (each first/middle word is unique to its phrase).
FIXED_PHRASES = [
    ("in", "spite", "of"), ("because", "of"), ("in", "front", "of"), ("instead", "of"), ("according", "to"),
    ("next", "to"), ("due", "to"), ("far", "from"), ("apart", "from"), ("as", "well", "as"),
]
BRACKETS = [("(", ")"), ("[", "]"), ("{", "}")]
POSITIVE_ADJECTIVES = [
    "good", "kind", "brave", "happy", "gentle", "honest", "clever", "generous", "cheerful", "calm", "loyal",
    "wise", "warm", "bright", "friendly", "patient", "polite", "lovely", "charming", "graceful", "joyful",
    "noble", "pleasant", "sincere", "splendid", "tender", "thoughtful", "wonderful", "fair", "merry", "humble",
    "delightful",
]
NEGATIVE_ADJECTIVES = [
    "bad", "cruel", "rude", "lazy", "angry", "selfish", "greedy", "cowardly", "dull", "bitter", "nasty", "harsh",
    "grim", "gloomy", "hostile", "jealous", "mean", "arrogant", "careless", "foolish", "dishonest", "awful",
    "vain", "wicked", "sullen", "spiteful", "boring", "clumsy", "stubborn", "horrible", "miserable", "terrible",
]
NEGATORS = ["not", "never"]
# Pretraining-only polarity cue: in the unlabelled text an intensifier of the adjective's own polarity often
# stands right before a polar adjective ("truly kind", "utterly cruel"): a frequent two-way word that the
# adjective alone determines, so MLM learns which adjectives are positive. Labelled sentences never carry one
# (SyntheticLanguage(..., sentiment_cues=False)), so a classifier must know the polarity from pretraining.
INTENSIFIERS = ("utterly", "truly")  # (negative, positive)
# The subject's determiner carries its number too: a frequent, few-token cue that a small model picks up fast.
DETERMINERS = (["this", "every", "each"], ["these", "many", "some"])  # (singular, plural)
PRONOUNS = ("it", "they")

# Kinds of determined positions, in the order of their integer codes (code = index + 1; 0 = not determined).
KINDS = ("agreement", "bracket", "phrase")
# Kinds of marked *free* positions (a control: no model should beat their chance by much).
FREE_KINDS = ("subject",)

# Generator probabilities (documented in docs/data.md).
P_PLURAL, P_PREFIX, P_ASIDE, P_ASIDE_EARLY = 0.5, 0.35, 0.7, 0.5
P_NEGATED, P_POSITIVE, P_AND, P_BUT, P_SO, P_ADJ = 0.5, 0.5, 0.3, 0.3, 0.3, 0.3
P_INTENSIFIER = 0.8
SPLIT_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}


@dataclass
class Sentence:
    """One generated sentence. `determined` maps word index -> kind; `free` marks control positions."""
    text: str
    words: list[str]
    determined: dict[int, str]
    label: int
    free: dict[int, str] = field(default_factory=dict)


def split_of(text: str) -> str:
    """The split a sentence text belongs to, by a stable hash of the text: equal texts never straddle splits."""
    text = " ".join(w for w in text.split(" ") if w not in INTENSIFIERS)  # cued or not, the same split
    bucket = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


class SyntheticLanguage:
    """A seeded generator of sentences with marked determined positions and a sentiment label.

    `sentences(n, split)` returns the first `n` sentences of that split's stream: the same (seed, split) always
    gives the same list, a longer request extends a shorter one, and the splits never share a sentence text.
    """

    def __init__(self, seed: int = 0, sentiment_cues: bool = True):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.seed = seed
        self.sentiment_cues = sentiment_cues

    def sentences(self, n: int, split: str = "train") -> list[Sentence]:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        if split not in SPLIT_BUCKETS:
            raise ValueError(f"split: expected one of {sorted(SPLIT_BUCKETS)}, got {split!r}")
        rng = random.Random(f"minitx-synthetic/{self.seed}/{split}")  # str seeds hash with sha512: stable
        out: list[Sentence] = []
        while len(out) < n:
            sentence = generate_sentence(rng)
            if split_of(sentence.text) == split:  # rejection keeps the splits disjoint by construction
                out.append(with_intensifiers(sentence) if self.sentiment_cues else sentence)
        return out

    def texts(self, n: int, split: str = "train") -> list[str]:
        return [s.text for s in self.sentences(n, split)]

    @staticmethod
    def kinds() -> dict[str, float]:
        """{kind: chance accuracy} for determined kinds; see chance_baselines()."""
        return {k: v for k, v in chance_baselines().items() if k in KINDS}

    @staticmethod
    def free_kinds() -> dict[str, float]:
        return {k: v for k, v in chance_baselines().items() if k in FREE_KINDS}

    @staticmethod
    def vocabulary() -> list[str]:
        """Every word the grammar can emit (a few hundred), sorted."""
        return sorted(_all_words())


def chance_baselines() -> dict[str, float]:
    """Chance accuracy per kind: the probability of the most frequent correct word among that kind's positions.

    That is the accuracy of a predictor that knows the kind but ignores the cue, computed exactly from the
    grammar's (uniform) choices:
      agreement: max(P_PLURAL, 1 - P_PLURAL)            ("is" vs "are")
      bracket:   1 / len(BRACKETS)                      (closer chosen uniformly with its opener)
      phrase:    max_w #{phrases ending in w} / #phrases (phrase chosen uniformly)
      subject:   1 / len(SUBJECT_NOUNS)                 (free: the number is cued by the copula, the noun is not)
    """
    endings = Counter(phrase[-1] for phrase in FIXED_PHRASES)
    return {
        "agreement": max(P_PLURAL, 1.0 - P_PLURAL),
        "bracket": 1.0 / len(BRACKETS),
        "phrase": max(endings.values()) / len(FIXED_PHRASES),
        "subject": 1.0 / len(SUBJECT_NOUNS),
    }


def kind_id(kind: str) -> int:
    """Integer code of a determined kind (0 is reserved for 'not determined')."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return KINDS.index(kind) + 1


def _all_words() -> set[str]:
    words = {w for pair in SUBJECT_NOUNS + PLACE_NOUNS + BRACKETS for w in pair}
    words |= {w for phrase in FIXED_PHRASES for w in phrase}
    words |= set(PREPOSITIONS + RELATIVE_VERBS + SPEECH_VERBS + NEUTRAL_ADJECTIVES + CAUSE_NOUNS)
    words |= set(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES + NEGATORS + DETERMINERS[0] + DETERMINERS[1])
    words |= set(INTENSIFIERS)
    return words | set(PRONOUNS) | {"the", "that", "as", "is", "are", "and", "but", "so", ",", "."}


# ---------------------------------------------------------------------------------------------------------------
# The grammar:
#   S      -> [PHRASE the CAUSE ,] DET [NEUTRAL] NOUN MOD+ [ASIDE] COP [NEG] ADJ [COORD] [ASIDE] .
#   COORD  -> and ADJ' | but ADJ'' | so PRON COP ADJ*
#   MOD    -> PREP the [NEUTRAL] PLACE | that RELVERB the [NEUTRAL] NOUN
#   ASIDE  -> OPEN as the [NEUTRAL] NOUN SPEECHVERB CLOSE
# DET, COP and PRON agree with the subject NOUN (COP never adjacent: at least one MOD sits between); CLOSE
# matches OPEN; the last word of PHRASE follows from the word before. ADJ' shares ADJ's polarity, ADJ'' has the
# opposite one, ADJ* has the polarity of the whole predicate (ADJ's, flipped by NEG): the label.

def generate_sentence(rng: random.Random) -> Sentence:
    """Draw one sentence (see the grammar above); label = polarity(ADJ) flipped by a negator."""
    words: list[str] = []
    determined: dict[int, str] = {}
    free: dict[int, str] = {}
    if rng.random() < P_PREFIX:
        words += rng.choice(FIXED_PHRASES)
        determined[len(words) - 1] = "phrase"
        words += ["the", rng.choice(CAUSE_NOUNS), ","]
    plural = rng.random() < P_PLURAL
    words.append(rng.choice(DETERMINERS[plural]))
    if rng.random() < P_ADJ:
        words.append(rng.choice(NEUTRAL_ADJECTIVES))
    free[len(words)] = "subject"
    words.append(rng.choice(SUBJECT_NOUNS)[plural])
    for _ in range(rng.choice((1, 1, 2))):
        _modifier(rng, words)
    r = rng.random()  # the aside sits before the copula (lengthening the agreement), at the end, or nowhere
    aside_early, aside_late = r < P_ASIDE * P_ASIDE_EARLY, P_ASIDE * P_ASIDE_EARLY <= r < P_ASIDE
    if aside_early:
        _aside(rng, words, determined)
    determined[len(words)] = "agreement"
    words.append("are" if plural else "is")
    negated = rng.random() < P_NEGATED
    if negated:
        words.append(rng.choice(NEGATORS))
    positive = rng.random() < P_POSITIVE
    _predicate(rng, words, positive, negated, plural)
    if aside_late:
        _aside(rng, words, determined)
    words.append(".")
    return Sentence(" ".join(words), words, determined, int(positive != negated), free)


def _noun_phrase(rng: random.Random, words: list[str], nouns: list[tuple[str, str]], plural: bool) -> None:
    """Append `the [NEUTRAL] NOUN`."""
    words.append("the")
    if rng.random() < P_ADJ:
        words.append(rng.choice(NEUTRAL_ADJECTIVES))
    words.append(rng.choice(nouns)[int(plural)])


def _modifier(rng: random.Random, words: list[str]) -> None:
    """A prepositional phrase or a relative clause; its noun's number is drawn independently (a distractor)."""
    if rng.random() < 0.5:
        words.append(rng.choice(PREPOSITIONS))
        _noun_phrase(rng, words, PLACE_NOUNS, rng.random() < 0.5)
    else:
        words += ["that", rng.choice(RELATIVE_VERBS)]
        _noun_phrase(rng, words, SUBJECT_NOUNS, rng.random() < 0.5)


def _aside(rng: random.Random, words: list[str], determined: dict[int, str]) -> None:
    opener, closer = rng.choice(BRACKETS)
    words += [opener, "as"]
    _noun_phrase(rng, words, SUBJECT_NOUNS, rng.random() < 0.5)
    words.append(rng.choice(SPEECH_VERBS))
    determined[len(words)] = "bracket"
    words.append(closer)


def _predicate(rng: random.Random, words: list[str], positive: bool, negated: bool, plural: bool) -> None:
    """ADJ [and ADJ' | but ADJ'' | so PRON COP ADJ*]: the coordinations leak polarity to a masked LM without
    any label, and `so` makes it compute the label itself (ADJ* follows polarity flipped by negation)."""
    same, other = (POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES) if positive else (NEGATIVE_ADJECTIVES,
                                                                                POSITIVE_ADJECTIVES)
    first = rng.choice(same)
    words.append(first)
    r = rng.random()
    if r < P_AND:
        words += ["and", rng.choice([a for a in same if a != first])]
    elif r < P_AND + P_BUT:
        words += ["but", rng.choice(other)]
    elif r < P_AND + P_BUT + P_SO:
        words += ["so", PRONOUNS[plural], "are" if plural else "is", rng.choice(other if negated else same)]


def with_intensifiers(sentence: Sentence) -> Sentence:
    """The sentence with `INTENSIFIER` before each polar adjective (each with probability P_INTENSIFIER).

    The draws come from a generator seeded by the sentence's text, not from the corpus stream, so the sentences
    themselves (and the splits, decided on the plain text) are the same with cues on or off. Marked positions
    move right past every inserted word.
    """
    rng = random.Random(f"minitx-intensifiers/{sentence.text}")
    words: list[str] = []
    moved: dict[int, int] = {}  # old index -> new index
    for i, word in enumerate(sentence.words):
        polar = word in _POSITIVE or word in _NEGATIVE
        if polar and rng.random() < P_INTENSIFIER:
            words.append(INTENSIFIERS[word in _POSITIVE])
        moved[i] = len(words)
        words.append(word)
    determined = {moved[i]: k for i, k in sentence.determined.items()}
    free = {moved[i]: k for i, k in sentence.free.items()}
    return Sentence(" ".join(words), words, determined, sentence.label, free)


_POSITIVE, _NEGATIVE = frozenset(POSITIVE_ADJECTIVES), frozenset(NEGATIVE_ADJECTIVES)
