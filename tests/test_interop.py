"""Hugging Face BERT <-> minitx: same weights, same logits (random-weight references built offline)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minitx.interop.bert import config_from_hf, from_hf_bert, hf_to_minitx_names, minitx_state_from_hf, to_hf_bert
from minitx.models.bert import BertConfig, BertForMaskedLM  # noqa: E402

CONFIGS = [  # (layers, hidden, heads, intermediate, vocab, max_pos, eps)
    (1, 16, 1, 32, 50, 16, 1e-12),
    (2, 32, 4, 64, 97, 24, 1e-12),
    (3, 24, 3, 40, 61, 20, 1e-5),
]


def hf_bert(layers, hidden, heads, inter, vocab, max_pos, eps, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=max_pos, layer_norm_eps=eps, hidden_act="gelu",
        attn_implementation="eager")
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # random, not the near-identity of a fresh init: LayerNorm and biases matter too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def padded_batch(vocab, max_pos, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = max_pos - 3
    ids = torch.randint(1, vocab, (3, n), generator=g)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, n - 5:] = 0  # padded tails of different lengths
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, n // 2:] = 1
    return ids, mask, types


@pytest.mark.parametrize("spec", CONFIGS, ids=[f"L{c[0]}-C{c[1]}-H{c[2]}" for c in CONFIGS])
def test_from_hf_bert_logits_match(spec):
    """Embeddings (bert.1), the post-LN stack (bert.2) and the tied MLM head (bert.3) agree with Hugging Face's."""
    hf = hf_bert(*spec)
    ours = from_hf_bert(hf).eval()
    ids, mask, types = padded_batch(spec[4], spec[5])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_from_hf_bert_with_each_backend(backend):
    hf = hf_bert(*CONFIGS[1])
    ours = from_hf_bert(hf, attention_backend=backend).eval()
    ids, mask, types = padded_batch(CONFIGS[1][4], CONFIGS[1][5], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, types).logits, hf(input_ids=ids, attention_mask=mask,
                                   token_type_ids=types).logits, atol=1e-5, rtol=1e-5)


def test_round_trip_to_hf_and_back():
    torch.manual_seed(0)
    ours = BertForMaskedLM(BertConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=48,
                                      max_position=16, dropout=0.0, attention_dropout=0.0)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = to_hf_bert(ours).eval()
    ids, mask, types = padded_batch(40, 16, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   ours(ids, mask, types).logits, atol=1e-5, rtol=1e-5)
    back = from_hf_bert(hf)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    # the HF copy keeps its decoder tied to the word embeddings
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()


def test_name_map_is_complete_and_one_to_one():
    hf = hf_bert(*CONFIGS[2])
    names = hf_to_minitx_names(CONFIGS[2][0])
    assert len(set(names.values())) == len(names)
    ours = set(BertForMaskedLM(from_hf_bert(hf).config).state_dict())
    assert set(names.values()) == ours


def test_unsupported_hf_configs_are_refused():
    hf = hf_bert(*CONFIGS[0])
    hf.config.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_bert(hf)
    pre_ln = BertForMaskedLM(BertConfig(vocab_size=20, d_model=16, n_heads=2, norm_first=True))
    with pytest.raises(ValueError, match="norm_first"):
        to_hf_bert(pre_ln)


def hf_with(**options):
    """A tiny random HF BertForMaskedLM built with extra config options."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, attn_implementation="eager",
                                     **options)
    return transformers.BertForMaskedLM(config).eval()


@pytest.mark.parametrize("option, value", [("tie_word_embeddings", False), ("is_decoder", True)])
def test_hf_models_minitx_would_compute_differently_are_refused_by_name(option, value):
    """Issue 10 row 15: an untied decoder was tied anyway (logits off by 0.55), causal attention was made
    bidirectional (off by 4e-3); both converted silently. Now each is refused naming the option."""
    hf = hf_with(**{option: value})
    with pytest.raises(ValueError, match=f"hf_config.{option}"):
        from_hf_bert(hf)


def test_the_refused_options_really_change_the_logits():
    """Why they are refused: the same weights give other logits under each option (so converting is wrong)."""
    ids = torch.randint(1, 30, (2, 7), generator=torch.Generator().manual_seed(0))
    base = hf_with()
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        causal = hf_with(is_decoder=True)
        causal.load_state_dict(base.state_dict())
        untied = hf_with(tie_word_embeddings=False)
        untied.load_state_dict(base.state_dict(), strict=False)
        untied.cls.predictions.decoder.weight.add_(torch.randn_like(untied.cls.predictions.decoder.weight))
        assert (causal(input_ids=ids).logits - expected).abs().max() > 1e-4
        assert (untied(input_ids=ids).logits - expected).abs().max() > 1e-2


def test_a_decoder_that_differs_from_the_embeddings_is_refused():
    """A state dict whose stored decoder is not the word-embedding matrix (a tied config, edited weights)."""
    hf = hf_with()
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"] + 1.0
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight differs"):
        minitx_state_from_hf(state, 1)


@pytest.mark.parametrize("option, value", [
    ("add_cross_attention", True), ("is_encoder_decoder", True), ("position_embedding_type", "relative_key"),
    ("hidden_act", "gelu_new"), ("model_type", "roberta"), ("pruned_heads", {"0": [1]}),
    ("tie_word_embeddings", False), ("is_decoder", True)])
def test_config_json_options_minitx_cannot_represent_are_refused(option, value):
    config = {"model_type": "bert", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 32}
    assert config_from_hf(config).d_model == 16
    with pytest.raises(ValueError, match=f"hf_config.{option}"):
        config_from_hf({**config, option: value})


def test_an_untied_decoder_is_no_obstacle_to_the_encoder_alone():
    """Fine-tuning uses the encoder only, so tie_word_embeddings=False is accepted there (mlm_head=False)."""
    hf = hf_with(tie_word_embeddings=False)
    config = config_from_hf(hf.config, mlm_head=False)
    ours, extra = minitx_state_from_hf(hf.state_dict(), config.n_layers, mlm_head=False)
    assert all(k.startswith("bert.") for k in ours) and not extra
    assert torch.equal(ours["bert.embeddings.token.weight"], hf.bert.embeddings.word_embeddings.weight)
