"""minitx.Transformer, the encoder-decoder (docs/math/encoder_decoder.md, (tf.1)-(tf.8)): its embedding, masks,
tied output, teacher forcing and loss, the decoder cache (self-attention growing, cross-attention projected
once), generation through minitx.generate, the Noam schedule, and errors that name the argument."""

import math

import pytest
import torch

import minitx
from minitx.models.transformer import Transformer, TransformerConfig, shift_tokens_right
from minitx.positional.absolute import sinusoidal_table
from minitx.training.config import TrainConfig
from minitx.training.optim import lr_at


def tiny(**overrides):
    fields = dict(vocab_size=17, d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=24,
                  dropout=0.0, max_position=32)
    fields.update(overrides)
    torch.manual_seed(0)
    return Transformer(TransformerConfig(**fields)).eval()


def batch(seed=0, b=3, s=6, t=5, vocab=17):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    src[mask == 0] = 0
    tgt = torch.randint(3, vocab, (b, t), generator=gen)
    return src, mask, tgt


def test_embedding_is_scaled_token_plus_sinusoid_in_either_layout():
    """(tf.1): sqrt(C) E[x] + PE[i]; "halves" holds the same sinusoids as (pos.1), sines first."""
    for layout in ("interleaved", "halves"):
        model = tiny(position_layout=layout)
        ids = torch.tensor([[3, 5, 7]])
        pe = sinusoidal_table(32, 16)[:3]
        if layout == "halves":
            pe = torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)
        expected = model.token.weight[ids] * math.sqrt(16) + pe
        torch.testing.assert_close(model.embed(ids, model.token), expected)
    assert not torch.equal(tiny(position_layout="halves").positions, tiny().positions)


def test_source_padding_is_invisible_and_the_decoder_is_causal():
    """(tf.2), (tf.4): padded source tokens change nothing; (tf.3): a later target token never changes an
    earlier position's logits."""
    model = tiny()
    src, mask, tgt = batch()
    with torch.no_grad():
        ref = model(src, tgt, mask).logits
        other = src.clone()
        other[mask == 0] = 9
        torch.testing.assert_close(model(other, tgt, mask).logits, ref)
        changed = tgt.clone()
        changed[:, 3] = 4
        out = model(src, changed, mask).logits
    torch.testing.assert_close(out[:, :3], ref[:, :3])
    assert not torch.allclose(out[:, 3:], ref[:, 3:])


def test_encoder_output_depends_on_every_real_source_token():
    """(tf.2): bidirectional, the first position sees the last real token."""
    model = tiny()
    src, mask, _ = batch()
    with torch.no_grad():
        a = model.encode(src, mask)
        src2 = src.clone()
        src2[0, 5] = 4
        b = model.encode(src2, mask)
    assert not torch.allclose(a[0, 0], b[0, 0])
    torch.testing.assert_close(a[1:], b[1:])


def test_output_projection_is_the_target_embedding():
    """(tf.5): logits = h E_tgt^T, shared or separate embeddings."""
    for share in (True, False):
        model = tiny(share_embeddings=share, tgt_vocab_size=0 if share else 11)
        src, mask, tgt = batch(vocab=11)
        with torch.no_grad():
            hidden = model.decode(tgt, model.encode(src, mask), mask)
            logits = model(src, tgt, mask).logits
        torch.testing.assert_close(logits, hidden @ model.target_embedding.weight.T)
        assert logits.shape[-1] == (17 if share else 11)
        assert (model.tgt_token is None) == share


def test_teacher_forcing_shift_and_label_smoothed_loss():
    """(tf.6): the decoder reads [start] + labels[:-1]; -100 reads as padding. The loss is (ls.1), as torch's."""
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    dec = shift_tokens_right(labels, 1, 0)
    assert dec.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    model = tiny()
    src, mask, _ = batch()
    out = model(src[:2], dec, mask[:2], labels=labels, label_smoothing=0.1)
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 17), labels.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert model.token.weight.grad.abs().sum() > 0


def test_cached_decoding_equals_one_pass_and_projects_the_source_once():
    """(tf.7): step-by-step decoding over the cache gives the full pass's logits, and each decoder layer's
    cross-attention projects the encoder's output once, not once per step."""
    model = tiny()
    src, mask, tgt = batch()
    calls = []
    handles = [block.cross_attention.k_proj.register_forward_hook(lambda *a: calls.append(1))
               for block in model.decoder]
    with torch.no_grad():
        full = model(src, tgt, mask).logits
        calls.clear()
        cache, memory = model.new_cache(), model.encode(src, mask)
        steps = [model(src, tgt[:, i:i + 1], mask, encoder_output=memory, cache=cache).logits for i in range(5)]
    for h in handles:
        h.remove()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert len(calls) == len(model.decoder)  # once per layer over 5 steps
    assert cache.length == 5 and cache.cross_attention[0].length == src.shape[1]


def test_generate_greedy_with_and_without_cache_and_seeded_sampling():
    model = tiny()
    src, mask, _ = batch()
    a = minitx.generate(model, src, 8, temperature=0, attention_mask=mask)
    b = minitx.generate(model, src, 8, temperature=0, attention_mask=mask, use_cache=False)
    assert torch.equal(a, b) and a[:, 0].eq(1).all() and a.shape[1] <= 9
    with torch.no_grad():  # greedy: every token is the argmax of the model given the tokens before it
        logits = model(src, a[:, :-1], mask).logits
    running = torch.ones(3, dtype=torch.bool)
    for i in range(a.shape[1] - 1):
        expected = torch.where(running, logits[:, i].argmax(-1), 0)
        assert torch.equal(a[:, i + 1], expected)
        running &= a[:, i + 1] != 2
    s1 = minitx.generate(model, src, 8, temperature=1.0, attention_mask=mask, seed=3)
    s2 = minitx.generate(model, src, 8, temperature=1.0, attention_mask=mask, seed=3)
    assert torch.equal(s1, s2)


def test_pre_ln_option_adds_final_norms_and_fully_padded_source_stays_finite():
    model = tiny(norm_first=True)
    assert model.encoder_norm is not None and model.decoder_norm is not None
    src, mask, tgt = batch()
    mask[0] = 0
    out = model(src, tgt, mask).logits
    assert torch.isfinite(out).all()


def test_noam_schedule_warms_up_then_decays_as_inverse_square_root():
    """(tf.8): lr min(t / W, sqrt(W / t)), peak lr at t = W."""
    config = TrainConfig(lr=2e-3, warmup_steps=100, max_steps=1000, schedule="noam", out_dir="")
    assert lr_at(50, config) == pytest.approx(1e-3)
    assert lr_at(100, config) == pytest.approx(2e-3)
    assert lr_at(400, config) == pytest.approx(1e-3)
    d_model, warmup = 512, 4000  # the paper's: d^-0.5 min(t^-0.5, t W^-1.5), peak d^-0.5 W^-0.5
    paper = TrainConfig(lr=d_model ** -0.5 * warmup ** -0.5, warmup_steps=warmup, max_steps=10**5,
                        schedule="noam", out_dir="")
    for t in (1, 1000, 4000, 20000):
        assert lr_at(t, paper) == pytest.approx(d_model ** -0.5 * min(t ** -0.5, t * warmup ** -1.5))


def test_bad_config_and_inputs_are_named():
    with pytest.raises(ValueError, match="tgt_vocab_size"):
        TransformerConfig(vocab_size=10, tgt_vocab_size=12)
    with pytest.raises(ValueError, match="position_layout"):
        TransformerConfig(position_layout="spiral")
    with pytest.raises(ValueError, match="eos_token_id"):
        TransformerConfig(vocab_size=10, eos_token_id=10)
    model = tiny()
    src, mask, tgt = batch()
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(src, tgt + 100, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        model(src, tgt, mask[:, :3])
    with pytest.raises(ValueError, match="max_new_tokens"):
        minitx.generate(model, src, 40, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        minitx.generate(model, src, 4, num_beams=2)


def test_generation_runs_the_encoder_once_for_greedy_and_beam_search():
    """(tf.7): one encoder pass per generate call; the decoder's cross-attention projects the source once too."""
    model = tiny()
    src, mask, _ = batch()
    encoder_calls, cross_calls = [], []
    model.encoder[0].register_forward_hook(lambda *a: encoder_calls.append(1))
    model.decoder[0].cross_attention.k_proj.register_forward_hook(lambda *a: cross_calls.append(1))
    for beams in (1, 3):
        encoder_calls.clear(), cross_calls.clear()
        out = minitx.generate(model, src, 6, temperature=0, attention_mask=mask, num_beams=beams)
        assert len(encoder_calls) == 1 and len(cross_calls) == 1 and out.shape[1] > 2
