"""Hugging Face checkpoint directories in and out (minitx.interop.hf_dirs, minitx export, finetune --from DIR).

References are tiny random-weight models saved offline by transformers' own `save_pretrained`."""

import json
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minitx.cli import main  # noqa: E402
from minitx.data.synthetic import SyntheticLanguage  # noqa: E402
from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.inference import load_finetuned
from minitx.recipes.finetune.recipe import run_finetuning  # noqa: E402
from minitx.interop.hf_dirs import (is_hf_checkpoint_dir, load_hf_encoder, load_hf_pretrained, read_hf_state,
                                    read_hf_tokenizer, save_hf_pretrained)
from minitx.models.bert import BertConfig, BertForMaskedLM  # noqa: E402
from minitx.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = ["these dogs near the old river are happy .", "Each SONG is not wonderful , as the kings said !",
         "the poet's dog ( truly kind ) sings"]


def vocab_words():
    words = SyntheticLanguage(0).vocabulary()
    return words + ["##s", "##ing", "'", "!", "Each", "SONG", "sing"]


def hf_mlm(vocab_size, seed=0, **options):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                     attn_implementation="eager", **options)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # away from the near-identity init: LayerNorms and biases matter too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def write_vocab(path, vocab, lowercase=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))


@pytest.fixture
def hf_dir(tmp_path):
    """A save_pretrained BertForMaskedLM directory with a vocab.txt whose first five entries are the specials."""
    vocab = SPECIALS + vocab_words()
    model = hf_mlm(len(vocab))
    model.save_pretrained(tmp_path / "hf")
    write_vocab(tmp_path / "hf", vocab)
    return tmp_path / "hf", model


def batch(tokenizer, texts=TEXTS):
    return tokenizer.encode_batch(texts)


def test_a_save_pretrained_directory_loads_with_equal_logits(hf_dir):
    path, hf = hf_dir
    assert is_hf_checkpoint_dir(path)
    model, tokenizer = load_hf_pretrained(path)
    b = batch(tokenizer)
    assert b["attention_mask"].min() == 0  # padding is exercised
    with torch.no_grad():
        expected = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                      token_type_ids=b["token_type_ids"]).logits
        got = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pytorch_model_bin_is_read_weights_only(hf_dir):
    path, hf = hf_dir
    (path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), path / "pytorch_model.bin")  # older save_pretrained: tied decoder stored too
    model, tokenizer = load_hf_pretrained(path)
    b = batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(b["input_ids"], b["attention_mask"]).logits,
                                   hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                   atol=1e-5, rtol=1e-5)


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_runs_code_is_refused(hf_dir, capsys):
    path, _ = hf_dir
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="weights-only"):
        read_hf_state(path)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("lowercase", [True, False])
def test_token_ids_equal_bert_tokenizer_both_ways(tmp_path, lowercase):
    """vocab.txt + do_lower_case in: the same ids as HF's BertTokenizer; and what minitx writes HF reads back."""
    vocab = SPECIALS + vocab_words()
    write_vocab(tmp_path / "in", vocab, lowercase)
    ours = read_hf_tokenizer(tmp_path / "in")
    assert ours.lowercase is lowercase
    hf = transformers.BertTokenizer.from_pretrained(tmp_path / "in")
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == hf(text)["input_ids"], text
        assert ids.count(ours.unk_id) <= 1  # the words are in the vocabulary: casing decides the ids
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), d_model=16, n_heads=2, d_ff=32, max_position=32))
    save_hf_pretrained(model, ours, tmp_path / "out")
    back = transformers.BertTokenizer.from_pretrained(tmp_path / "out")
    assert back.do_lower_case is lowercase
    for text in TEXTS:
        assert back(text)["input_ids"] == ours.encode(text).ids, text


@pytest.mark.parametrize("lowercase", [True, False])
def test_a_tokenizer_saved_by_transformers_is_read(tmp_path, lowercase):
    """transformers 5's save_pretrained writes tokenizer.json (no vocab.txt): read it, same ids."""
    write_vocab(tmp_path / "in", SPECIALS + vocab_words(), lowercase)
    hf = transformers.BertTokenizer.from_pretrained(tmp_path / "in")
    hf.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "vocab.txt").unlink(missing_ok=True)  # the tokenizer.json path, whatever the version
    ours = read_hf_tokenizer(tmp_path / "saved")
    assert ours.lowercase is lowercase
    for text in TEXTS:
        assert ours.encode(text).ids == hf(text)["input_ids"], text
    state = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    state["normalizer"]["strip_accents"] = not lowercase
    (tmp_path / "saved" / "tokenizer.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="strip_accents"):
        read_hf_tokenizer(tmp_path / "saved")


def test_hf_vocab_order_specials_found_by_name(tmp_path):
    """BERT's own vocab.txt has [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103."""
    if not hasattr(WordPieceTokenizer, "from_vocab_file"):
        pytest.skip("WordPieceTokenizer.from_vocab_file (special ids by name) is not there yet")
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocab_words()
    write_vocab(tmp_path, vocab)
    ours = read_hf_tokenizer(tmp_path)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 100, 101, 102, 103)
    hf = transformers.BertTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert ours.encode(text).ids == hf(text)["input_ids"], text


def test_export_loads_in_transformers_with_equal_logits_and_ids(tmp_path):
    torch.manual_seed(0)
    tokenizer = WordPieceTokenizer(SPECIALS + vocab_words())
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, d_ff=32,
                                       max_position=32, dropout=0.0, attention_dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf_pretrained(model, tokenizer, tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    hf_tok = transformers.BertTokenizer.from_pretrained(tmp_path)
    b = batch(tokenizer)
    assert hf_tok(TEXTS, padding=True, return_tensors="pt")["input_ids"].tolist() == b["input_ids"].tolist()
    with torch.no_grad():
        expected = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        got = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 token_type_ids=b["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()


def test_configs_minitx_cannot_represent_are_refused_by_name(hf_dir):
    path, _ = hf_dir
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "is_decoder": True}))
    with pytest.raises(ValueError, match="hf_config.is_decoder"):
        load_hf_pretrained(path)
    with pytest.raises(ValueError, match="hf_config.is_decoder"):
        run_finetuning(FinetuneConfig(from_checkpoint=str(path), out_dir="", max_steps=1, warmup_steps=0))
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match="hf_config.tie_word_embeddings"):
        load_hf_pretrained(path)
    assert load_hf_encoder(path)[0].d_model == 16  # the encoder alone is fine: fine-tuning drops the MLM head


def finetune_args(src, out, *extra):
    return ["finetune", "--from", str(src), "--out-dir", str(out), "--max-steps", "3", "--eval-every", "3",
            "--warmup-steps", "1", "--n-train-labels", "32", "--n-validation", "16", "--n-test", "16",
            "--batch-size", "8", "--no-progress", "--threads", "1", *extra]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_round_trip_hf_in_finetune_export_reload_in_transformers(hf_dir, tmp_path, method):
    """HF directory -> `minitx finetune --from DIR` -> `minitx export` -> transformers: equal logits."""
    path, hf = hf_dir
    assert main(finetune_args(path, tmp_path / "run", "--method", method, "--use-pooler")) == 0
    ours, tokenizer, info = load_finetuned(tmp_path / "run")
    # the encoder started from the HF weights: frozen ones (LoRA's base embeddings) are still exactly them
    if method == "lora":
        assert torch.equal(ours.bert.embeddings.token.weight, hf.bert.embeddings.word_embeddings.weight)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "out",
                                                                       attn_implementation="eager").eval()
    assert back.config.id2label == {0: "negative", 1: "positive"}
    b = batch(tokenizer)
    with torch.no_grad():
        expected = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        got = back(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   token_type_ids=b["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(ours.bert.blocks[0].attention.q_proj.weight,
                           hf.bert.encoder.layer[0].attention.self.query.weight)  # it did train (LoRA merged)


def test_a_classifier_without_the_pooler_exports_through_an_identity_pooler(hf_dir, tmp_path):
    """(bert.6): a raw-[CLS] classifier (use_pooler=False, the finetune default and the demo's) exports as HF's
    pooled BertForSequenceClassification with W_p = eps I and W_c / eps: the same logits (issue 19)."""
    path, _ = hf_dir
    assert main(finetune_args(path, tmp_path / "run", "--method", "lora")) == 0
    ours, tokenizer, info = load_finetuned(tmp_path / "run")
    assert not info["use_pooler"] and ours.pooler is None
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "out",
                                                                       attn_implementation="eager").eval()
    b = batch(tokenizer)
    with torch.no_grad():
        expected = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        got = back(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   token_type_ids=b["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert ours.pooler is None  # exporting left the run's model as it was


def test_export_of_a_pretraining_run(tmp_path):
    from minitx.recipes.pretrain.config import PretrainConfig
    from minitx.recipes.pretrain.recipe import run_pretraining
    run = run_pretraining(PretrainConfig(out_dir=str(tmp_path / "run"), max_steps=2, warmup_steps=1,
                                         train_sentences=200, eval_sentences=20, d_model=16, n_heads=2, d_ff=32,
                                         vocab_size=120, eval_every=0, batch_size=8, progress=False))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    b = batch(run.tokenizer, ["these dogs near the old river are happy ."])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=b["input_ids"]).logits, run.model.eval()(b["input_ids"]).logits,
                                   atol=1e-5, rtol=1e-5)


def test_a_bare_bert_model_dir_gives_its_encoder_and_pooler(tmp_path):
    """A save_pretrained BertModel (keys without "bert.", with a pooler): the classifier's encoder computes the
    same hidden states, and with use_pooler it starts from the checkpoint's pooler."""
    from minitx.recipes.finetune.recipe import starting_point
    vocab = SPECIALS + vocab_words()
    hf = hf_mlm(len(vocab))
    torch.manual_seed(3)
    bare = transformers.BertModel(hf.config).eval()
    bare.save_pretrained(tmp_path)
    write_vocab(tmp_path, vocab)
    model, tokenizer = starting_point(FinetuneConfig(from_checkpoint=str(tmp_path), use_pooler=True, out_dir=""))
    assert torch.equal(model.pooler.dense.weight, bare.pooler.dense.weight)
    b = batch(tokenizer)
    with torch.no_grad():
        expected = bare(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        got = model.eval().bert(b["input_ids"], b["attention_mask"])
    real = b["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
