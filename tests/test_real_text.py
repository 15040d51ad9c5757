"""Real text end to end: the packaged Shakespeare, the tokenizer against Hugging Face's on it, packing,
shuffling, the held-out split, streaming, the `--corpus shakespeare` / `--text` / `--eval-text` recipe, the
unigram baseline, and fill-mask's word-start rule."""

import gzip
import hashlib
import itertools
import time

import pytest
import torch

from minitx.data.corpora import CORPORA, corpus_file, iter_corpus_lines
from minitx.data.text import HELD_OUT_PERCENT, PASSAGE_LINES, pack_lines, passage_split, shuffled, split_lines
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.data import build_corpus
from minitx.recipes.pretrain.evaluate import unigram_log_probs
from minitx.recipes.pretrain.fill_mask import fill_mask, starts_a_word
from minitx.recipes.pretrain.recipe import run_pretraining
from minitx.tokenizers.pretokenize import pre_tokenize
from minitx.tokenizers.wordpiece import WordPieceTokenizer

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # ../shared/data/README.md


@pytest.fixture(scope="module")
def shakespeare_lines():
    return list(iter_corpus_lines("shakespeare"))


@pytest.fixture(scope="module")
def shakespeare_tokenizer(shakespeare_lines):
    return WordPieceTokenizer.train(shakespeare_lines, vocab_size=2000)


def test_packaged_shakespeare_is_the_published_text(shakespeare_lines):
    raw = gzip.decompress(corpus_file("shakespeare").read_bytes())
    assert len(raw) == 1_115_394 and hashlib.sha256(raw).hexdigest() == SHAKESPEARE_SHA256
    assert CORPORA["shakespeare"][1] == SHAKESPEARE_SHA256
    assert shakespeare_lines[:2] == ["First Citizen:", "Before we proceed any further, hear me speak."]
    assert len(shakespeare_lines) == sum(1 for line in raw.decode().splitlines() if line.strip())
    with pytest.raises(ValueError, match="corpus"):
        corpus_file("wikipedia")


@pytest.mark.slow
def test_tokenizer_matches_hugging_face_pieces_per_word_on_shakespeare(shakespeare_lines):
    tokenizers = pytest.importorskip("tokenizers")
    start = time.perf_counter()
    ours = WordPieceTokenizer.train(shakespeare_lines, vocab_size=8000)
    train_s = time.perf_counter() - start
    theirs = tokenizers.BertWordPieceTokenizer()  # lowercase, BERT's normalizer, min_frequency 2 below
    theirs.train_from_iterator(shakespeare_lines, vocab_size=8000, min_frequency=2, show_progress=False)
    words = [w for line in shakespeare_lines for w in pre_tokenize(line)]
    ours_ppw = sum(len(ours.tokenize_word(w)) for w in words) / len(words)
    theirs_ppw = sum(len(e.tokens) for e in theirs.encode_batch(shakespeare_lines, add_special_tokens=False)) / len(words)
    assert ours.vocab_size == theirs.get_vocab_size() == 8000
    assert abs(ours_ppw / theirs_ppw - 1) < 0.05, (ours_ppw, theirs_ppw)
    for word in ("the", "and", "is", "of"):
        assert ours.tokenize_word(word) == [word]
    assert train_s < 30, f"training took {train_s:.1f} s"
    # The likelihood score spends the budget on rare pairs: the same words split (lesson 05 shows it larger).
    small = WordPieceTokenizer.train(shakespeare_lines[:3000], 500, criterion="likelihood")
    assert len(small.tokenize_word("the")) > 1


# ----------------------------------------------------------------------------------------------- packing
def test_packing_keeps_every_token_in_full_framed_blocks(shakespeare_tokenizer, shakespeare_lines):
    tok, lines = shakespeare_tokenizer, shakespeare_lines[:400]
    blocks = list(pack_lines(lines, tok, max_length=32))
    stream = [i for line in lines for i in tok.encode(line).ids[1:-1]]
    assert all(len(b) == 32 and b.ids[0] == tok.cls_id and b.ids[-1] == tok.sep_id for b in blocks)
    body = [i for b in blocks for i in b.ids[1:-1]]
    assert body == stream[:len(body)] and len(stream) - len(body) < 30  # only the last partial block is left
    for b in blocks:
        words = b.word_ids[1:-1]
        assert words[0] == 0 and all(0 <= y - x <= 1 for x, y in zip(words, words[1:]))
        assert b.special_tokens_mask == [1] + [0] * 30 + [1]
    with pytest.raises(ValueError, match="max_length"):
        next(pack_lines(lines, tok, max_length=2))


def test_shuffle_buffer_is_a_seeded_bounded_permutation():
    items = list(range(1000))
    a, b = list(shuffled(items, 100, seed=1)), list(shuffled(items, 100, seed=2))
    assert sorted(a) == items and a == list(shuffled(items, 100, seed=1)) and a != b and a != items
    assert list(shuffled(items, 1, seed=3)) == items
    reads = []
    first = next(shuffled((reads.append(i) or i for i in itertools.count()), 50, seed=0))  # an endless stream
    assert len(reads) == 51 and 0 <= first <= 50  # it held 50 items, never the stream


def test_held_out_split_is_whole_passages_spread_over_the_text(shakespeare_lines):
    splits = [passage_split(i) for i in range(len(shakespeare_lines))]
    share = splits.count("validation") / len(splits)
    assert HELD_OUT_PERCENT / 100 * 0.5 < share < HELD_OUT_PERCENT / 100 * 2
    assert all(len(set(splits[p:p + PASSAGE_LINES])) == 1 for p in range(0, len(splits), PASSAGE_LINES))
    held = [i for i, s in enumerate(splits) if s == "validation"]
    assert held[0] < len(splits) * 0.1 and held[-1] > len(splits) * 0.9  # not one block at the end
    train = list(split_lines(shakespeare_lines, "train"))
    assert len(train) + len(held) == len(shakespeare_lines)


# ----------------------------------------------------------------------------------------------- the recipe
def tiny(tmp_path, **kw):
    base = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, batch_size=4, max_length=24, vocab_size=300,
                max_steps=2, warmup_steps=1, eval_every=0, eval_sentences=8, log_every=1,
                out_dir=str(tmp_path / "run"),
                progress=False, tokenizer_lines=2000)
    base.update(kw)
    return PretrainConfig(**base)


def test_shakespeare_corpus_gives_full_packed_shuffled_batches(tmp_path):
    cfg = tiny(tmp_path, corpus="shakespeare")
    corpus = build_corpus(cfg)
    tok = WordPieceTokenizer.train(corpus.tokenizer_texts(), cfg.vocab_size)
    fn = corpus.batch_fn(tok)
    batch = fn(1, 0, 0, 1)
    assert batch["input_ids"].shape == (4, 24) and bool(batch["attention_mask"].all())  # no padding at all
    assert torch.equal(fn(1, 0, 0, 1)["labels"], batch["labels"])  # a pure function of the step
    first_train = tok.encode(next(iter_corpus_lines("shakespeare"))).ids[1:-1]
    assert batch["special_tokens_mask"][0].tolist() == [1] + [0] * 22 + [1]
    starts = [corpus.rank_stream(0, 1, 0, tok).__next__()[i].ids[1:4] for i in range(4)]
    assert first_train[:3] not in starts  # shuffled: the stream does not begin at the file's first line
    assert len(corpus.eval_examples) == 8 and corpus.unigram.shape == (tok.vocab_size,)
    r0, r1 = (next(corpus.rank_stream(r, 2, 0, tok)) for r in (0, 1))
    assert all(a.ids != b.ids for a in r0 for b in r1)  # DDP ranks read different blocks


def test_per_line_mode_and_a_separate_eval_file(tmp_path):
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text("\n".join(f"the cat {i} sat on the mat ." for i in range(100)), encoding="utf-8")
    held.write_text("\n".join(f"a dog {i} ran ." for i in range(20)), encoding="utf-8")
    cfg = tiny(tmp_path, text=[str(train)], eval_text=[str(held)], packing=False, shuffle_buffer=1)
    corpus = build_corpus(cfg)
    tok = WordPieceTokenizer.train(corpus.tokenizer_texts(), 100)
    corpus.batch_fn(tok)
    assert set(corpus.eval_examples) <= {f"a dog {i} ran ." for i in range(20)} and len(corpus.eval_examples) == 8
    assert next(corpus.rank_stream(0, 1, 0))[:2] == ["the cat 0 sat on the mat .", "the cat 1 sat on the mat ."]


def test_pretrain_on_shakespeare_end_to_end_reports_the_unigram_baseline(tmp_path):
    result = run_pretraining(tiny(tmp_path, corpus="shakespeare", max_steps=3))
    assert result.summary["corpus"] == "shakespeare" and result.summary["determined"] is None
    ev = [r for r in result.train.history if r.get("split") == "eval"][-1]
    assert ev["unigram_loss"] > 0 and 0 < ev["unigram_accuracy"] < 0.5 and ev["loss"] > 0
    # Accuracy where the input shows [MASK] (no copying possible), for the model and the baseline alike.
    assert 0 <= ev["accuracy_at_mask"] <= 1 and 0 < ev["unigram_accuracy_at_mask"] < 0.5


def test_unigram_baseline_is_the_training_frequencies():
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    logp = unigram_log_probs(["a a a b"], tok)
    assert torch.allclose(logp[5:].exp(), torch.tensor([4 / 6, 2 / 6]))  # add-one: (3+1)/(4+2), (1+1)/6
    assert torch.isinf(logp[:5]).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=["."]), "directory"),
    (dict(eval_text=["missing.txt"], corpus="shakespeare"), "no such file"),
    (dict(corpus="wiki"), "corpus"),
    (dict(corpus="shakespeare", text=["README.md"]), "both"),
    (dict(shuffle_buffer=0), "shuffle_buffer"),
    (dict(tokenizer="."), "directory"),
])
def test_bad_real_text_config_names_the_field(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **kwargs)


def test_binary_text_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"line one\n" + bytes(range(128, 256)) * 10)
    cfg = tiny(tmp_path, text=[str(path)])
    with pytest.raises(ValueError, match="image.bin"):
        run_pretraining(cfg)


# ----------------------------------------------------------------------------------------------- fill-mask
def test_fill_mask_proposes_no_continuation_where_a_word_stands_alone():
    tok = WordPieceTokenizer.train(["the playing players play plays played ."] * 5, vocab_size=60)
    assert any(t.startswith("##") for t in tok.vocab)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32))
    alone = fill_mask(model, tok, "the [MASK] play .", top_k=tok.vocab_size)[0]
    glued = fill_mask(model, tok, "the play[MASK] .", top_k=tok.vocab_size)[0]
    assert alone and not any(t.startswith("##") for t, _ in alone)
    assert any(t.startswith("##") for t, _ in glued)
    assert not any(t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]") for t, _ in alone + glued)
    assert starts_a_word("[MASK] a, [MASK] b[MASK] 3[MASK]") == [True, True, False, False]


@pytest.mark.slow
def test_real_text_benchmark_minitx_and_hugging_face_agree(tmp_path):
    pytest.importorskip("transformers")
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "mlm_real_text", Path(__file__).resolve().parents[1] / "benchmarks" / "mlm_real_text.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse(["--steps", "4", "--eval-every", "2", "--d-model", "16", "--n-heads", "2", "--d-ff", "32",
                        "--max-length", "24", "--batch-size", "4", "--eval-blocks", "8", "--vocab-size", "300", "--warmup-steps", "1",
                        "--out", str(tmp_path / "r")])
    doc = bench.run(args)
    assert [r["step"] for r in doc["curves"]["minitx"]] == [0, 2, 4]
    assert doc["relative_difference"] < 1e-4 and doc["final"]["minitx"]["loss"] != doc["curves"]["minitx"][0]["loss"]
    assert doc["unigram"]["loss"] > 0 and set(doc["tokens_per_s"]) == {"minitx", "hf"}
