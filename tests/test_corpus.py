"""The synthetic language: reproducible, disjoint splits; every marked position really is determined (checked by
an independent parse, not by the generator's bookkeeping); labels follow the negation rule and are balanced;
chance baselines match the measured frequencies; the text-file reader is lazy."""

import inspect
import itertools
import math
import tracemalloc
from collections import Counter, defaultdict

import pytest

from minitx.data import synthetic as corpus
from minitx.data.synthetic import SyntheticLanguage, split_of
from minitx.data.text_files import iter_text_files

N = 3000
OPENERS = {"(": ")", "[": "]", "{": "}"}
POSITIVE, NEGATIVE = set(corpus.POSITIVE_ADJECTIVES), set(corpus.NEGATIVE_ADJECTIVES)
PLURAL_SUBJECTS = {pl for _, pl in corpus.SUBJECT_NOUNS}
SUBJECTS = {w for pair in corpus.SUBJECT_NOUNS for w in pair}
NOUNS = SUBJECTS | {w for pair in corpus.PLACE_NOUNS for w in pair}
DETERMINERS = {"this": False, "every": False, "each": False, "these": True, "many": True, "some": True}
PLURALS = PLURAL_SUBJECTS | {pl for _, pl in corpus.PLACE_NOUNS}


@pytest.fixture(scope="module")
def sentences():
    return SyntheticLanguage(0).sentences(N)


def parse(words):
    """Independent parse: (subject index, copula index, predicated-adjective index, negated)."""
    start = words.index(",") + 1 if "," in words else 0  # skip the fixed-phrase prefix
    assert words[start] in DETERMINERS
    subject = start + 1 if words[start + 1] in SUBJECTS else start + 2
    depth, copula = 0, None
    for i in range(subject + 1, len(words)):  # the first is/are outside brackets (asides hold no copula anyway)
        depth += (words[i] in OPENERS) - (words[i] in OPENERS.values())
        if depth == 0 and words[i] in ("is", "are"):
            copula = i
            break
    negated = words[copula + 1] in ("not", "never")
    adjective = copula + 1 + negated
    adjective += words[adjective] in corpus.INTENSIFIERS  # a pretraining-only cue may precede it
    return subject, copula, adjective, negated


def test_same_seed_same_corpus_and_prefix_stable():
    a, b = SyntheticLanguage(3).sentences(200), SyntheticLanguage(3).sentences(300)
    assert a == b[:200]
    assert SyntheticLanguage(4).texts(200) != [s.text for s in a]


def test_splits_are_disjoint_and_reproducible():
    lang = SyntheticLanguage(0)
    texts = {split: set(lang.texts(1000, split)) for split in ("train", "validation", "test")}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert all(split_of(t) == "test" for t in texts["test"])
    assert set(lang.texts(1000, "test")) == texts["test"]
    with pytest.raises(ValueError, match="split"):
        lang.sentences(3, "dev")


def test_sentence_fields_are_consistent(sentences):
    vocabulary = set(SyntheticLanguage.vocabulary())
    assert 150 <= len(vocabulary) <= 500  # "a few hundred words"
    for s in sentences:
        assert s.text == " ".join(s.words) and set(s.words) <= vocabulary
        assert all(0 <= i < len(s.words) for i in s.determined) and set(s.determined.values()) <= set(corpus.KINDS)


def test_agreement_follows_the_parsed_subject_across_a_distractor(sentences):
    nearest_noun_right = 0
    for s in sentences:
        subject, copula, _, _ = parse(s.words)
        assert s.determined.get(copula) == "agreement"
        plural = s.words[subject] in PLURAL_SUBJECTS
        assert s.words[copula] == ("are" if plural else "is")
        assert DETERMINERS[s.words[subject - 1 - (s.words[subject - 1] not in DETERMINERS)]] == plural
        assert copula - subject > 3  # the cue is always more than three positions back
        nearest = [w for w in s.words[subject + 1:copula] if w in NOUNS][-1]  # a distractor always intervenes
        nearest_noun_right += (nearest in PLURALS) == (s.words[copula] == "are")
    # The distractor's number is independent: "agree with the nearest noun" must be far from perfect.
    assert nearest_noun_right / len(sentences) < 0.8


def test_closing_brackets_match_their_openers_by_a_stack(sentences):
    for s in sentences:
        stack, closers = [], {}
        for i, w in enumerate(s.words):
            if w in OPENERS:
                stack.append((i, w))
            elif w in OPENERS.values():
                j, opener = stack.pop()
                assert OPENERS[opener] == w
                assert i - j > 3  # long range
                closers[i] = "bracket"
        assert not stack
        assert {i: k for i, k in s.determined.items() if k == "bracket"} == closers


def test_each_cue_has_exactly_one_answer(sentences):
    # Group every determined position by its cue; a genuinely determined position has one answer per cue.
    answers = defaultdict(set)
    for s in sentences:
        subject, copula, _, _ = parse(s.words)
        answers[("agreement", s.words[subject] in PLURAL_SUBJECTS)].add(s.words[copula])
        for i, kind in s.determined.items():
            if kind == "phrase":
                answers[("phrase", s.words[i - 1])].add(s.words[i])
    assert len(answers) > 10
    assert all(len(a) == 1 for a in answers.values()), {k: v for k, v in answers.items() if len(v) > 1}
    phrase_cues = {cue for kind, cue in answers if kind == "phrase"}
    following = defaultdict(set)  # the cue word is followed by the same word everywhere in the corpus
    for s in sentences:
        for a, b in zip(s.words, s.words[1:]):
            if a in phrase_cues:
                following[a].add(b)
    assert all(len(v) == 1 for v in following.values())


def test_label_is_polarity_flipped_by_negation_and_balanced(sentences):
    for s in sentences:
        _, _, adjective, negated = parse(s.words)
        positive = s.words[adjective] in POSITIVE
        assert positive or s.words[adjective] in NEGATIVE
        assert s.label == int(positive != negated)
    share = sum(s.label for s in sentences) / len(sentences)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(sentences))


def test_coordination_leaks_polarity(sentences):
    # "and" joins adjectives of one polarity, "but" of opposite ones, and "so it is ADJ" states the label:
    # the unlabelled signals MLM can learn from.
    seen = Counter()
    for s in sentences:
        words = [w for w in s.words if w not in corpus.INTENSIFIERS]  # the pretraining-only cue aside
        for a, conj, b in zip(words, words[1:], words[2:]):
            if conj in ("and", "but") and a in POSITIVE | NEGATIVE:
                seen[conj] += 1
                assert ((a in POSITIVE) == (b in POSITIVE)) == (conj == "and")
        if "so" in words:
            seen["so"] += 1
            i = words.index("so")
            plural = words[parse(words)[0]] in PLURAL_SUBJECTS
            assert words[i + 1:i + 3] == (["they", "are"] if plural else ["it", "is"])
            assert (words[i + 3] in POSITIVE) == bool(s.label)
    assert min(seen["and"], seen["but"], seen["so"]) > 500


def test_chance_baselines_match_measured_majority_frequencies(sentences):
    answers = defaultdict(Counter)
    for s in sentences:
        for i, kind in {**s.determined, **s.free}.items():
            answers[kind][s.words[i]] += 1
    chance = {**SyntheticLanguage.kinds(), **SyntheticLanguage.free_kinds()}
    assert set(chance) == set(answers) == {"agreement", "bracket", "phrase", "subject"}
    for kind, counts in answers.items():
        n = sum(counts.values())
        measured = counts.most_common(1)[0][1] / n
        if kind == "subject":  # chance is per noun lemma (given the number): pool the two forms
            lemma = Counter()
            for sg, pl in corpus.SUBJECT_NOUNS:
                lemma[sg] = counts[sg] + counts[pl]
            measured = lemma.most_common(1)[0][1] / n
        assert abs(measured - chance[kind]) < 4 * math.sqrt(chance[kind] * (1 - chance[kind]) / n) + 0.01, kind


def test_iter_text_files_is_lazy(tmp_path):
    path = tmp_path / "big.txt"
    line = "the quick brown fox jumps over the lazy dog " * 4 + "\n"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(f"{i} {line}")
    size = path.stat().st_size
    assert size > 15_000_000
    lines = iter_text_files([path])
    assert inspect.isgenerator(lines)
    assert next(lines).startswith("0 the quick")
    tracemalloc.start()
    count = 1 + sum(1 for _ in lines)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    assert peak < size / 20  # a whole file in memory would cost at least its size


def test_iter_text_files_chains_files_and_skips_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  \ntwo\r\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("three", encoding="utf-8")
    assert list(iter_text_files([tmp_path / "a.txt", tmp_path / "b.txt"])) == ["one", "two", "three"]
    assert list(itertools.islice(iter_text_files(tmp_path / "a.txt"), 1)) == ["one"]
    with pytest.raises(ValueError, match="paths"):
        list(iter_text_files([tmp_path / "missing.txt"]))


def test_intensifiers_only_in_pretraining_text_and_they_match_the_adjective():
    cued, plain = SyntheticLanguage(0).sentences(2000), SyntheticLanguage(0, sentiment_cues=False).sentences(2000)
    inserted = polar = 0
    for c, p in zip(cued, plain):
        assert not set(p.words) & set(corpus.INTENSIFIERS) and c.label == p.label
        assert [w for w in c.words if w not in corpus.INTENSIFIERS] == p.words
        for w, nxt in zip(c.words, c.words[1:]):
            if w in corpus.INTENSIFIERS:
                inserted += 1
                assert nxt in (POSITIVE if w == corpus.INTENSIFIERS[1] else NEGATIVE)
        polar += sum(w in POSITIVE | NEGATIVE for w in p.words)
        assert [c.words[i] for i in sorted(c.determined)] == [p.words[i] for i in sorted(p.determined)]
    assert abs(inserted / polar - corpus.P_INTENSIFIER) < 0.03


def test_iter_text_files_refuses_directories_and_binary_files_by_name(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        list(iter_text_files(tmp_path))
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"first line\n" + bytes([0xFF, 0xD8, 0xFF, 0xE0]) * 50)
    lines = iter_text_files(binary)
    with pytest.raises(ValueError, match="photo.jpg.*not utf-8"):
        list(lines)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    assert list(iter_text_files(latin, encoding="latin-1")) == ["café"]  # another encoding, when asked for


def test_packaged_corpus_streams_lines():
    from minitx.data.corpora import iter_corpus_lines
    lines = iter_corpus_lines("shakespeare")
    assert next(lines) == "First Citizen:" and next(lines).startswith("Before we proceed")
    assert all(line.strip() for line in itertools.islice(lines, 1000))  # blank lines skipped
