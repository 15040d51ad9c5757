"""WordPiece tokenizer: pre-tokenization, greedy longest match, the training criterion, pairs, batches, JSON,
round trips (corpus text and Hypothesis-drawn unicode) and a differential check against Hugging Face's
BertTokenizer given the same vocabulary."""

import collections
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.data.synthetic import SyntheticLanguage
from minitx.recipes.lm.recipe import shakespeare_text
from minitx.tokenizers.pretokenize import pre_tokenize
from minitx.tokenizers.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer, truncated_lengths
from minitx.tokenizers.wordpiece_trainer import learn_vocabulary

UNICODE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(
    alphabet=st.sampled_from(list("aZé\u0301İΣς日本語한국\u3000\u00a0\u200b\x00\x1c\x85\ufffd\u2028\t\n .,!¿—«»")),
    max_size=40)

SMALL_TEXT = """The quick brown fox jumps over the lazy dog. Café au lait, s'il vous plaît!
Tokenizers split unbelievable words into pieces; un-tokenizable ones become [UNK].
Ελληνικά κείμενα και 日本語のテキスト (with brackets) and "quotes" — dashes, numbers 12345 & symbols #@%."""


@pytest.fixture(scope="module")
def corpus_tokenizer():
    texts = SyntheticLanguage(0).texts(1500)
    return WordPieceTokenizer.train(texts, vocab_size=2000), texts


@pytest.fixture(scope="module")
def shakespeare_words():
    return pre_tokenize(shakespeare_text()[:40_000])


@pytest.fixture(scope="module")
def small_tokenizer():
    return WordPieceTokenizer.train([SMALL_TEXT] * 3, vocab_size=120, min_frequency=2)


def test_pre_tokenize_matches_bert_basic_rules():
    assert pre_tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert pre_tokenize("Café  naïve\tÉTÉ") == ["cafe", "naive", "ete"]  # accents stripped after lowercasing
    assert pre_tokenize("Café", lowercase=False) == ["Café"]
    assert pre_tokenize("日本語abc") == ["日", "本", "語", "abc"]  # CJK characters are words of their own
    assert pre_tokenize("a\x00b\u200bc d") == ["abc", "d"]  # NUL and format characters vanish
    assert pre_tokenize("") == [] and pre_tokenize(" \n\t ") == []


def test_greedy_longest_match_first():
    tok = WordPieceTokenizer(list(SPECIAL_TOKENS) + ["a", "ab", "##b", "##c", "##bc", "x"])
    assert tok.tokenize_word("abc") == ["ab", "##c"]  # longest prefix first, not the best segmentation
    assert tok.tokenize_word("abbc") == ["ab", "##bc"]
    assert tok.tokenize_word("abd") == ["[UNK]"]  # one uncovered character makes the whole word [UNK]
    assert tok.tokenize_word("ca") == ["[UNK]"]  # "c" exists only as a continuation piece
    short = WordPieceTokenizer(tok.vocab, max_input_chars_per_word=3)
    assert short.tokenize_word("abbc") == ["[UNK]"] and short.tokenize_word("abc") == ["ab", "##c"]


def test_training_merges_the_most_frequent_pair_and_keeps_the_likelihood_option():
    # counts: a=6, c=1, ##b=5, ##c=2; pairs: (a,##b)=4 -> 4/30, (a,##c)=2 -> 2/12, (c,##b)=1 -> 1/5.
    counts = {"ab": 4, "ac": 2, "cb": 1}
    alphabet = ["##b", "##c", "a", "c"]
    assert learn_vocabulary(counts, budget=5, min_frequency=1) == alphabet + ["ab"]  # the most frequent pair
    assert learn_vocabulary(counts, budget=7, min_frequency=1) == alphabet + ["ab", "ac", "cb"]
    assert learn_vocabulary(counts, budget=7, min_frequency=3) == alphabet + ["ab"]  # (a,##c) seen only twice
    # The likelihood score count(ab) / (count(a) count(b)) prefers the rare pair (c,##b) instead.
    assert learn_vocabulary(counts, budget=5, min_frequency=1, criterion="likelihood") == alphabet + ["cb"]
    assert learn_vocabulary(counts, budget=5, min_frequency=2, criterion="likelihood") == alphabet + ["ac"]
    # A budget smaller than the alphabet keeps the most frequent characters: a (6), ##b (5), ##c (2).
    assert learn_vocabulary(counts, budget=3, min_frequency=1) == ["##b", "##c", "a"]
    with pytest.raises(ValueError, match="criterion"):
        learn_vocabulary(counts, budget=5, criterion="bpe")


def recount_vocabulary(word_counts, budget, min_frequency=2):
    """The readable reference for learn_vocabulary(criterion="frequency"): every pair recounted from scratch
    at every merge, the most frequent taken (ties: the smallest pair)."""
    words = sorted(word_counts)
    splits = {w: [w[0]] + ["##" + c for c in w[1:]] for w in words}
    symbol_counts = collections.Counter()
    for w in words:
        for s in splits[w]:
            symbol_counts[s] += word_counts[w]
    tokens = sorted(sorted(symbol_counts, key=lambda s: (-symbol_counts[s], s))[:budget])
    while len(tokens) < budget:
        pairs = {}
        for w in words:
            for p in zip(splits[w], splits[w][1:]):
                pairs[p] = pairs.get(p, 0) + word_counts[w]
        pairs = {p: c for p, c in pairs.items() if c >= min_frequency}
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        for w in words:
            sp, out, i = splits[w], [], 0
            while i < len(sp):
                if i + 1 < len(sp) and (sp[i], sp[i + 1]) == best:
                    out.append(best[0] + best[1][2:])
                    i += 2
                else:
                    out.append(sp[i])
                    i += 1
            splits[w] = out
        if best[0] + best[1][2:] not in tokens:
            tokens.append(best[0] + best[1][2:])
    return tokens


def test_incremental_counts_equal_a_full_recount():
    # The fast trainer (minitx.tokenizers.pair_merges: incremental counts, a lazily invalidated heap) must
    # pick, at every step, the pair a from-scratch recount would pick.
    import random
    rng = random.Random(0)
    counts = {"".join(rng.choice("abcd") for _ in range(rng.randint(1, 7))): rng.randint(1, 9) for _ in range(60)}
    assert learn_vocabulary(counts, budget=60) == recount_vocabulary(counts, 60)


def test_fast_trainer_equals_the_recount_on_shakespeare(shakespeare_words):
    counts = collections.Counter(shakespeare_words)
    fast = learn_vocabulary(counts, budget=160)
    assert len(fast) == 160 and "the" in fast
    assert fast == recount_vocabulary(counts, 160)


FEW_LETTER_WORDS = st.text(alphabet="abc", min_size=1, max_size=8) | st.text(alphabet="aé日", min_size=1, max_size=4)


@settings(max_examples=100)
@given(st.dictionaries(FEW_LETTER_WORDS, st.integers(1, 12), max_size=30), st.integers(1, 40), st.integers(1, 3))
def test_fast_trainer_equals_the_recount_on_drawn_word_counts(word_counts, budget, min_frequency):
    # Few letters: ties, overlaps ("aaa") and one piece reached by two different merges ("ab"+"##c",
    # "a"+"##bc") are all likely.
    assert learn_vocabulary(word_counts, budget, min_frequency) == recount_vocabulary(word_counts, budget,
                                                                                       min_frequency)


@settings(max_examples=50, deadline=None)
@given(st.lists(UNICODE_TEXT, max_size=12), st.booleans())
def test_training_reads_lines_joined_as_it_would_one_by_one(lines, lowercase):
    # train() pre-tokenizes lines joined by newlines (one pass per chunk); the words must be those of each line
    # taken alone.
    counts = collections.Counter(w for line in lines for w in pre_tokenize(line, lowercase))
    tokens = WordPieceTokenizer.train(lines, vocab_size=300, min_frequency=1, lowercase=lowercase).vocab
    assert tokens[len(SPECIAL_TOKENS):] == [t for t in learn_vocabulary(counts, 295, 1) if t not in SPECIAL_TOKENS]


def test_progress_lines_when_not_a_terminal(capsys):
    WordPieceTokenizer.train([SMALL_TEXT] * 3, vocab_size=120, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("WordPiece merges: ") and lines[-1].startswith("WordPiece merges: done in")
    WordPieceTokenizer.train([SMALL_TEXT] * 3, vocab_size=120)  # progress=None: a short run says nothing
    assert capsys.readouterr().err == ""


def test_training_is_deterministic_and_order_free():
    texts = SyntheticLanguage(1).texts(300)
    a = WordPieceTokenizer.train(texts, vocab_size=150)
    b = WordPieceTokenizer.train(list(reversed(texts)), vocab_size=150)
    assert a.vocab == b.vocab and a.vocab_size == 150


def test_corpus_words_are_single_tokens_and_corpus_text_round_trips(corpus_tokenizer):
    tok, texts = corpus_tokenizer
    for word in SyntheticLanguage.vocabulary():
        assert tok.tokenize_word(word) == [word]
    for text in texts[:200]:
        enc = tok.encode(text)
        assert tok.unk_id not in enc.ids
        assert tok.decode(enc.ids) == text
        assert enc.word_ids[1:-1] == list(range(len(text.split())))


def test_unseen_words_split_into_pieces(small_tokenizer):
    tok = small_tokenizer
    for word in ("tokenize", "quickest", "unbelievably"):
        pieces = tok.tokenize_word(word)
        assert "[UNK]" not in pieces and len(pieces) > 1
        assert all(p.startswith("##") for p in pieces[1:]) and not pieces[0].startswith("##")
        assert "".join(p.removeprefix("##") for p in pieces) == word


@settings(max_examples=25)
@given(st.text(max_size=60))
def test_round_trip_on_unicode_text(text):
    # A tokenizer trained on the text itself knows all of its characters, so nothing may become [UNK]
    # (except words longer than max_input_chars_per_word, which the strategy cannot reach).
    tok = WordPieceTokenizer.train([text], vocab_size=64, min_frequency=1)
    enc = tok.encode(text)
    assert tok.unk_id not in enc.ids
    assert tok.decode(enc.ids) == tok.normalize(text) == " ".join(pre_tokenize(text))


@settings(max_examples=25)
@given(st.text(max_size=60))
def test_unencodable_words_become_one_unk_each(text):
    tok = WordPieceTokenizer.train([SMALL_TEXT], vocab_size=100)
    expected = [w if "[UNK]" not in tok.tokenize_word(w) else "[UNK]" for w in pre_tokenize(text)]
    assert tok.decode(tok.encode(text).ids) == " ".join(expected)


ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;!?()[]'\"-\t\néüÉÜ日本語κείμ"))


@pytest.fixture(scope="module")
def hf_tokenizer(small_tokenizer):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(vocab=dict(small_tokenizer.token_to_id), do_lower_case=True)


@settings(max_examples=25)
@given(st.text(alphabet=ALPHABET, max_size=80), st.text(alphabet=ALPHABET, min_size=1, max_size=40))
def test_agrees_with_hugging_face_bert_tokenizer(small_tokenizer, hf_tokenizer, text, pair):
    # HF treats an empty pair as no pair, hence min_size=1 (our encode takes pair="" as an empty segment).
    tok, hf = small_tokenizer, hf_tokenizer
    ours = tok.encode(text, pair=pair)
    theirs = hf(text, pair)
    assert ours.ids == theirs["input_ids"]
    assert ours.type_ids == theirs["token_type_ids"]


def test_pairs_have_segment_ids_and_word_ids(corpus_tokenizer):
    tok, _ = corpus_tokenizer
    enc = tok.encode("the dog is good .", pair="the cats are cruel")
    assert enc.tokens == ["[CLS]", "the", "dog", "is", "good", ".", "[SEP]", "the", "cats", "are", "cruel", "[SEP]"]
    assert enc.type_ids == [0] * 7 + [1] * 5
    assert enc.special_tokens_mask == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert enc.word_ids == [None, 0, 1, 2, 3, 4, None, 0, 1, 2, 3, None]


def test_truncation_removes_from_the_longer_segment(corpus_tokenizer):
    tok, _ = corpus_tokenizer
    enc = tok.encode("the dog near the old trees is good", pair="the cat", max_length=9)
    assert len(enc) == 9
    assert enc.tokens == ["[CLS]", "the", "dog", "near", "the", "[SEP]", "the", "cat", "[SEP]"]
    assert tok.encode("the dog is good", max_length=4).tokens == ["[CLS]", "the", "dog", "[SEP]"]
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("the dog", pair="the cat", max_length=2)


def test_encode_batch_pads_and_marks_padding_special(corpus_tokenizer):
    tok, _ = corpus_tokenizer
    batch = tok.encode_batch(["the dog is good .", "", "the cats"], pad_to=10)
    lengths = [7, 2, 4]
    assert batch["input_ids"].shape == (3, 10)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert (batch["input_ids"][i, n:] == tok.pad_id).all()
        assert (batch["special_tokens_mask"][i, n:] == 1).all() and (batch["word_ids"][i, n:] == -1).all()
        assert batch["input_ids"][i, 0] == tok.cls_id and batch["input_ids"][i, n - 1] == tok.sep_id
    assert tok.decode(batch["input_ids"][1]) == ""


def test_empty_and_special_decoding(corpus_tokenizer):
    tok, _ = corpus_tokenizer
    assert tok.encode("").tokens == ["[CLS]", "[SEP]"]
    ids = tok.encode("the dog").ids
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] the dog [SEP]"
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TypeError, match="text"):
        tok.encode(3)


def test_save_load_round_trip(tmp_path, small_tokenizer):
    path = tmp_path / "tok.json"
    small_tokenizer.save(path)
    loaded = WordPieceTokenizer.load(path)
    assert loaded.vocab == small_tokenizer.vocab and loaded.lowercase == small_tokenizer.lowercase
    assert loaded.encode(SMALL_TEXT).ids == small_tokenizer.encode(SMALL_TEXT).ids


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a valid tokenizer JSON"),
    ("[1, 2]", "expected a tokenizer file"),
    (json.dumps({"type": "bpe", "version": 1}), "expected a tokenizer file"),
    (json.dumps({"type": "wordpiece", "version": 1, "vocab": "abc", "lowercase": True,
                 "max_input_chars_per_word": 100}), "'vocab' should be a list"),
    (json.dumps({"type": "wordpiece", "version": 1, "vocab": ["a", "b"], "lowercase": True,
                 "max_input_chars_per_word": 100}), "malformed tokenizer"),
    (json.dumps({"type": "wordpiece", "version": 1, "vocab": list(SPECIAL_TOKENS) + ["a", "a"],
                 "lowercase": True, "max_input_chars_per_word": 100}), "unique"),
])
def test_malformed_file_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        WordPieceTokenizer.load(path)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocab_size"):
        WordPieceTokenizer.train(["a b"], vocab_size=3)
    with pytest.raises(ValueError, match="vocab"):
        WordPieceTokenizer(["a", "b"])
    assert torch.is_tensor(WordPieceTokenizer(list(SPECIAL_TOKENS)).encode_batch(["x"])["input_ids"])


# ----------------------------------------------------------------------------------------------- BERT's rules


@settings(max_examples=200, deadline=None)
@given(UNICODE_TEXT, st.booleans())
def test_pre_tokenize_equals_transformers_basic_tokenizer(text, lowercase):
    # BERT's BasicTokenizer as transformers ships it: controls dropped, CJK split, NFC, lowercasing with
    # accent stripping (uncased) or neither (cased), punctuation split.
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    assert pre_tokenize(text, lowercase) == legacy.BasicTokenizer(do_lower_case=lowercase).tokenize(text)


def test_bert_normalisation_examples():
    assert pre_tokenize("Héllo, WORLD!", lowercase=False) == ["Héllo", ",", "WORLD", "!"]  # cased keeps both
    assert pre_tokenize("Ünïcödé") == ["unicode"]
    assert pre_tokenize("中文字abc") == ["中", "文", "字", "abc"]  # CJK ideographs are words of their own
    assert pre_tokenize("ひらがな한국어", lowercase=False) == ["ひらがな한국어"]  # kana, hangul: not CJK to BERT
    assert pre_tokenize("が") == ["か"]  # uncased strips the dakuten (a combining mark after NFD), as BERT does
    assert pre_tokenize("a\x1cb\u2028c") == ["ab", "c"]  # a control character vanishes; U+2028 separates
    assert pre_tokenize("𠀀x") == ["𠀀", "x"]  # CJK extension B


def test_cased_tokenizer_keeps_case():
    texts = ["The King and the KING", "Romeo and Juliet"] * 3
    cased = WordPieceTokenizer.train(texts, vocab_size=200, lowercase=False)
    assert "King" in cased.token_to_id and "KING" in cased.token_to_id and "king" not in cased.token_to_id
    assert cased.decode(cased.encode("The King").ids) == "The King"
    assert WordPieceTokenizer.train(texts, vocab_size=200).decode(
        WordPieceTokenizer.train(texts, vocab_size=200).encode("The King").ids) == "the king"


def test_train_refuses_a_single_string():
    with pytest.raises(TypeError, match="texts"):
        WordPieceTokenizer.train("a string of text", vocab_size=50)


# ----------------------------------------------------------------------------------------------- linear time
def test_truncated_lengths_equal_berts_loop():
    for la in range(0, 14):
        for lb in range(0, 14):
            for budget in range(0, 16):
                a, b = la, lb
                while a + b > budget:  # BERT's truncate_seq_pair
                    if a >= b:
                        a -= 1
                    else:
                        b -= 1
                assert truncated_lengths(la, lb, budget) == (a, b), (la, lb, budget)


def test_a_one_megabyte_line_encodes_in_under_two_seconds(small_tokenizer):
    # Regression: truncation used to drop one token per loop pass (quadratic: ~590 s for 1 MB).
    import time
    line = ("the quick brown fox jumps over the lazy dog , again and again . " * 20000)[:1_000_000]
    start = time.perf_counter()
    full = small_tokenizer.encode(line)
    cut = small_tokenizer.encode(line, max_length=128)
    pair = small_tokenizer.encode(line, pair=line, max_length=128)
    one_word = small_tokenizer.encode("x" * 1_000_000, max_length=16)  # one huge word: [UNK]
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert len(full) > 200_000 and len(cut) == len(pair) == 128 and one_word.tokens[1] == "[UNK]"
    assert cut.ids[:-1] == full.ids[:127] and pair.type_ids.count(1) == 64


# ----------------------------------------------------------------------------------------------- vocab.txt, files
def test_hugging_face_vocab_txt_with_specials_anywhere(tmp_path):
    # bert-base's layout: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the pieces.
    transformers = pytest.importorskip("transformers")
    words = ["the", "king", "and", "queen", "##s", "##ing", "go", "sing", ",", ".", "a", "##a", "q", "##u"]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = WordPieceTokenizer.from_vocab_file(path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.special_ids == [0, 100, 101, 102, 103] and tok.vocab == vocab
    hf = transformers.BertTokenizer(vocab=str(path), do_lower_case=True)  # transformers 5: vocab= takes the file
    for text in ("The kings and queens sing, go.", "Singing queens", "xyz the", ""):
        assert tok.encode(text, pair="a king").ids == hf(text, "a king")["input_ids"]
        assert tok.encode(text).tokens == hf.convert_ids_to_tokens(hf(text)["input_ids"])
    tok.save_vocab_file(tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    batch = tok.encode_batch(["the king", "go"])
    assert batch["input_ids"][1, -1] == 0 and batch["special_tokens_mask"][0].tolist() == [1, 0, 0, 1]


def test_masking_with_specials_elsewhere_never_draws_a_special(tmp_path):
    from minitx.data.mlm import mask_tokens
    special = [0, 100, 101, 102, 103]
    ids = torch.full((256, 256), 200)
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, torch.zeros_like(ids), 210, 103, mlm_probability=1.0, generator=g,
                                 special_ids=special)
    replaced = inputs[(inputs != 103) & (inputs != 200)]
    assert replaced.numel() > 5000 and not any(int(i) in special for i in replaced.unique())
    assert set(replaced.unique().tolist()) >= {1, 99, 104, 209}  # drawn from every non-special id


def test_old_tokenizer_files_still_load(tmp_path):
    path = tmp_path / "old.json"  # the version-1 format written before specials could live anywhere
    path.write_text(json.dumps({"type": "wordpiece", "version": 1, "lowercase": True, "max_input_chars_per_word": 100,
                                "vocab": list(SPECIAL_TOKENS) + ["the", "##s"]}), encoding="utf-8")
    tok = WordPieceTokenizer.load(path)
    assert tok.encode("the thes").tokens == ["[CLS]", "the", "the", "##s", "[SEP]"]
    assert (tok.pad_id, tok.mask_id) == (0, 4)


def test_hostile_tokenizer_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        WordPieceTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        WordPieceTokenizer.load(tmp_path / "missing.json")
    path = tmp_path / "bool.json"
    path.write_text(json.dumps({"type": "wordpiece", "version": 1, "lowercase": True, "max_input_chars_per_word": True,
                                "vocab": list(SPECIAL_TOKENS)}), encoding="utf-8")
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordPieceTokenizer.load(path)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid tokenizer JSON"):
        WordPieceTokenizer.load(tmp_path / "deep.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ValueError, match="binary.json"):
        WordPieceTokenizer.load(tmp_path / "binary.json")
    with pytest.raises(ValueError, match="directory"):
        WordPieceTokenizer.from_vocab_file(tmp_path)
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordPieceTokenizer(list(SPECIAL_TOKENS), max_input_chars_per_word=True)
