"""minitx.attention: the front door, its backends, and MultiHeadAttention (docs/math/multi_head_attention.md)."""

import importlib

import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx import functional as F
from minitx.attention import backends as A
from minitx.attention.backends import available_backends, get_backend, register_backend
from minitx.attention.front_door import attention
from minitx.attention.multi_head import MultiHeadAttention

F64 = torch.float64


def _qkv(b, h, n, m, d, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    shapes = ((b, h, n, d), (b, h, m, d), (b, h, m, d))
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _out_and_grads(backend, q, k, v, **kw):
    out = attention(q, k, v, backend=backend, **kw)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)  # a non-uniform upstream grad
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    return (out,) + grads


@settings(max_examples=20)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 6), m=st.integers(1, 6), d=st.integers(1, 5),
       mask_kind=st.sampled_from(["none", "bool", "float", "padding", "bool+padding", "float+padding"]),
       is_causal=st.booleans(), seed=st.integers(0, 1000))
def test_math_and_sdpa_backends_agree_on_values_and_gradients(b, h, n, m, d, mask_kind, is_causal, seed):
    """(mha.2) by minitx.functional and by PyTorch SDPA, including cross-attention (N != M) and empty rows."""
    q, k, v = _qkv(b, h, n, m, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    kw = {"is_causal": is_causal}
    if "bool" in mask_kind:
        kw["attn_mask"] = torch.rand(b, 1, n, m, generator=g) > 0.4  # may leave rows with no allowed key
    if "float" in mask_kind:
        kw["attn_mask"] = torch.randn(1, h, n, m, generator=g, dtype=F64)
    if "padding" in mask_kind:
        kw["key_padding_mask"] = torch.rand(b, m, generator=g) > 0.3
    math_res = _out_and_grads("math", q, k, v, **kw)
    sdpa_res = _out_and_grads("sdpa", q, k, v, **kw)
    for name, a, s in zip(("out", "dq", "dk", "dv"), math_res, sdpa_res):
        assert torch.isfinite(s).all(), f"sdpa {name} is not finite"
        torch.testing.assert_close(a, s, rtol=1e-9, atol=1e-9, msg=f"{name} differs")


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(backend):
    q, k, v = _qkv(2, 2, 4, 5, 3)
    mask = torch.ones(2, 2, 4, 5, dtype=torch.bool)
    mask[0, 1, 2] = False  # query 2 of head 1 in batch 0 may see nothing
    out, dq, dk, dv = _out_and_grads(backend, q, k, v, attn_mask=mask)
    assert torch.equal(out[0, 1, 2], torch.zeros(3, dtype=F64))
    assert torch.equal(dq[0, 1, 2], torch.zeros(3, dtype=F64))
    assert out[0, 1, 1].abs().sum() > 0 and dq[0, 1, 1].abs().sum() > 0  # the others are untouched
    # all keys padded in batch 1: no gradient reaches its keys or values at all
    _, _, dk, dv = _out_and_grads(backend, q, k, v, key_padding_mask=torch.tensor([[True] * 5, [False] * 5]))
    assert torch.equal(dk[1], torch.zeros_like(dk[1])) and torch.equal(dv[1], torch.zeros_like(dv[1]))


def _recording_sdpa(monkeypatch):
    """Replace PyTorch's SDPA inside the sdpa backend by a wrapper that records the masks it is given."""
    seen, real = [], A.torch_F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(A.torch_F, "scaled_dot_product_attention", record)
    return seen


def test_sdpa_fixes_up_rows_only_when_a_row_has_no_key(monkeypatch):
    """(mha.2)'s rule that a row with no allowed key gives 0: on a CPU the sdpa backend's fix-up (a safe mask,
    then a multiply by the row indicator) runs only when some query row has no allowed key; otherwise SDPA gets
    the mask as it is, and both agree with math."""
    seen = _recording_sdpa(monkeypatch)
    q, k, v = _qkv(2, 2, 4, 5, 3)
    padding = torch.tensor([[True, True, False, True, False], [True] * 5])  # every row keeps a key
    for p, s in zip(_out_and_grads("math", q, k, v, key_padding_mask=padding),
                    _out_and_grads("sdpa", q, k, v, key_padding_mask=padding)):
        torch.testing.assert_close(p, s, rtol=1e-9, atol=1e-9)
    assert torch.equal(seen[-1], padding[:, None, None, :])
    with torch.profiler.profile() as prof:
        attention(q, k, v, backend="sdpa", key_padding_mask=padding)
    ops = {e.name for e in prof.events()}
    assert not ops & {"aten::mul", "aten::bitwise_or", "aten::bitwise_not"}, ops  # no safe mask, no multiply
    _out_and_grads("sdpa", q, k, v, key_padding_mask=torch.tensor([[False] * 5, [True] * 5]))
    assert seen[-1][0].all() and not torch.equal(seen[-1][0], torch.zeros_like(seen[-1][0]))  # made safe


def test_sdpa_with_dropout_on_a_cpu_runs_the_math_backend(monkeypatch):
    """With dropout on a CPU PyTorch's SDPA is an unfused composite of (mha.2); the sdpa backend runs math
    instead: the same dropout draws from the same seed give the same output, and PyTorch's SDPA is not called."""
    seen = _recording_sdpa(monkeypatch)
    q, k, v = _qkv(2, 2, 4, 5, 3)
    outs = []
    for backend in ("math", "sdpa"):
        torch.manual_seed(7)
        outs.append(attention(q, k, v, backend=backend, dropout_p=0.5))
    assert seen == []
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.manual_seed(8)
    assert not torch.equal(attention(q, k, v, backend="sdpa", dropout_p=0.5), outs[1])  # dropout did draw
    attention(q, k, v, backend="sdpa", dropout_p=0.0)
    assert len(seen) == 1  # without dropout PyTorch's SDPA runs


def _copy_from_torch(mha: MultiHeadAttention, ref: torch.nn.MultiheadAttention) -> None:
    w_q, w_k, w_v = ref.in_proj_weight.detach().chunk(3)
    b_q, b_k, b_v = ref.in_proj_bias.detach().chunk(3)
    with torch.no_grad():
        for lin, w, b in ((mha.q_proj, w_q, b_q), (mha.k_proj, w_k, b_k), (mha.v_proj, w_v, b_v),
                          (mha.out_proj, ref.out_proj.weight, ref.out_proj.bias)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_mha_equals_torch_multihead_attention_self_attention_with_padding(backend):
    """(mha.1)-(mha.3) against torch.nn.MultiheadAttention given the same weights (torch masks: True = blocked)."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(12, 3, batch_first=True).double().eval()
    mha = MultiHeadAttention(12, 3, backend=backend).double().eval()
    _copy_from_torch(mha, ref)
    x = torch.randn(2, 6, 12, dtype=F64)
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    expected, expected_w = ref(x, x, x, key_padding_mask=real == 0, average_attn_weights=False)
    torch.testing.assert_close(mha(x, key_padding_mask=real.bool()), expected)
    out, weights = mha(x, key_padding_mask=real.bool(), return_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_w)


def test_mha_equals_torch_multihead_attention_cross_attention_with_allowed_mask():
    torch.manual_seed(1)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    mha = MultiHeadAttention(8, 2).double().eval()
    _copy_from_torch(mha, ref)
    x, ctx = torch.randn(2, 3, 8, dtype=F64), torch.randn(2, 7, 8, dtype=F64)
    allowed = torch.rand(2, 2, 3, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    allowed[..., 0] = True  # torch gives NaN for rows with no key; keep every row non-empty for the comparison
    expected, _ = ref(x, ctx, ctx, attn_mask=~allowed.reshape(4, 3, 7))  # (B, H, N, M) -> (B*H, N, M)
    torch.testing.assert_close(mha(x, context=ctx, attn_mask=allowed), expected)


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), backend=st.sampled_from(["math", "sdpa"]))
def test_self_attention_without_positions_is_permutation_equivariant(seed, backend):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2, backend=backend).double()
    x = torch.randn(2, 5, 8, dtype=F64)
    perm = torch.randperm(5)
    torch.testing.assert_close(mha(x[:, perm]), mha(x)[:, perm])


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_causal_output_does_not_see_the_future(backend):
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, backend=backend).double()
    x = torch.randn(1, 6, 8, dtype=F64)
    for i in range(6):
        changed = x.clone()
        changed[:, i + 1:] = torch.randn(1, 5 - i, 8, dtype=F64) * 3
        a, b = mha(x, is_causal=True), mha(changed, is_causal=True)
        torch.testing.assert_close(a[:, : i + 1], b[:, : i + 1])
        if i < 5:  # and without the causal mask the change is visible, so the test can fail
            assert not torch.allclose(mha(x)[:, : i + 1], mha(changed)[:, : i + 1])


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_padding_contents_do_not_change_real_tokens(backend):
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 4, backend=backend).double()
    x = torch.randn(2, 5, 8, dtype=F64)
    real = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    garbage = x.clone()
    garbage[0, 3:] = torch.randn(2, 8, dtype=F64) * 10
    a, b = mha(x, key_padding_mask=real.bool()), mha(garbage, key_padding_mask=real.bool())
    torch.testing.assert_close(a[0, :3], b[0, :3])
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(mha(x)[0, :3], mha(garbage)[0, :3])  # unmasked, the padding would leak


def test_return_weights_rows_sum_to_one_or_zero_and_match_the_output():
    """Weights are softmax rows (mha.2): sum 1, or 0 where nothing is allowed; any backend returns them."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, backend="sdpa").double().eval()
    x = torch.randn(2, 4, 8, dtype=F64)
    allowed = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    allowed[1, 0, 3] = False
    out, w = mha(x, attn_mask=allowed, return_weights=True)
    expected_sums = torch.ones(2, 2, 4, dtype=F64)
    expected_sums[1, 0, 3] = 0.0
    torch.testing.assert_close(w.sum(-1), expected_sums)
    assert (w >= 0).all()
    torch.testing.assert_close(out, mha(x, attn_mask=allowed))  # same answer as the sdpa path


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.5).double()
    plain = MultiHeadAttention(8, 2).double()
    plain.load_state_dict(mha.state_dict())
    x = torch.randn(2, 5, 8, dtype=F64)
    mha.eval()
    torch.testing.assert_close(mha(x), plain(x))
    mha.train()
    assert not torch.allclose(mha(x), plain(x))


def test_backend_can_be_switched_after_construction():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=F64)
    before = mha(x, is_causal=True)
    mha.backend = "sdpa"
    torch.testing.assert_close(mha(x, is_causal=True), before)
    with pytest.raises(ValueError, match="backend"):
        mha.backend = "nope"


def test_registered_backend_is_dispatched_to_with_the_masks():
    seen = {}

    def spy(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0, scale=None):
        seen.update(key_padding_mask=key_padding_mask, is_causal=is_causal)
        return get_backend("math")(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                   is_causal=is_causal, dropout_p=dropout_p, scale=scale)

    register_backend("spy", spy)
    try:
        assert "spy" in available_backends()
        mha = MultiHeadAttention(8, 2, backend="spy")
        mha(torch.randn(1, 3, 8), key_padding_mask=torch.tensor([[True, True, False]]), is_causal=True)
        assert seen["key_padding_mask"].tolist() == [[True, True, False]] and seen["is_causal"] is True
    finally:
        A._BACKENDS.pop("spy")


def test_lazy_backend_failing_to_import_says_what_is_needed(monkeypatch):
    monkeypatch.setitem(A._LAZY_BACKENDS, "flashy", ("minitx.kernels.does_not_exist", "attention_backend"))
    q, k, v = _qkv(1, 1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, backend="flashy")


def test_flash_backend_through_the_module_agrees_with_math(monkeypatch):
    """The lazily loaded Triton backend, reached through MultiHeadAttention (interpreter on a CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the kernels are defined, i.e. on first import
    pytest.importorskip("triton")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    # Triton reads TRITON_INTERPRET when a function is decorated, so what counts is how triton.language's own
    # helpers and our kernels were built (an earlier test may have imported triton without it, e.g. through
    # transformers), not the variable's value now.
    kernels = importlib.import_module("minitx.kernels.flash_kernels")
    if device == "cpu" and not all(isinstance(f, InterpretedFunction) for f in (tl.zeros, kernels._fwd_kernel)):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).to(device).eval()
    x = torch.randn(2, 7, 16, device=device)
    real = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], device=device)
    expected = mha(x, key_padding_mask=real.bool(), is_causal=True)
    mha.backend = "flash"
    torch.testing.assert_close(mha(x, key_padding_mask=real.bool(), is_causal=True), expected, rtol=1e-4, atol=1e-4)


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="d_model"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(8, 2, backend="nope")
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(x, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask: expected a bool"):
        mha(x, key_padding_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attn_mask"):
        mha(x, attn_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask"):
        mha(x, attn_mask=torch.ones(2, 1, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(TypeError, match="context"):
        mha(x, context=torch.randn(2, 5, 8, dtype=F64))
    q, k, v = _qkv(1, 2, 3, 4, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="k"):
        attention(q, k[..., :4], v)
    with pytest.raises(TypeError, match="v"):
        attention(q, k, v.double())
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        attention(q, k, v, attn_mask=torch.ones(4, 3, dtype=torch.bool))  # (M, N): transposed


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_alibi_bias_as_a_float_mask_in_another_dtype(backend):
    """A float32 bias (here ALiBi's (H, N, M)) added to float64 scores, combined with padding: (mha.2)."""
    from minitx.positional.alibi import alibi_bias

    q, k, v = _qkv(2, 4, 5, 5, 3)
    bias = alibi_bias(4, 5, 5)  # float32
    pad = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = attention(q, k, v, backend=backend, attn_mask=bias, key_padding_mask=pad)
    scores = q @ k.transpose(-2, -1) / 3 ** 0.5 + bias.double()  # (B, H, N, M)
    scores = scores.masked_fill(~pad[:, None, None, :], float("-inf"))
    torch.testing.assert_close(out, torch.softmax(scores, dim=-1) @ v)


def test_mha_output_is_a_sum_of_differently_projected_heads():
    """(mha.4): MHA = sum_h O_h W_O^(h) + b_O, with W_O^(h) the h-th block of D input columns of out_proj."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).double().eval()
    x = torch.randn(2, 5, 12, dtype=F64)
    out, weights = mha(x, return_weights=True)  # weights (B, H, N, M)
    v = rearrange(mha.v_proj(x), "b m (h d) -> b h m d", h=3)  # (B, M, C) -> (B, H, M, D)
    heads = weights @ v  # (B, H, N, D): O_h
    w_o = rearrange(mha.out_proj.weight, "c (h d) -> h d c", h=3)  # (C, C) -> (H, D, C): W_O^(h) as D x C
    per_head = torch.einsum("bhnd,hdc->bhnc", heads, w_o)  # each head written into the full width
    torch.testing.assert_close(out, per_head.sum(1) + mha.out_proj.bias)
    # and not the average of the heads (the mistake the page warns about)
    assert not torch.allclose(out, per_head.mean(1) + mha.out_proj.bias)


@pytest.mark.parametrize("d_model,n_heads", [(768, 1), (768, 12), (12, 3), (8, 8)])
def test_mha_parameter_count_is_independent_of_heads(d_model, n_heads):
    """(mha.5): 4C^2 + 4C parameters with biases (2 362 368 for C = 768), 4C^2 without."""
    count = sum(p.numel() for p in MultiHeadAttention(d_model, n_heads).parameters())
    assert count == 4 * d_model**2 + 4 * d_model
    if d_model == 768:
        assert count == 2_362_368
    no_bias = MultiHeadAttention(d_model, n_heads, bias=False)
    assert sum(p.numel() for p in no_bias.parameters()) == 4 * d_model**2


@pytest.mark.parametrize("n,m,c,h", [(5, 5, 12, 3), (3, 7, 8, 2), (6, 2, 16, 4)])
def test_mha_matmul_flops_match_the_cost_formula(n, m, c, h):
    """(mha.6), counted by PyTorch's FlopCounterMode on the math backend: projections 2NC^2 (Q, out) +
    2 * 2MC^2 (K, V), which is 8NC^2 for self-attention, plus 2NMD per head for QK^T and for PV."""
    from torch.utils.flop_counter import FlopCounterMode

    mha = MultiHeadAttention(c, h, backend="math")
    x, context = torch.randn(1, n, c), torch.randn(1, m, c)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        mha(x, context=None if n == m else context)
    projections = 8 * n * c * c if n == m else 4 * n * c * c + 4 * m * c * c
    assert counter.get_total_flops() == projections + 4 * n * m * c


# ---------------------------------------------------------------- what FlashAttention users ask for (issue 12)
# Each option against a reference built by hand here, for math and sdpa (the flash kernel is held to math in
# tests/test_flash_features.py).

def _reference(q, k, v, allowed=None, bias=None):
    """softmax(q k^T / sqrt(D) + bias) v over `allowed` keys, k/v repeated to q's heads; empty rows -> 0."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("n, m", [(3, 7), (7, 3), (5, 5)])
def test_bottom_right_causal_is_what_a_kv_cache_needs(backend, n, m):
    """(attn.3) with off = M - N: query i sees keys j <= i + M - N, so the last query sees all M keys."""
    q, k, v = _qkv(1, 2, n, m, 4)
    allowed = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + (m - n)  # (N, M)
    assert torch.equal(F.causal_mask(n, m, align="bottom_right"), allowed)
    got = attention(q, k, v, backend=backend, is_causal=True, causal_align="bottom_right")
    torch.testing.assert_close(got, _reference(q, k, v, allowed))
    # decoding one token with a cache == the last row of the full causal attention
    last = attention(q[:, :, -1:], k, v, backend=backend, is_causal=True, causal_align="bottom_right")
    torch.testing.assert_close(last, got[:, :, -1:])


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_grouped_query_attention_reads_shared_heads(backend):
    """(flash.18) on the readable path: k, v with H_kv = 2 heads serve H = 6 query heads, gradients summed."""
    q, k, v = _qkv(2, 6, 5, 7, 3)
    k, v = (t.detach()[:, :2].clone().requires_grad_() for t in (k, v))
    got = attention(q, k, v, backend=backend, is_causal=True)
    torch.testing.assert_close(got, _reference(q, k, v, F.causal_mask(5, 7)))
    got.sum().backward()
    assert k.grad.shape == (2, 2, 7, 3) and k.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="k: expected a number of heads dividing"):
        attention(q, k[:, :1].expand(2, 4, 7, 3), v[:, :1].expand(2, 4, 7, 3))


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("window, causal, align", [((2, 1), False, "top_left"), ((3, 0), True, "bottom_right"),
                                                   ((-1, 0), False, "top_left")])
def test_sliding_window_keeps_a_band_around_the_aligned_diagonal(backend, window, causal, align):
    q, k, v = _qkv(1, 2, 6, 9, 4)
    off = 3 if align == "bottom_right" else 0
    d = torch.arange(9)[None, :] - torch.arange(6)[:, None] - off  # (N, M)
    allowed = (d >= -window[0] if window[0] >= 0 else True) & (d <= (0 if causal else window[1]))
    got = attention(q, k, v, backend=backend, window=window, is_causal=causal, causal_align=align)
    torch.testing.assert_close(got, _reference(q, k, v, allowed))
    if window == (-1, 0):  # a window open to the left and closed at 0 is plain causal attention
        torch.testing.assert_close(got, attention(q, k, v, backend=backend, is_causal=True))


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_alibi_slopes_option_equals_the_bias_it_stands_for(backend):
    """(pos.8) bottom-right aligned with causal: bias -slope_h |j - i - (M - N)|, here M - N = 2."""
    from minitx.positional.alibi import alibi_bias_from_slopes, alibi_slopes

    q, k, v = _qkv(1, 4, 3, 5, 4)
    slopes = alibi_slopes(4).double()
    got = attention(q, k, v, backend=backend, alibi_slopes=slopes, is_causal=True, causal_align="bottom_right")
    want = _reference(q, k, v, F.causal_mask(3, 5, align="bottom_right"), alibi_bias_from_slopes(slopes, 3, 5, 2))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_packed_sequences_equal_a_padded_batch(backend):
    """(flash.19): sequences of lengths 3, 5, 1 packed into T = 9 rows == the same batch padded to 5."""
    from minitx.attention.varlen import varlen_attention

    lengths, h, d = [3, 5, 1], 2, 4
    cu = torch.tensor([0, 3, 8, 9])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, h, d, generator=g, dtype=F64) for _ in range(3))
    packed = varlen_attention(q, k, v, cu, cu, backend=backend, is_causal=True)
    for s, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        qs, ks, vs = (rearrange(t[a:b], "t h d -> 1 h t d") for t in (q, k, v))
        torch.testing.assert_close(rearrange(packed[a:b], "t h d -> 1 h t d"),
                                   _reference(qs, ks, vs, F.causal_mask(lengths[s], lengths[s])))
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 8]), cu)


def test_mha_grouped_query_heads_and_packed_sequences():
    """MultiHeadAttention(n_kv_heads=...) has smaller k/v projections; cu_seqlens packs without padding and
    equals running each sequence alone."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2).double()
    assert mha.k_proj.weight.shape == (8, 16) and mha.v_proj.weight.shape == (8, 16)
    x = torch.randn(1, 7, 16, dtype=F64)
    packed = mha(x, cu_seqlens=torch.tensor([0, 4, 7]), is_causal=True, window=(2, 0))
    for a, b in ((0, 4), (4, 7)):
        torch.testing.assert_close(packed[:, a:b], mha(x[:, a:b], is_causal=True, window=(2, 0)))
    out, weights = mha(x, is_causal=True, causal_align="bottom_right", return_weights=True)
    torch.testing.assert_close(out, mha(x, is_causal=True, causal_align="bottom_right"))
    assert weights.shape == (1, 4, 7, 7) and torch.all(weights.triu(1) == 0)
    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(16, 4, n_kv_heads=3)


def test_feature_options_are_checked():
    q, k, v = _qkv(1, 2, 3, 4, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="causal_align"):
        attention(q, k, v, is_causal=True, causal_align="bottom")
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=(2,))
    with pytest.raises(ValueError, match="alibi_slopes"):
        attention(q, k, v, alibi_slopes=torch.ones(3))


# ---------------------------------------------------------------- issue 10, row 11: sdpa as strict as math

@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("kw, error, words", [
    (dict(scale=float("inf")), ValueError, "scale"), (dict(scale=float("nan")), ValueError, "scale"),
    (dict(dropout_p="0.1"), ValueError, "dropout_p"), (dict(dropout_p=None), ValueError, "dropout_p"),
    (dict(is_causal=1), TypeError, "is_causal"),
])
def test_every_backend_refuses_the_same_bad_options(backend, kw, error, words):
    q, k, v = _qkv(1, 2, 3, 4, 5, dtype=torch.float32)
    with pytest.raises(error, match=words):
        attention(q, k, v, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_every_backend_refuses_empty_and_integer_inputs(backend):
    q, k, v = _qkv(1, 2, 3, 4, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="k: expected at least one key"):
        attention(q, k[:, :, :0], v[:, :, :0], backend=backend)
    with pytest.raises(ValueError, match="head dim D >= 1"):
        attention(q[..., :0], k[..., :0], v[..., :0], backend=backend)
    ints = [t.detach().long() for t in (q, k, v)]
    with pytest.raises(TypeError, match="q: expected a floating-point tensor"):
        attention(*ints, backend=backend)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_one_dimensional_float_mask_over_the_keys(backend):
    """A float attn_mask of shape (M,) broadcasts over (B, H, N, M) in every backend."""
    q, k, v = _qkv(2, 2, 3, 4, 5)
    bias = torch.tensor([0.0, -1.0, 2.0, float("-inf")], dtype=F64)
    torch.testing.assert_close(attention(q, k, v, backend=backend, attn_mask=bias),
                               _reference(q, k, v, bias=bias))


def test_varlen_dispatches_through_the_registry():
    """A backend that offers `fn.varlen` runs the whole packing in one call (as flash does); one without is
    looped over the sequences through the front door. No backend name is special-cased."""
    from minitx.attention.varlen import varlen_attention
    calls = []

    def packed(q, k, v, cu_q, cu_k, **options):
        calls.append(options)
        return torch.zeros_like(q)
    math = get_backend("math")

    def with_varlen(q, k, v, **kw):
        return math(q, k, v, **kw)
    with_varlen.varlen = packed
    register_backend("varlen_spy", with_varlen)
    try:
        q, k, v = (torch.randn(7, 2, 4) for _ in range(3))
        cu = torch.tensor([0, 3, 7])
        assert torch.equal(varlen_attention(q, k, v, cu, cu, backend="varlen_spy", is_causal=True),
                           torch.zeros(7, 2, 4))
        assert calls == [{"is_causal": True}]
        looped = varlen_attention(q, k, v, cu, cu, backend="math", is_causal=True)
        assert looped.abs().sum() > 0
    finally:
        A._BACKENDS.pop("varlen_spy")


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_split_and_merge_heads_are_the_einops_patterns(heads):
    """split_heads / merge_heads (mha.1), (mha.3) are "b l (h d) -> b h l d" and its inverse, as views."""
    from minitx.attention.multi_head import merge_heads, split_heads
    x = torch.randn(3, 5, 4 * heads)
    split = split_heads(x, heads)
    assert torch.equal(split, rearrange(x, "b l (h d) -> b h l d", h=heads))
    assert split.data_ptr() == x.data_ptr()  # a view: no copy
    assert torch.equal(merge_heads(split), rearrange(split, "b h l d -> b l (h d)"))
    assert torch.equal(merge_heads(split), x)


@pytest.mark.parametrize("n, m", [(1, 7), (5, 5), (3, 8)])
def test_simplified_causal_options_give_the_same_attention(n, m):
    """masks.simplify_causal: bottom-right causal (dec.9) is no mask at all for one query and top-left for
    N = M, so backends get SDPA's own is_causal or nothing; the answer equals the explicit mask's."""
    from minitx.attention.masks import simplify_causal
    torch.manual_seed(n * 10 + m)
    q, k, v = torch.randn(2, 3, n, 8), torch.randn(2, 3, m, 8), torch.randn(2, 3, m, 8)
    is_causal, align, window = simplify_causal(n, m, True, "bottom_right", None)
    if n == 1:
        assert (is_causal, align) == (False, "top_left")
    elif n == m:
        assert (is_causal, align) == (True, "top_left")
    else:
        assert (is_causal, align) == (True, "bottom_right")
    assert simplify_causal(n, m, True, "top_left", (-1, -1)) == (True, "top_left", None)
    explicit = F.causal_mask(n, m, align="bottom_right")
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, backend=backend, is_causal=True, causal_align="bottom_right")
        ref = attention(q, k, v, backend="math", attn_mask=explicit)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_causal_bias_built_in_inference_mode_serves_a_training_step():
    """The causal bias (attn.3) and band masks are built once per shape and reused; one first built under
    torch.inference_mode() is an ordinary tensor, so a later training step can use it."""
    q = torch.randn(1, 2, 9, 4)
    with torch.inference_mode():
        attention(q, q, q, is_causal=True)
        attention(q[:, :, :3], q, q, is_causal=True, causal_align="bottom_right")
    p = q.clone().requires_grad_()
    out = attention(p, p, p, is_causal=True) + attention(p[:, :, :3], p, p, is_causal=True,
                                                            causal_align="bottom_right").sum()
    out.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_fused_qkv_projection_equals_the_three_and_never_reads_stale_weights():
    """minitx.attention.fused_qkv: in eval mode q/k/v are laid side by side and, under no_grad, one product with
    the same numbers; train() gives each its own dense weight again; moving, replacing, hooking or
    LoRA-wrapping a projection falls back to the three products."""
    from torch import nn

    from minitx.attention.fused_qkv import fuse_qkv_storage, fused_qkv
    from minitx.peft.lora import apply_lora
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    for kv_heads in (4, 2):  # grouped-query attention too: k, v narrower than q
        mha = MultiHeadAttention(16, 4, n_kv_heads=kv_heads)
        assert fused_qkv(mha) is None  # training mode: three products
        with torch.no_grad():
            three = mha(x, is_causal=True)
            mha.eval()
            assert fused_qkv(mha) is not None and mha.q_proj.weight.stride() == (1, 16 + 2 * 4 * kv_heads)
            torch.testing.assert_close(mha(x, is_causal=True), three, atol=1e-6, rtol=1e-5)
        mha.train()
        assert fused_qkv(mha) is None and mha.k_proj.weight.stride() == (1, 4 * kv_heads)
    mha.eval()
    with torch.no_grad():
        assert fused_qkv(mha) is not None
        torch.testing.assert_close(mha(x, is_causal=True), three, atol=1e-6, rtol=1e-5)
        mha.k_proj.weight.mul_(2.0)  # an in-place edit is the shared memory itself
        fused_k = mha(x, is_causal=True)
    assert fused_qkv(mha) is None  # grad mode with trainable weights: the three products
    torch.testing.assert_close(mha(x, is_causal=True).detach(), fused_k, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        mha.double()  # new memory for every parameter: laid side by side again
        assert fused_qkv(mha) is not None and mha.q_proj.weight.dtype == torch.float64
        mha.v_proj.weight.data = mha.v_proj.weight.data.clone()  # no longer in the shared tensor
        assert fused_qkv(mha) is None
        fuse_qkv_storage(mha)
        handle = mha.k_proj.register_forward_hook(lambda m, i, o: None)
        assert fused_qkv(mha) is None  # the user's hook must run
        handle.remove()
        assert fused_qkv(mha) is not None
    model = nn.Sequential()
    model.add_module("attention", mha)
    apply_lora(model, ["q_proj"], r=2, alpha=4.0)
    with torch.no_grad():
        assert fused_qkv(mha) is None  # q_proj is a LoRA layer now
