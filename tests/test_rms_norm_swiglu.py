"""minitx.functional.rms_norm, silu, swiglu: each hand-written backward against autograd through a reference
written with plain torch ops, against PyTorch's own op (F.rms_norm, F.silu), and against gradcheck in float64,
on Hypothesis-drawn inputs. Labels refer to docs/math/rms_norm.md and docs/math/swiglu.md."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx import functional as mf
from minitx.functional._rms_norm import _rms_norm_backward, _rms_norm_backward_textbook, _rms_norm_forward

F64 = dict(dtype=torch.float64)


def _randn(shape, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * scale).requires_grad_(True)


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def check_close(a, b, atol=1e-10, rtol=1e-7):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def ref_rms_norm(x, weight, eps):
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def ref_silu(x):
    return x / (1 + torch.exp(-x))


# ----------------------------------------------------------------------------------------------- rms norm

@st.composite
def rms_case(draw):
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    c = shape[-1]
    w_shape = draw(st.sampled_from([None, (c,), (1,) * (len(shape) - 1) + (c,), (1,)]))
    return (shape, w_shape, draw(st.sampled_from([1e-6, 1e-5, 0.1])), draw(st.integers(0, 2**16)),
            draw(st.sampled_from([0.01, 1.0, 100.0])), draw(st.sampled_from([0.0, 3.0])))


@given(case=rms_case())
def test_rms_norm_matches_reference_and_torch(case):
    """(rmsnorm.1) forward, (rmsnorm.2)-(rmsnorm.4) backward incl. a broadcast weight == reference == F.rms_norm."""
    shape, w_shape, eps, seed, scale, offset = case
    x = _randn(shape, seed, scale) + offset
    w = None if w_shape is None else _randn(w_shape, seed + 1)
    inputs = [t for t in (x, w) if t is not None]
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2), **F64)
    ours, ref = mf.rms_norm(x, w, eps), ref_rms_norm(x, w, eps)
    check_close(ours, ref)
    g_ours = _grads(ours, inputs, g)
    for a, r in zip(g_ours, _grads(ref, inputs, g)):
        check_close(a, r, atol=1e-8, rtol=1e-6)
    c = shape[-1]
    if w is None or w.numel() == c:
        torch_ = F.rms_norm(x, (c,), None if w is None else w.reshape(c), eps)
        check_close(ours, torch_)
        for a, t in zip(g_ours, _grads(torch_, inputs, g)):
            check_close(a, t, atol=1e-8, rtol=1e-6)


@settings(max_examples=10)
@given(case=rms_case())
def test_rms_norm_gradcheck(case):
    """(rmsnorm.2)-(rmsnorm.4) against finite differences in float64, with a (C,) and a broadcast weight."""
    shape, _, _, seed, _, _ = case
    c = shape[-1]
    x = _randn(shape, seed)
    for w in (_randn((c,), seed + 1), _randn((1,) * (len(shape) - 1) + (c,), seed + 2)):
        assert torch.autograd.gradcheck(lambda x, w: mf.rms_norm(x, w, eps=0.1), (x, w))


def test_rms_norm_divides_by_the_root_mean_square_without_centring():
    """(rmsnorm.1) by hand: x = (1, 2, 4, 7): mean square (1 + 4 + 16 + 49) / 4 = 17.5; with eps = 0 the output
    is x / sqrt(17.5), whose mean is not 0 (no centring, unlike LayerNorm) and whose mean square is 1.
    (rmsnorm.3): with eps = 0 the gradient is orthogonal to x (scaling x changes nothing)."""
    x = torch.tensor([[1.0, 2.0, 4.0, 7.0]], **F64, requires_grad=True)
    y = mf.rms_norm(x, None, eps=0.0)
    check_close(y.detach(), x.detach() / 17.5 ** 0.5)
    assert y.mean().item() > 0.5
    check_close((y ** 2).mean(-1).detach(), torch.ones(1, **F64))
    (gx,) = torch.autograd.grad(y, x, torch.tensor([[0.3, -1.0, 2.0, 0.5]], **F64))
    assert abs(float((gx * x.detach()).sum())) < 1e-12
    assert gx.abs().max() > 0.01


@pytest.mark.parametrize("weight_shape", [None, (5,), (1, 1, 5), (3, 4, 5)])
def test_rms_norm_fast_backward_equals_the_textbook_one(weight_shape):
    """(rmsnorm.5) as run == (rmsnorm.2)-(rmsnorm.4) as printed, for a (C,), a broadcast and a full-size weight."""
    x = torch.randn(3, 4, 5, **F64)
    w = None if weight_shape is None else torch.randn(weight_shape, **F64)
    g = torch.randn(3, 4, 5, **F64)
    _, x_hat, rstd, w_c = _rms_norm_forward(x, w, 1e-6)
    ref_x, ref_w = _rms_norm_backward_textbook(g, x_hat, rstd, w_c)
    fast_x, fast_w = _rms_norm_backward(g, x_hat, rstd, w_c, None if w is None else w.shape)
    check_close(fast_x, ref_x)
    if w is not None:
        check_close(fast_w, mf._sum_to_shape(ref_w, w.shape))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rms_norm_half_precision_computes_in_float32(dtype):
    """(rmsnorm.5): half-precision input is normalized in float32 and rounded once, so it equals the float32
    result cast to the half dtype (and F.rms_norm in half precision to within its own rounding)."""
    x = (torch.randn(4, 64) * 30).to(dtype)
    w = torch.randn(64).to(dtype)
    ours = mf.rms_norm(x, w)
    assert ours.dtype == dtype
    expected = ref_rms_norm(x.double(), w.double(), 1e-6).to(dtype)
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(mf.rms_norm(x, w), x, torch.ones_like(x))
    assert gx.dtype == dtype and torch.isfinite(gx).all()


def test_rms_norm_rejects_bad_arguments_by_name():
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        mf.rms_norm(torch.ones(2, 4, dtype=torch.long), None)
    with pytest.raises(ValueError, match="weight: expected a shape broadcastable"):
        mf.rms_norm(x, torch.ones(3))
    with pytest.raises(TypeError, match="weight: expected dtype"):
        mf.rms_norm(x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps: expected a number >= 0"):
        mf.rms_norm(x, None, eps=-1.0)


# ------------------------------------------------------------------------------------------ silu, swiglu

@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.5, 3.0, 40.0]))
def test_silu_matches_reference_and_torch(shape, seed, scale):
    """(silu.1) forward and (silu.2) derivative == reference == F.silu."""
    x = _randn(shape, seed, scale)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), **F64)
    ours, ref, torch_ = mf.silu(x), ref_silu(x), F.silu(x)
    check_close(ours, ref)
    check_close(ours, torch_)
    (a,), (r,), (t,) = _grads(ours, x, g), _grads(ref, x, g), _grads(torch_, x, g)
    check_close(a, r)
    check_close(a, t)


def test_silu_gradcheck_and_known_values():
    """(silu.1)-(silu.2): gradcheck; silu(0) = 0 and silu'(0) = 1/2; silu(x) -> x, silu'(x) -> 1 for large x,
    -> 0 for very negative x with no NaN even at -1000 (no exp overflow); the minimum ~ -0.2785 at x ~ -1.2785."""
    assert torch.autograd.gradcheck(mf.silu, (_randn((4, 5), 0, 3.0),))
    x = torch.tensor([0.0, 40.0, -1000.0, -1.2784645], **F64, requires_grad=True)
    y = mf.silu(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    check_close(y.detach()[:3], torch.tensor([0.0, 40.0, 0.0], **F64))
    assert abs(y[3].item() + 0.27846454) < 1e-7
    check_close(dy, torch.tensor([0.5, 1.0, 0.0, 0.0], **F64), atol=1e-7, rtol=0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xs = torch.tensor([-1000.0, -60000.0, 0.0, 300.0]).to(dtype).requires_grad_(True)
        (d,) = torch.autograd.grad(mf.silu(xs).sum(), xs)
        assert torch.isfinite(mf.silu(xs)).all() and torch.isfinite(d).all(), dtype


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.5, 3.0, 40.0]))
def test_swiglu_matches_reference_and_torch(shape, seed, scale):
    """(swiglu.1) forward, (swiglu.2)-(swiglu.3) backward == autograd through F.silu(gate) * up and through the
    plain-ops reference."""
    gate, up = _randn(shape, seed, scale), _randn(shape, seed + 1)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2), **F64)
    ours, ref, torch_ = mf.swiglu(gate, up), ref_silu(gate) * up, F.silu(gate) * up
    check_close(ours, ref)
    check_close(ours, torch_)
    g_ours = _grads(ours, (gate, up), g)
    for other in (ref, torch_):
        for a, b in zip(g_ours, _grads(other, (gate, up), g)):
            check_close(a, b)


@settings(max_examples=10)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_swiglu_gradcheck(shape, seed):
    """(swiglu.2)-(swiglu.3) against finite differences in float64."""
    assert torch.autograd.gradcheck(mf.swiglu, (_randn(shape, seed, 3.0), _randn(shape, seed + 1)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_silu_swiglu_half_precision_compute_in_float32(dtype):
    """(silu.1), (swiglu.1) in half precision: computed in float32 and rounded once."""
    gate, up = (torch.randn(64) * 5).to(dtype), torch.randn(64).to(dtype)
    torch.testing.assert_close(mf.silu(gate), F.silu(gate.float()).to(dtype), atol=0, rtol=0)
    torch.testing.assert_close(mf.swiglu(gate, up), (F.silu(gate.float()) * up.float()).to(dtype), atol=0, rtol=0)


def test_swiglu_rejects_mismatched_inputs_by_name():
    with pytest.raises(ValueError, match="up: expected the shape of gate"):
        mf.swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(TypeError, match="up: expected dtype"):
        mf.swiglu(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="gate: expected a torch.Tensor"):
        mf.swiglu([1.0], torch.randn(1))
