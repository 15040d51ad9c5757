"""Byte-level BPE (GPT-2's scheme): lossless on any text, trained deterministically, and its files agree
with Hugging Face's GPT2Tokenizer (a reference no one here wrote) in both directions."""

import collections
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.recipes.lm.recipe import shakespeare_text
from minitx.tokenizers.bpe import ByteBPETokenizer, bytes_to_unicode, pre_tokenize_bytes
from minitx.tokenizers.bpe_trainer import learn_merges, learn_merges_reference
from minitx.tokenizers.progress import merge_progress

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3


@pytest.fixture(scope="module")
def tok():
    return ByteBPETokenizer.train([TEXT], 300)


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"  # GPT-2's own


def test_round_trip_is_lossless_on_any_text(tok):
    for text in (TEXT, "naïve café — 東京 🙂\t\r\n  x", "", "   ", "it's 2024's", "snake_case __x_ 3_000"):
        assert tok.decode(tok.encode(text)) == text


def test_training_learns_merges_that_shorten_text(tok):
    assert tok.vocab_size == 300 and len(tok.merges) == 44
    assert len(tok.encode(TEXT)) < 0.5 * len(TEXT.encode())
    assert ByteBPETokenizer.train([TEXT], 300).merges == tok.merges
    assert b" speak" in tok.tokens or b" spe" in tok.tokens


def test_pre_tokens_never_merge_across_words():
    assert pre_tokenize_bytes("Hello, world  it's") == [b"Hello", b",", b" world", b" ", b" it", b"'s"]
    assert pre_tokenize_bytes("a _b") == [b"a", b" _", b"b"]  # GPT-2 counts "_" as punctuation


def test_save_and_load(tok, tmp_path):
    tok.save(tmp_path / "bpe.json")
    again = ByteBPETokenizer.load(tmp_path / "bpe.json")
    assert again.encode(TEXT) == tok.encode(TEXT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="path"):
        ByteBPETokenizer.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"type": "char", "chars": []}))
    with pytest.raises(ValueError, match="bpe"):
        ByteBPETokenizer.load(tmp_path / "bad2.json")


def test_gpt2_files_agree_with_hf_gpt2_tokenizer(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab, merges = tok.save_gpt2_files(tmp_path)
    hf = transformers.GPT2Tokenizer(str(vocab), str(merges))
    probe = TEXT + "Unseen words: rather famished, proceeding!? 42 times, snake_case __x\n"
    assert hf.encode(probe) == tok.encode(probe)
    # ...and the files HF just read load here into a tokenizer that encodes as HF does
    loaded = ByteBPETokenizer.from_gpt2_files(vocab, merges)
    assert loaded.encode(probe) == hf.encode(probe)


def test_trained_on_shakespeare_compresses_it():
    text = shakespeare_text()[:200_000]
    tok = ByteBPETokenizer.train([text], 512)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) / len(text) < 0.55  # 256 merges: about one token per two characters


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        ByteBPETokenizer.train([TEXT], 100)
    with pytest.raises(TypeError, match="texts"):
        ByteBPETokenizer.train(TEXT, 300)
    tok = ByteBPETokenizer.train([TEXT], 260)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([10_000])
    with pytest.raises(ValueError, match="tokens"):
        ByteBPETokenizer([b"a"], [])
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(ValueError):
        ByteBPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


# ------------------------------------------------------------------------------------- the fast trainer
# minitx.tokenizers.bpe_trainer: learn_merges (pair counts kept incrementally, a heap with lazy invalidation,
# only the words holding the merged pair rewritten) must give exactly the merges of the readable
# learn_merges_reference (a scan of every pair per merge), tie rule included.

def test_fast_trainer_equals_the_reference_on_shakespeare():
    counts = collections.Counter(pre_tokenize_bytes(shakespeare_text()[:150_000]))
    fast = learn_merges(counts, 700)
    assert len(fast) == 700 and len(set(fast)) == 700
    assert fast == learn_merges_reference(counts, 700)


def test_tie_rule_and_overlapping_pairs():
    # Every pair seen once: the smallest pair of byte strings first, (a, b) compared as a tuple.
    assert learn_merges({b"cd": 1, b"ab": 1, b"ac": 1}, 1) == [(b"a", b"b")]
    assert learn_merges({b"cd": 1, b"ab": 1, b"ac": 1}, 5) == [(b"a", b"b"), (b"a", b"c"), (b"c", b"d")]
    # "aaaa" holds (a, a) three times; merged left to right it is (aa, aa), then (aaaa).
    assert learn_merges({b"aaaa": 1}, 5) == [(b"a", b"a"), (b"aa", b"aa")]
    assert learn_merges({b"aaa": 2, b"ab": 3}, 3) == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"a")]
    assert learn_merges({b"": 5, b"x": 2}, 3) == []  # no pair at all: no merge


abc_words = st.binary(min_size=1, max_size=9).map(lambda b: bytes(97 + x % 3 for x in b))  # a, b, c only
words = st.dictionaries(abc_words | st.binary(max_size=6), st.integers(1, 20), max_size=40)


@settings(max_examples=150)
@given(word_counts=words, n_merges=st.integers(0, 40))
def test_fast_trainer_equals_the_reference_on_drawn_word_counts(word_counts, n_merges):
    # Small alphabets (a, b, c) make ties, overlaps ("aaa") and one byte string reached by two merges likely.
    assert learn_merges(word_counts, n_merges) == learn_merges_reference(word_counts, n_merges)


def test_progress_lines_when_not_a_terminal(capsys):
    counts = collections.Counter(pre_tokenize_bytes(TEXT))
    learn_merges(counts, 40, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("BPE merges: 4/40 (10%)") and lines[-1].startswith("BPE merges: done in")
    assert len(lines) == 11 and "\r" not in "".join(lines)
    learn_merges(counts, 40)  # progress=None: a short run says nothing
    learn_merges(counts, 40, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        learn_merges(counts, 40, progress="yes")


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    report = merge_progress(40, "BPE merges", True, file=out)
    for done in range(1, 41):
        report(done)
    report(None)
    assert out.getvalue().startswith("\rBPE merges:") and "40/40" in out.getvalue()  # drawn in place, kept
    quiet = Terminal()
    report = merge_progress(40, "BPE merges", None, file=quiet)  # not long yet: tqdm's delay keeps it hidden
    report(40)
    report(None)
    assert quiet.getvalue() == ""
