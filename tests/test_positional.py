"""minitx.positional: sinusoidal, learned, RoPE and ALiBi (docs/math/positional.md)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.positional.absolute import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from minitx.positional.alibi import alibi_bias, alibi_slopes
from minitx.positional.rope import RotaryEmbedding

F64 = torch.float64


@pytest.mark.parametrize("d_model", [6, 7, 16])
def test_sinusoidal_values_match_the_formula(d_model):
    """(pos.1): PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""
    enc = SinusoidalPositionalEncoding(d_model, max_len=64)
    x = torch.zeros(2, 50, d_model)
    pe = enc(x)
    for p in (0, 1, 7, 49):
        for c in range(d_model):
            i2 = c - c % 2  # 2i for both members of the pair
            angle = p / 10000 ** (i2 / d_model)
            expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
            assert pe[1, p, c].item() == pytest.approx(expected, abs=1e-6), (p, c)
    y = torch.randn(2, 50, d_model)
    torch.testing.assert_close(enc(y) - y, pe)  # it is added, not substituted


def test_learned_embedding_adds_its_first_rows_and_trains_only_those():
    """(pos.2): x + E[:N]."""
    emb = LearnedPositionalEmbedding(10, 4)
    x = torch.randn(3, 6, 4)
    out = emb(x)
    torch.testing.assert_close(out, x + emb.weight[:6].detach())
    out.sum().backward()
    assert torch.equal(emb.weight.grad[:6], torch.full((6, 4), 3.0))  # one per batch row
    assert torch.equal(emb.weight.grad[6:], torch.zeros(4, 4))


def _complex_rope(x, positions, base=10000.0):
    """An independent RoPE: pair i with i + D/2 as the complex number x_i + i x_{i+D/2}, multiply by e^{i p theta}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    theta = base ** (-2.0 * torch.arange(half, dtype=F64) / x.shape[-1])
    z = z * torch.polar(torch.ones(len(positions), half, dtype=F64), positions.double()[:, None] * theta)
    return torch.cat((z.real, z.imag), dim=-1)


@settings(max_examples=20)
@given(p=st.integers(0, 500), p2=st.integers(0, 500), shift=st.integers(-200, 500), half=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_rope_scores_depend_only_on_the_offset(p, p2, shift, half, seed):
    """(pos.6): <R(p) q, R(p') k> = <R(p + s) q, R(p' + s) k> for every shift s."""
    shift = max(shift, -min(p, p2))
    rope = RotaryEmbedding(2 * half)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, 2 * half, generator=g, dtype=F64), torch.randn(1, 1, 1, 2 * half, generator=g, dtype=F64)

    def score(a, b):
        return (rope.rotate(q, torch.tensor([a])) * rope.rotate(k, torch.tensor([b]))).sum().item()

    assert score(p, p2) == pytest.approx(score(p + shift, p2 + shift), rel=1e-9, abs=1e-9)


def test_rope_preserves_norms_and_matches_a_complex_number_implementation():
    """(pos.4)-(pos.5) against the complex view (pos.3): a rotation per pair, i.e. multiplication by e^{i p theta_i}."""
    rope = RotaryEmbedding(8, base=500.0)
    q, k = torch.randn(2, 3, 7, 8, dtype=F64), torch.randn(2, 3, 7, 8, dtype=F64)
    q_rot, k_rot = rope(q, k)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(q_rot, _complex_rope(q, torch.arange(7), base=500.0))
    torch.testing.assert_close(k_rot, _complex_rope(k, torch.arange(7), base=500.0))
    assert not torch.allclose(q_rot[:, :, 1:], q[:, :, 1:])  # positions > 0 really are rotated


def test_rope_matches_hugging_face_llama_rotary():
    """Same split-halves convention as HF Llama's rotate_half, so weights from it would carry over."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=32, num_attention_heads=4, head_dim=8, rope_theta=10000.0)
    q, k = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    positions = torch.arange(3, 12).expand(2, 9)
    cos, sin = llama.LlamaRotaryEmbedding(config)(q, positions)
    expected_q, expected_k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    q_rot, k_rot = RotaryEmbedding(8)(q, k, positions=positions)
    torch.testing.assert_close(q_rot, expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_rot, expected_k, rtol=1e-5, atol=1e-5)


def test_rope_positions_offset_a_chunk():
    rope = RotaryEmbedding(4)
    x = torch.randn(1, 2, 10, 4, dtype=F64)
    full, _ = rope(x, x)
    chunk, _ = rope(x[:, :, 6:], x[:, :, 6:], positions=torch.arange(6, 10))
    torch.testing.assert_close(chunk, full[:, :, 6:])
    per_batch, _ = rope(x[:, :, :3], x[:, :, :3], positions=torch.tensor([[6, 7, 8]]))
    torch.testing.assert_close(per_batch, _complex_rope(x[:, :, :3], torch.arange(6, 9)))


def test_alibi_slopes_for_8_heads_are_the_papers():
    """(pos.7): 2^-1, 2^-2, ..., 2^-8 for 8 heads."""
    assert alibi_slopes(8).tolist() == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]


def test_alibi_slopes_for_12_heads_follow_the_official_rule():
    """(pos.7), by hand: 8 is the closest power of two below 12, giving 2^-1..2^-8; the 16-head sequence is
    2^-0.5, 2^-1, 2^-1.5, ...; every other one of it, from the first, is 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5, ...;
    the first 12 - 8 = 4 of those are appended."""
    r = math.sqrt(0.5)
    expected = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
                r, r / 2, r / 4, r / 8]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


def test_alibi_bias_is_minus_slope_times_distance():
    """(pos.8): bias[h, i, j] = -m_h |j - i|; under a causal mask that is the paper's m_h (j - i)."""
    bias = alibi_bias(4, 3, 5)
    slopes = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h] * abs(j - i))


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="x"):
        SinusoidalPositionalEncoding(8, max_len=4)(torch.zeros(1, 5, 8))
    with pytest.raises(ValueError, match="x"):
        LearnedPositionalEmbedding(4, 8)(torch.zeros(1, 3, 6))
    rope = RotaryEmbedding(4)
    with pytest.raises(ValueError, match="positions"):
        rope(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4), positions=torch.arange(4))
    with pytest.raises(ValueError, match="q"):
        rope(torch.zeros(1, 3, 4), torch.zeros(1, 1, 3, 4))


def test_alibi_bias_from_slopes_is_alibi_bias_with_a_movable_diagonal():
    """(pos.8): offset 0 reproduces alibi_bias; offset M - N puts distance 0 on the bottom-right diagonal."""
    from minitx.positional.alibi import alibi_bias, alibi_bias_from_slopes, alibi_slopes

    slopes = alibi_slopes(3)
    assert torch.equal(alibi_bias_from_slopes(slopes, 4, 6), alibi_bias(3, 4, 6))
    moved = alibi_bias_from_slopes(slopes, 4, 6, offset=2)
    assert torch.all(moved[:, torch.arange(4), torch.arange(4) + 2] == 0)
    assert torch.allclose(moved[:, 0, 0], -2 * slopes)
