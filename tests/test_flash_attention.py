"""The Triton FlashAttention kernel against a float64 plain-PyTorch reference (docs/math/flash_attention.md).

Without CUDA the kernels run on the CPU under Triton's interpreter (fp32, fp16) at small, odd sizes; tests
marked `gpu` add bf16 and long sequences on a GPU.

Tolerance rule: the kernel's error against the float64 reference may be at most twice the error of the same
computation done in plain PyTorch at the same precision, plus a floor of sqrt(D) eps32 |A||B|, where |A||B|
is the largest value of the same sums taken over absolute values (`magnitudes`). That is the classical
forward-error bound of a length-D dot product (with sqrt(D) for rounding errors of random sign, instead of
the worst case D), in fp32 because the kernel accumulates in fp32 whatever the input dtype, widened by the
largest |exp argument| (|S| + |lse|): the kernel rebuilds P = exp2(S' - L') from a rounded logsumexp, and exp
turns an argument's rounding error eps |x| into a relative error of P of the same size. The floor is
needed because plain PyTorch can be exact by luck: with one allowed key the output is v and dQ = dK = 0
exactly, which the kernel forms from dP - Delta (flash.15), a difference of large terms that one rounding
leaves slightly off zero. It is a few fp32 ulps of the terms involved, so a wrong formula cannot hide under it.
"""

import math
import os
import re

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minitx.kernels import flash_attention as fa  # noqa: E402
from minitx.kernels.flash_attention import attention_backend, flash_attention  # noqa: E402

DEVICE = "cpu" if fa.interpreting() else "cuda"
FP32_EPS = torch.finfo(torch.float32).eps  # the kernel accumulates in fp32 whatever the input dtype


def allowed_keys(q, k, causal=False, mask=None):
    """(B, 1, N, M) bool: may query i see key j? Causal is top-left aligned (flash.10)."""
    allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()  # key j <= query i
    allowed = allowed.expand(q.shape[0], 1, *allowed.shape)  # (N, M) -> (B, 1, N, M)
    if mask is not None:
        allowed = allowed & mask.bool()[:, None, None, :]  # (B, M) -> (B, 1, 1, M)
    return allowed


def reference(q, k, v, causal=False, scale=None, mask=None):
    """Plain PyTorch attention in the dtype of q: (out, lse). Empty rows give zeros and lse = -inf (flash.11)."""
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed_keys(q, k, causal, mask), float("-inf"))
    row_max = s.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(s - row_max)
    total = e.sum(-1, keepdim=True)
    out = (e / torch.where(total > 0, total, torch.ones_like(total))) @ v
    return out, (row_max + total.log()).squeeze(-1)


def magnitudes(q, k, v, dout, causal=False, scale=None, mask=None):
    """|A||B| for out, lse, dQ, dK, dV: the sums of (flash.4), (flash.5), (flash.14)-(flash.16) in absolute value."""
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
    out, lse = reference(q, k, v, causal, scale, mask)
    s = q @ k.transpose(-1, -2) * scale
    p = torch.softmax(s.masked_fill(~allowed_keys(q, k, causal, mask), float("-inf")), -1).nan_to_num(0.0)
    ds = p * ((dout @ v.transpose(-1, -2)).abs() + (dout * out).sum(-1, keepdim=True).abs())
    return [p @ v.abs(), lse.abs().nan_to_num(posinf=0.0) + s.abs().amax(-1),
            scale * ds @ k.abs(), scale * ds.transpose(-1, -2) @ q.abs(), p.transpose(-1, -2) @ dout.abs()]


def make_inputs(b, h, n, m, d, mask_kind=None, seed=0):
    """q, k, v, dO in float64 (rounded later to the dtype under test) and a (B, M) key padding mask."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, rows, d, generator=g, dtype=torch.float64) for rows in (n, m, m))
    dout = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    mask = None
    if mask_kind == "padding":  # each sequence keeps a random-length prefix of real tokens (>= 1)
        lengths = torch.randint(1, m + 1, (b,), generator=g)
        mask = torch.arange(m)[None, :] < lengths[:, None]
    elif mask_kind == "empty_rows":  # batch 0 has no real key at all; batch 1 a random pattern
        mask = torch.rand(b, m, generator=g) < 0.6
        mask[0] = False
    elif mask_kind == "first_key_padded":  # with causal, query 0 then has no allowed key
        mask = torch.ones(b, m, dtype=torch.bool)
        mask[:, 0] = False
    return q, k, v, dout, mask


def run(fn, q, k, v, dout, dtype, **kw):
    """Forward and backward of `fn` on inputs rounded to `dtype`: (out, lse, dq, dk, dv), all float64."""
    leaves = [t.detach().to(dtype=dtype, device=DEVICE).requires_grad_() for t in (q, k, v)]
    if "mask" in kw and kw["mask"] is not None:
        kw["mask"] = kw["mask"].to(DEVICE)
    out, lse = fn(*leaves, **kw)
    out.backward(dout.to(dtype).to(DEVICE))
    return [t.detach().double().cpu() for t in (out, lse, *(x.grad for x in leaves))]


def flash(q, k, v, causal=False, scale=None, mask=None):
    return flash_attention(q, k, v, causal=causal, scale=scale, attention_mask=mask, return_lse=True)


def exact_inputs(q, k, v, dout, dtype):
    """The float64 reference sees the same rounded inputs as the two computations it judges (on DEVICE)."""
    return [t.to(dtype).to(device=DEVICE, dtype=torch.float64) for t in (q, k, v, dout)]


def check_as_accurate_as_plain_torch(q, k, v, dout, dtype, **kw):
    """(flash.4), (flash.5), (flash.14)-(flash.16): out, lse, dQ, dK, dV within the tolerance rule."""
    q, k, v, dout = exact_inputs(q, k, v, dout, dtype)
    if kw.get("mask") is not None:
        kw["mask"] = kw["mask"].to(DEVICE)
    exact = run(reference, q, k, v, dout, torch.float64, **kw)
    plain = run(reference, q, k, v, dout, dtype, **kw)
    got = run(flash, q, k, v, dout, dtype, **kw)
    sizes = magnitudes(q, k, v, dout, **kw)
    exponent = sizes[1].max().item()  # the largest |exp argument|: exp(x) turns x's rounding eps|x| into relative error
    for name, e, p, g, size in zip(("out", "lse", "dq", "dk", "dv"), exact, plain, got, sizes):
        assert torch.equal(torch.isfinite(g), torch.isfinite(e)), f"{name}: non-finite pattern differs"
        if name == "lse":  # empty rows: -inf in both, as the reference defines them
            assert torch.equal(g[~torch.isfinite(e)], e[~torch.isfinite(e)])
            e, p, g = (x.nan_to_num(neginf=0.0) for x in (e, p, g))
        floor = (math.sqrt(q.shape[-1]) + exponent) * FP32_EPS * size.max().item()
        err, err_plain = (g - e).abs().max().item(), (p - e).abs().max().item()
        assert err <= 2 * err_plain + floor, f"{name}: flash error {err:.3g} > 2 x plain {err_plain:.3g} + {floor:.3g}"


# A covering set rather than the full product: every N and M in {1, 17, 64, 130} appears, N < M, N = M and
# N > M, one and several tiles, partial last tiles, D a power of two or not, each mask kind, causal or not.
CASES = [
    # (B, H, N, M, D, causal, mask_kind)
    (1, 2, 1, 1, 16, False, None),
    (1, 2, 1, 130, 16, True, "padding"),
    (2, 1, 17, 17, 48, True, "padding"),
    (1, 2, 64, 130, 16, False, "padding"),
    (2, 1, 130, 64, 64, True, None),
    (1, 1, 130, 17, 48, True, "padding"),
    (2, 2, 17, 64, 64, False, "empty_rows"),
    (1, 2, 17, 64, 16, True, "first_key_padded"),
    (1, 1, 33, 40, 80, False, None),
    (1, 1, 9, 20, 8, True, "padding"),  # D < 16: padded up to the smallest tl.dot size
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_matches_float64_reference(case, dtype):
    """(flash.1) computed tile by tile: exp2 with log2(e) folded in (flash.9), odd head dims padded to BLOCK_D
    (flash.8), and a backward that rebuilds P from the saved logsumexp (flash.13) — all against float64."""
    b, h, n, m, d, causal, mask_kind = case
    q, k, v, dout, mask = make_inputs(b, h, n, m, d, mask_kind)
    check_as_accurate_as_plain_torch(q, k, v, dout, dtype, causal=causal, mask=mask)


@settings(max_examples=8)
@given(n=st.integers(1, 50), m=st.integers(1, 50), d=st.sampled_from([16, 24, 48]), causal=st.booleans(),
       scale=st.floats(0.05, 4.0), padded=st.booleans(), seed=st.integers(0, 2**16))
def test_property_random_shapes_fp32(n, m, d, causal, scale, padded, seed):
    q, k, v, dout, mask = make_inputs(1, 2, n, m, d, "padding" if padded else None, seed)
    check_as_accurate_as_plain_torch(q, k, v, dout, torch.float32, causal=causal, scale=scale, mask=mask)


@pytest.mark.skipif(not fa.interpreting(), reason="on a GPU autotuning picks the tiles")
@pytest.mark.parametrize("block_n, block_m", [(16, 32), (32, 16)])
def test_unequal_query_and_key_tiles(monkeypatch, block_n, block_m):
    """(flash.12) with BLOCK_N != BLOCK_M, as autotuning may pick on a GPU: the causal loop bounds still hold."""
    monkeypatch.setitem(fa.INTERPRETER_BLOCKS, "BLOCK_N", block_n)
    monkeypatch.setitem(fa.INTERPRETER_BLOCKS, "BLOCK_M", block_m)
    q, k, v, dout, mask = make_inputs(1, 2, 41, 57, 16, "first_key_padded")
    check_as_accurate_as_plain_torch(q, k, v, dout, torch.float32, causal=True, mask=mask)


def test_online_softmax_rescales_when_the_max_arrives_late():
    """(flash.3): scores grow along the keys, so every new tile raises the running max by a lot."""
    q, k, v, dout, _ = make_inputs(1, 1, 17, 130, 16)
    q = q.abs()
    k = k.abs() * torch.linspace(0.1, 8.0, 130, dtype=torch.float64)[:, None]  # later keys score higher
    check_as_accurate_as_plain_torch(q, k, v, dout, torch.float32)


def test_empty_rows_give_zeros_and_zero_gradients():
    """(flash.11): no NaN, out = 0, lse = -inf, and padded keys receive exactly zero dK, dV."""
    q, k, v, dout, mask = make_inputs(2, 2, 17, 40, 16, "empty_rows")
    out, lse, dq, dk, dv = run(flash, q, k, v, dout, torch.float32, mask=mask)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(dq[0], torch.zeros_like(dq[0]))
    assert torch.all(lse[0] == float("-inf")) and torch.all(torch.isfinite(lse[1]))
    padded = ~mask[:, None, :, None].expand_as(dk)  # (B, M) -> (B, H, M, D)
    assert torch.all(dk[padded] == 0) and torch.all(dv[padded] == 0)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))


def test_causal_tiles_above_the_diagonal_are_never_loaded():
    """(flash.12): NaN in keys/values no query tile may reach cannot leak in, because those tiles are skipped.

    Masking alone would not do: a skipped-by-mask tile still multiplies p = 0 by v = NaN.
    """
    if fa.interpreting():
        block = fa.INTERPRETER_BLOCKS["BLOCK_N"]
    else:
        block = max(c[0] for c in fa.CANDIDATES["fwd"] + fa.CANDIDATES["dq"])  # the widest query tile
    n, m = 17, block + 40
    q, k, v, dout, _ = make_inputs(1, 2, n, m, 16)
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, block:], v_nan[:, :, block:] = float("nan"), float("nan")
    clean = run(flash, q, k, v, dout, torch.float32, causal=True)
    poisoned = run(flash, q, k_nan, v_nan, dout, torch.float32, causal=True)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), clean, poisoned):
        if name in ("dk", "dv"):
            a, b = a[:, :, :block], b[:, :, :block]
        assert torch.equal(a, b), name


def test_causal_alignment_matches_torch_sdpa_for_unequal_lengths():
    """(flash.10): top-left alignment, as torch SDPA's is_causal (a reference no one here wrote)."""
    q, k, v, _, _ = make_inputs(1, 2, 40, 23, 16)
    q, k, v = (t.float().to(DEVICE) for t in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(flash_attention(q, k, v, causal=True), expected, rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    """No atomics: two backward passes are bit-identical."""
    q, k, v, dout, mask = make_inputs(1, 2, 130, 64, 48, "padding")
    first = run(flash, q, k, v, dout, torch.float16, causal=True, mask=mask)
    second = run(flash, q, k, v, dout, torch.float16, causal=True, mask=mask)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_non_contiguous_inputs_give_the_same_bits():
    """Strides are honoured: transposed, gapped and every-other-row views give exactly the contiguous result."""
    q, k, v, dout, mask = make_inputs(2, 3, 17, 40, 16, "padding")
    contiguous = run(flash, q, k, v, dout, torch.float32, mask=mask)
    q, k, v, dout = (t.float().to(DEVICE) for t in (q, k, v, dout))
    views = [
        q.transpose(1, 2).contiguous().transpose(1, 2),  # (B, N, H, D) storage seen as (B, H, N, D)
        torch.cat([k, torch.full_like(k, float("nan"))], dim=-1)[..., :16],  # row stride 2 D, NaN in the gaps
        torch.stack([v, v], dim=3).flatten(2, 3)[:, :, ::2],  # (B, H, M, 2, D) -> (B, H, 2 M, D), every other row
    ]
    leaves = [t.detach().requires_grad_() for t in views]  # detach keeps the strides
    assert not any(t.is_contiguous() for t in leaves)
    out, lse = flash(*leaves, mask=mask.to(DEVICE))
    out.backward(dout.transpose(1, 2).contiguous().transpose(1, 2))
    got = [out, lse, *(x.grad for x in leaves)]
    assert all(torch.equal(a, b.detach().double().cpu()) for a, b in zip(contiguous, got))


def test_broadcast_upstream_gradient_with_zero_strides():
    """out.sum().backward() hands the kernel an expanded dO (stride 0); it must equal a materialised one."""
    q, k, v, _, mask = make_inputs(1, 2, 20, 24, 16, "padding")
    grads = []
    for materialise in (False, True):
        leaves = [t.float().to(DEVICE).requires_grad_() for t in (q, k, v)]
        out = flash_attention(*leaves, causal=True, attention_mask=mask.to(DEVICE))
        out.backward(torch.ones_like(out)) if materialise else out.sum().backward()
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def small(dtype=torch.float32, n=5, m=7, d=16):
    q, k, v, _, _ = make_inputs(1, 2, n, m, d)
    return [t.to(dtype=dtype, device=DEVICE) for t in (q, k, v)]


@pytest.mark.parametrize("mutate, error, words", [
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "float32, float16 or bfloat16"),
    (lambda q, k, v: (q, k.half(), v), TypeError, "one dtype"),
    (lambda q, k, v: (q[0], k[0], v[0]), ValueError, "(B, H, N or M, D)"),
    (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, "same shape"),
    (lambda q, k, v: (q[..., :8], k, v), ValueError, "q (B, H, N, D) and k (B, H_kv, M, D)"),
    (lambda q, k, v: (q[:, :, :0], k, v), ValueError, "non-empty"),
    (lambda q, k, v: (torch.cat([q] * 17, -1), torch.cat([k] * 17, -1), torch.cat([v] * 17, -1)), ValueError,
     "1..256"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "torch.Tensor"),
])
def test_unsupported_input_is_refused_with_what_is_supported(mutate, error, words):
    with pytest.raises(error, match=re.escape(words)):
        flash_attention(*mutate(*small()))


def test_bad_mask_scale_and_causal_are_refused():
    q, k, v = small()
    with pytest.raises(ValueError, match=re.escape("(B, M) = (1, 7)")):
        flash_attention(q, k, v, attention_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="scale"):
        flash_attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="causal"):
        flash_attention(q, k, v, causal="yes")


@pytest.mark.skipif(not fa.interpreting(), reason="checks the interpreter's limits")
def test_interpreter_refuses_bf16_and_says_to_use_a_gpu():
    with pytest.raises(TypeError, match="bfloat16 needs a CUDA GPU"):
        flash_attention(*small(torch.bfloat16))


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_attention(*[t.cpu() for t in small()])


def test_backend_refuses_general_masks_but_takes_key_padding():
    q, k, v = small()
    with pytest.raises(ValueError, match="Use backend 'math' or 'sdpa'"):
        attention_backend(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool, device=DEVICE).tril())
    with pytest.raises(ValueError, match="dropout_p"):
        attention_backend(q, k, v, dropout_p=1.0)
    pad = torch.tensor([[True, True, False, True, True, False, True]], device=DEVICE)
    expected = flash_attention(q, k, v, attention_mask=pad)
    # the same padding as a key padding mask, or as a (B, 1, 1, M) boolean attention mask
    assert torch.equal(attention_backend(q, k, v, key_padding_mask=pad), expected)
    assert torch.equal(attention_backend(q, k, v, attn_mask=pad[:, None, None, :]), expected)


def test_registry_flash_backend_agrees_with_math():
    """Through the registry: MultiHeadAttention(backend="flash") == backend="math", padding and causal."""
    from minitx.attention.backends import available_backends
    from minitx.attention.front_door import attention
    from minitx.attention.multi_head import MultiHeadAttention

    assert "flash" in available_backends()
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=32, n_heads=2, backend="math").to(DEVICE)  # head dim 16
    x = torch.randn(2, 19, 32, device=DEVICE)
    pad = torch.ones(2, 19, dtype=torch.bool, device=DEVICE)
    pad[1, 11:] = False  # True = real token
    for is_causal in (False, True):
        expected = mha(x, key_padding_mask=pad, is_causal=is_causal)
        mha.backend = "flash"
        got = mha(x, key_padding_mask=pad, is_causal=is_causal)
        mha.backend = "math"
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    q, k, v = small(n=9, m=4)  # N != M: the front door with is_causal aligns top-left in both backends
    torch.testing.assert_close(attention(q, k, v, backend="flash", is_causal=True),
                               attention(q, k, v, backend="math", is_causal=True), rtol=1e-5, atol=1e-5)


GPU_CASES = [
    # (B, H, N, M, D, causal, mask_kind): several autotuned tiles, odd lengths, every head-dim kind
    (2, 4, 1000, 1000, 64, True, "padding"),
    (1, 2, 513, 2049, 80, True, "first_key_padded"),
    (1, 2, 4096, 3000, 128, False, "padding"),
    (2, 2, 777, 333, 96, False, "empty_rows"),
    (1, 1, 16384, 16384, 64, True, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=["-".join(map(str, c)) for c in GPU_CASES])
def test_gpu_large_sizes_match_float64_reference(case, dtype):
    b, h, n, m, d, causal, mask_kind = case
    q, k, v, dout, mask = make_inputs(b, h, n, m, d, mask_kind)
    check_as_accurate_as_plain_torch(q, k, v, dout, dtype, causal=causal, mask=mask)


@pytest.mark.gpu
def test_gpu_backward_is_deterministic_bf16():
    q, k, v, dout, mask = make_inputs(2, 4, 2048, 1536, 64, "padding")
    first = run(flash, q, k, v, dout, torch.bfloat16, causal=True, mask=mask)
    second = run(flash, q, k, v, dout, torch.bfloat16, causal=True, mask=mask)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
