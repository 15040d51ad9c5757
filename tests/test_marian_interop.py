"""minitx.interop.marian against Hugging Face's MarianMTModel (random weights, offline): logits within 1e-4 on
a padded source batch both ways, greedy and beam-search outputs identical to `generate(num_beams=1|4,
do_sample=False)`, save_pretrained directories both ways, and every unrepresented option refused by name."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import minitx  # noqa: E402
from minitx.interop.marian import (from_hf_marian, load_hf_marian, save_hf_marian,  # noqa: E402
                                   to_hf_marian)
from minitx.models.transformer import Transformer, TransformerConfig  # noqa: E402

PAD, EOS = 12, 0


def hf_config(**overrides):
    fields = dict(vocab_size=13, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                  pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=None,
                  scale_embedding=True, activation_function="relu")
    fields.update(overrides)
    config = transformers.MarianConfig(**fields)
    config._attn_implementation = "eager"
    return config


def hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(hf_config(**overrides)).eval()
    with torch.no_grad():  # a long EOS row makes EOS a likely argmax, so hypotheses finish at different steps
        model.get_decoder().embed_tokens.weight[EOS] *= 3
    return model


def padded_source():
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(1, PAD, (3, 7), generator=gen)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return src.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("overrides", [{}, {"activation_function": "gelu", "scale_embedding": False},
                                       {"share_encoder_decoder_embeddings": False}])
def test_logits_match_marian_on_a_padded_batch_both_ways(overrides):
    """(tf.1)-(tf.5) against Marian's: halves sinusoids, scaled embedding, post-LN blocks, both masks, tied head."""
    hf = hf_model(**overrides)
    src, mask = padded_source()
    dec = torch.randint(0, PAD, (3, 5))
    dec[:, 0] = PAD
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        ours = from_hf_marian(hf)
        torch.testing.assert_close(ours(src, dec, mask).logits, ref, rtol=0, atol=1e-4)
        back = to_hf_marian(ours)
        back.config._attn_implementation = "eager"
        torch.testing.assert_close(back(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits, ref,
                                   rtol=0, atol=1e-4)


def test_greedy_and_beam_search_outputs_equal_hf_generate():
    """Greedy and beam search (beam.1)-(beam.6) token for token against transformers' generate, across seeds;
    the tiny vocabulary makes EOS common, so finished hypotheses, early stops and padding are exercised."""
    src, mask = padded_source()
    ended_early = 0
    for seed in range(5):
        hf = hf_model(seed)
        ours = from_hf_marian(hf)
        for num_beams in (1, 4):
            ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=num_beams, do_sample=False,
                              max_new_tokens=12)
            out = minitx.generate(ours, src, 12, temperature=0, attention_mask=mask, num_beams=num_beams)
            assert out.tolist() == ref.tolist(), (seed, num_beams)
            ended_early += ref.shape[1] < 13
    assert ended_early >= 2


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_length_penalty_and_early_stopping_as_hf(early_stopping):
    """(beam.3) the length penalty and (beam.5) the three stopping rules, as Hugging Face defines them."""
    src, mask = padded_source()
    for seed in range(2):
        hf = hf_model(seed)
        ours = from_hf_marian(hf)
        for length_penalty in (0.0, 2.0, -0.5):
            ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=3, do_sample=False, max_new_tokens=9,
                              length_penalty=length_penalty, early_stopping=early_stopping)
            out = minitx.generate(ours, src, 9, temperature=0, attention_mask=mask, num_beams=3,
                                  length_penalty=length_penalty, early_stopping=early_stopping)
            assert out.tolist() == ref.tolist(), (seed, length_penalty)


def test_directories_both_ways(tmp_path):
    hf = hf_model(3)
    src, mask = padded_source()
    dec = torch.full((3, 4), PAD)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_hf_marian(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, dec, mask).logits, ref, rtol=0, atol=1e-4)
    save_hf_marian(loaded, tmp_path / "ours")
    back = transformers.MarianMTModel.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits, ref,
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("option, value", [("activation_function", "swish"), ("encoder_layerdrop", 0.1),
                                           ("decoder_ffn_dim", 48), ("tie_word_embeddings", False)])
def test_unrepresented_hf_options_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=option):
        from_hf_marian(hf_model(**{option: value}))


def test_unrepresented_weights_and_minitx_options_are_refused_by_name():
    hf = hf_model()
    hf.final_logits_bias.fill_(0.5)
    with pytest.raises(ValueError, match="final_logits_bias"):
        from_hf_marian(hf)
    base = dict(vocab_size=13, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, pad_token_id=PAD,
                eos_token_id=EOS, decoder_start_token_id=PAD)
    with pytest.raises(ValueError, match="norm_first"):
        to_hf_marian(Transformer(TransformerConfig(**base, norm_first=True, position_layout="halves")))
    with pytest.raises(ValueError, match="position_layout"):
        to_hf_marian(Transformer(TransformerConfig(**base)))
