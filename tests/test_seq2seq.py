"""The seq2seq recipe around the Transformer: the built-in dates task, the character vocabulary, parallel text
(two files or TSV), teacher-forcing batches (tf.6), BLEU against sacreBLEU, `minitx train-seq2seq` and
`minitx translate` end to end, and errors that name the argument."""

import datetime
import json
import random

import pytest
import torch

from minitx.cli import main as cli_main
from minitx.data.dates import STYLES, date_pair, date_pairs, split_of
from minitx.recipes.seq2seq.data import BOS, EOS, PAD, UNK, CharVocab, read_parallel, seq2seq_batch
from minitx.recipes.seq2seq.metrics import corpus_bleu, exact_match, tokenize_13a
from minitx.recipes.seq2seq.recipe import Seq2SeqConfig, run_seq2seq
from minitx.recipes.seq2seq.translate import load_seq2seq, translate_main


def test_dates_splits_are_disjoint_stable_and_iso():
    train, test = date_pairs(3000, "train"), date_pairs(300, "test")
    assert not {t for _, t in train} & {t for _, t in test}
    assert date_pairs(100, "train") == train[:100] and date_pairs(10, "train", seed=1) != train[:10]
    for source, target in test:
        date = datetime.date.fromisoformat(target)
        assert split_of(date) == "test" and str(date.year) in source
    styles = {date_pair(datetime.date(1999, 3, 12), s)[0] for s in range(len(STYLES))}
    assert {"12 March 1999", "March 12, 1999", "12/03/1999", "the 12th of March 1999"} <= styles
    with pytest.raises(ValueError, match="split"):
        date_pairs(3, "dev")


def test_vocab_round_trip_and_batches_shift_right():
    """(tf.6): labels are target + </s> (padding -100), decoder inputs are <s> + labels[:-1] (padding <pad>)."""
    vocab = CharVocab.train(["abc", "cab!"])
    assert vocab.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and vocab.vocab_size == 8
    assert vocab.decode(vocab.encode("cab")) == "cab" and vocab.encode("z", eos=False) == [UNK]
    assert CharVocab.from_state(json.loads(json.dumps(vocab.state()))).tokens == vocab.tokens
    batch = seq2seq_batch([("ab", "c"), ("abc", "ba")], vocab, 10)
    a, b, c = (vocab.encode(x, eos=False)[0] for x in "abc")
    assert batch["labels"].tolist() == [[c, EOS, -100], [b, a, EOS]]
    assert batch["decoder_input_ids"].tolist() == [[BOS, c, EOS], [BOS, b, a]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, 3] == PAD


def test_parallel_text_from_two_files_or_tsv(tmp_path):
    (tmp_path / "src.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("1\n2\n\n3\n", encoding="utf-8")
    (tmp_path / "pairs.tsv").write_text("one\t1\ntwo\t2\n", encoding="utf-8")
    assert read_parallel(tmp_path / "src.txt", tmp_path / "tgt.txt") == [("one", "1"), ("two", "2"), ("three", "3")]
    assert read_parallel(tsv=tmp_path / "pairs.tsv") == [("one", "1"), ("two", "2")]
    (tmp_path / "short.txt").write_text("1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="target_file"):
        read_parallel(tmp_path / "src.txt", tmp_path / "short.txt")
    (tmp_path / "bad.tsv").write_text("one\t1\ntwo 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_parallel(tsv=tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="source_file"):
        read_parallel(tmp_path / "missing.txt", tmp_path / "tgt.txt")


def test_bleu_and_tokenization_equal_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat.", "1999-03-12", "(big)", "dog,", "3.5", "&amp;"]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(40)]
    hyps = [" ".join(w for w in r.split() if rng.random() > 0.2) + rng.choice(["", " cat", " on a mat"])
            for r in refs]
    assert all(tokenize_13a(r) == Tokenizer13a()(r).split() for r in refs)
    assert corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    dates = [t for _, t in date_pairs(20, "test")]
    wrong = dates[:10] + [d[:-1] + ("1" if d[-1] != "1" else "2") for d in dates[10:]]
    assert corpus_bleu(wrong, dates) == pytest.approx(sacrebleu.corpus_bleu(wrong, [dates]).score, abs=1e-9)
    assert corpus_bleu(dates, dates) == pytest.approx(100.0) and exact_match(wrong, dates) == 50.0


def tiny(tmp_path, **overrides):
    fields = dict(out_dir=str(tmp_path / "run"), max_steps=6, warmup_steps=2, n_train=64, n_eval=4, d_model=16,
                  n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, batch_size=8, max_length=24,
                  eval_beams=2, threads=1, progress=False, log_every=2)
    fields.update(overrides)
    return Seq2SeqConfig(**fields)


def test_train_then_translate_from_a_tsv_file(tmp_path, capsys):
    pairs = [(f"{w} {n}", f"{n} {w}") for w in ("red", "blue", "green") for n in range(8)]
    (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    result = run_seq2seq(tiny(tmp_path, task="text", tsv=str(tmp_path / "pairs.tsv")))
    held = result.summary["held_out"]
    assert held["n"] == 2 and set(held) >= {"greedy", "beam2"}
    assert (tmp_path / "run" / "cross_attention.png").stat().st_size > 1000
    model, vocab = load_seq2seq(tmp_path / "run")
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
    capsys.readouterr()
    assert cli_main(["translate", str(tmp_path / "run"), "red 3", "blue 5", "--num-beams", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from minitx.recipes.seq2seq.recipe import translate_batch
    assert lines == translate_batch(model, vocab, ["red 3", "blue 5"], 2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        translate_main([str(tmp_path / "nothing"), "x"])
    assert err.value.code == 2 and "run:" in capsys.readouterr().err
    assert cli_main(["train-seq2seq", "--task", "text", "--out-dir", str(tmp_path / "r")]) == 2
    assert "task" in capsys.readouterr().err
    with pytest.raises(ValueError, match="label_smoothing"):
        Seq2SeqConfig(label_smoothing=1.0)
