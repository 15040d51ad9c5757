"""minitx.functional: every hand-written backward against autograd through an unfused reference (plain torch
ops), against PyTorch's own op, and against `torch.autograd.gradcheck` in float64, on Hypothesis-drawn inputs.

Labels such as (attn.10) refer to docs/math/*.md.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx import functional as mf

F64 = dict(dtype=torch.float64)


def _randn(shape, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * scale).requires_grad_(True)


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def check_close(a, b, atol=1e-10, rtol=1e-7):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------- references
# Written with plain torch ops only; autograd differentiates them, so they check our hand-written backwards.

def ref_softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True).detach())
    return e / e.sum(dim=dim, keepdim=True)


def ref_layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def ref_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_attention(q, k, v, allowed=None, float_mask=None, scale=None, keep=None, p=0.0):
    """Attention by the book; `allowed` is a bool mask (already combined with causal). Rows with no allowed key
    are given finite scores before the softmax and zeroed after it (the NaN-free `where` trick)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if float_mask is not None:
        s = s + float_mask
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    row_ok = (s > float("-inf")).any(-1, keepdim=True)
    probs = torch.where(row_ok, ref_softmax(torch.where(row_ok, s, torch.zeros_like(s))), torch.zeros_like(s))
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v, probs


# ------------------------------------------------------------------------------------------------ softmax

@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 1.0, 30.0]), data=st.data())
def test_softmax_matches_reference_and_torch(shape, seed, scale, data):
    """(softmax.1) forward and (softmax.3) backward == autograd through the reference == F.softmax."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = _randn(shape, seed, scale)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), **F64)
    ours, ref, torch_ = mf.softmax(x, dim), ref_softmax(x, dim), F.softmax(x, dim)
    check_close(ours, ref)
    check_close(ours, torch_)
    (g_ours,), (g_ref,), (g_torch,) = _grads(ours, x, g), _grads(ref, x, g), _grads(torch_, x, g)
    check_close(g_ours, g_ref)
    check_close(g_ours, g_torch)


@settings(max_examples=10)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_softmax_gradcheck(shape, seed):
    """(softmax.3) against finite differences in float64."""
    assert torch.autograd.gradcheck(lambda x: mf.softmax(x, -1), (_randn(shape, seed),))


def test_softmax_jacobian_is_diag_minus_outer():
    """(softmax.2): the full Jacobian of one row is diag(y) - y y^T."""
    x = _randn((5,), 0)
    y = mf.softmax(x).detach()
    jac = torch.autograd.functional.jacobian(mf.softmax, x)
    check_close(jac, torch.diag(y) - torch.outer(y, y))


@given(seed=st.integers(0, 2**16), n=st.integers(2, 8))
def test_softmax_extreme_logits_float32(seed, n):
    """(softmax.1): subtracting the row max keeps +-1e4 logits finite in float32 and equal to float64."""
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randint(-1, 2, (3, n), generator=g).double() * 1e4 + torch.randn(3, n, generator=g, **F64)
    x = x64.float().requires_grad_(True)
    y = mf.softmax(x)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y) + torch.arange(n).float())
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    check_close(y.double(), F.softmax(x.detach().double(), -1), atol=1e-6, rtol=1e-5)  # same (rounded) input
    check_close(y.sum(-1), torch.ones(3), atol=1e-6, rtol=0)


def test_softmax_all_neg_inf_row_gives_zeros_and_zero_grad():
    """(softmax.4): a row with nothing allowed gives zeros and zero gradients, where F.softmax gives NaN."""
    x = torch.tensor([[0.5, float("-inf"), 1.0], [float("-inf")] * 3], **F64, requires_grad=True)
    y = mf.softmax(x)
    (dx,) = torch.autograd.grad(y, x, torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], **F64))
    assert torch.equal(y[1], torch.zeros(3, **F64)) and torch.equal(dx[1], torch.zeros(3, **F64))
    check_close(y[0], F.softmax(x[0].detach(), -1))
    assert torch.isnan(F.softmax(x[1].detach(), -1)).all()  # the reference behaviour we deliberately differ from


# --------------------------------------------------------------------------------------------- layer norm

@st.composite
def layer_norm_case(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    c = shape[-1]
    param_shapes = st.sampled_from([None, (c,), (1, c), (1,) * (len(shape) - 1) + (c,), (1,)])
    return (shape, draw(param_shapes), draw(param_shapes), draw(st.sampled_from([1e-5, 1e-12, 0.1])),
            draw(st.integers(0, 2**16)), draw(st.sampled_from([0.01, 1.0, 100.0])))


@given(case=layer_norm_case())
def test_layer_norm_matches_reference_and_torch(case):
    """(ln.1)-(ln.4) forward, (ln.5)-(ln.8) backward incl. broadcast weight/bias == reference == F.layer_norm."""
    shape, w_shape, b_shape, eps, seed, scale = case
    if len(shape) == 1 and w_shape is not None and len(w_shape) == 2:
        w_shape = (shape[-1],)  # a (1, C) weight would enlarge a 1-d x; that is rejected (tested below)
    if len(shape) == 1 and b_shape is not None and len(b_shape) == 2:
        b_shape = (shape[-1],)
    x = _randn(shape, seed, scale) + 3.0  # an offset, so the mean matters
    w = None if w_shape is None else _randn(w_shape, seed + 1)
    b = None if b_shape is None else _randn(b_shape, seed + 2)
    inputs = [t for t in (x, w, b) if t is not None]
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 3), **F64)
    ours, ref = mf.layer_norm(x, w, b, eps), ref_layer_norm(x, w, b, eps)
    check_close(ours, ref)
    g_ours = _grads(ours, inputs, g)
    for a, r in zip(g_ours, _grads(ref, inputs, g)):
        check_close(a, r, atol=1e-8, rtol=1e-6)
    c = shape[-1]
    if (w is None or w.numel() == c) and (b is None or b.numel() == c):  # shapes F.layer_norm accepts
        torch_ = F.layer_norm(x, (c,), None if w is None else w.reshape(c), None if b is None else b.reshape(c),
                              eps)
        check_close(ours, torch_)
        for a, t in zip(g_ours, _grads(torch_, inputs, g)):
            check_close(a, t, atol=1e-8, rtol=1e-6)


@settings(max_examples=10)
@given(case=layer_norm_case())
def test_layer_norm_gradcheck(case):
    """(ln.6)-(ln.8) against finite differences in float64 (eps = 0.1 keeps the problem well conditioned)."""
    shape, _, _, _, seed, _ = case
    c = shape[-1]
    x, w, b = _randn(shape, seed), _randn((c,), seed + 1), _randn((1,) * (len(shape) - 1) + (c,), seed + 2)
    assert torch.autograd.gradcheck(lambda x, w, b: mf.layer_norm(x, w, b, eps=0.1), (x, w, b))


def test_layer_norm_uses_biased_variance_and_eps_inside_root():
    """(ln.2)-(ln.3): with eps = 0 each row has mean 0 and mean square exactly 1 (biased variance, not C - 1);
    with eps > 0 the mean square is var / (var + eps)."""
    x = torch.tensor([[1.0, 2.0, 4.0, 7.0]], **F64)
    y = mf.layer_norm(x, None, None, eps=0.0)
    check_close(y.mean(-1), torch.zeros(1, **F64))
    check_close((y ** 2).mean(-1), torch.ones(1, **F64))
    var = torch.tensor(5.25, **F64)  # by hand: mean 3.5, squared deviations 6.25 + 2.25 + 0.25 + 12.25 = 21, / 4
    y = mf.layer_norm(x, None, None, eps=0.75)
    check_close((y ** 2).mean(-1), (var / (var + 0.75)).reshape(1))


@pytest.mark.parametrize("shape", [(4,), (1, 4), (3, 1), (1, 1, 4), (2, 1, 4), (1,)])
def test_sum_to_shape_undoes_broadcasting(shape):
    """(ln.7)-(ln.8), (attn.12): a broadcast parameter's gradient is the sum over every added or stretched dim.
    (Autograd would also fix up a gradient of the wrong shape, so the end-to-end tests cannot see this helper.)"""
    grad = torch.arange(2 * 3 * 4, **F64).reshape(2, 3, 4)
    p = torch.zeros(shape, **F64, requires_grad=True)
    (expected,) = torch.autograd.grad((p * 1).expand(2, 3, 4), p, grad)  # autograd's own reduction
    reduced = mf._sum_to_shape(grad, torch.Size(shape))
    assert reduced.shape == torch.Size(shape)
    check_close(reduced, expected)
    check_close(reduced.sum(), grad.sum())  # nothing lost, nothing counted twice


# --------------------------------------------------------------------------------------------------- gelu

@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.5, 3.0, 20.0]))
def test_gelu_matches_reference_and_torch(shape, seed, scale):
    """(gelu.1) forward and (gelu.2) derivative == reference == F.gelu (exact erf form)."""
    x = _randn(shape, seed, scale)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), **F64)
    ours, ref, torch_ = mf.gelu(x), ref_gelu(x), F.gelu(x, approximate="none")
    check_close(ours, ref)
    check_close(ours, torch_)
    (a,), (r,), (t,) = _grads(ours, x, g), _grads(ref, x, g), _grads(torch_, x, g)
    check_close(a, r)
    check_close(a, t)


def test_gelu_gradcheck_and_known_values():
    """(gelu.1)-(gelu.2): gradcheck, and GELU(0) = 0, GELU'(0) = 1/2, GELU(x) -> x for large x."""
    assert torch.autograd.gradcheck(mf.gelu, (_randn((4, 5), 0, 3.0),))
    x = torch.tensor([0.0, 30.0, -30.0], **F64, requires_grad=True)
    y = mf.gelu(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    check_close(y.detach(), torch.tensor([0.0, 30.0, 0.0], **F64))
    check_close(dy, torch.tensor([0.5, 1.0, 0.0], **F64))


def test_gelu_is_the_exact_form_not_the_tanh_approximation():
    """(gelu.3), written out here, is what F.gelu(approximate="tanh") computes; minitx's gelu (gelu.1) differs
    from it by up to about 5e-4, as the page says, so it really is the exact erf form."""
    x = torch.linspace(-8.0, 8.0, 16001, **F64)
    tanh_form = x / 2 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    check_close(tanh_form, F.gelu(x, approximate="tanh"))
    gap = (mf.gelu(x) - tanh_form).abs().max().item()
    assert 4e-4 < gap < 5e-4


# -------------------------------------------------------------------------------------------- causal mask

@given(n=st.integers(0, 7), m=st.integers(0, 7))
def test_causal_mask_is_top_left(n, m):
    """(attn.3): key j allowed for query i iff j <= i, for any N and M (counted entry by entry)."""
    mask = mf.causal_mask(n, m)
    assert mask.dtype == torch.bool and mask.shape == (n, m)
    for i in range(n):
        for j in range(m):
            assert bool(mask[i, j]) == (j <= i)


@given(n=st.integers(1, 7), m=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_causal_mask_agrees_with_torch_is_causal(n, m, seed):
    """(attn.3): our mask as attn_mask == torch SDPA's own is_causal=True, also when N != M."""
    q, k, v = _randn((2, n, 3), seed), _randn((2, m, 3), seed + 1), _randn((2, m, 4), seed + 2)
    with torch.no_grad():
        ours = mf.scaled_dot_product_attention(q, k, v, attn_mask=mf.causal_mask(n, m))
        ours_flag = mf.scaled_dot_product_attention(q, k, v, is_causal=True)
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    check_close(ours, ours_flag, atol=0, rtol=0)
    rows = slice(0, n)  # every row i has key 0 allowed, so no row is fully masked and torch is NaN-free
    check_close(ours[:, rows], theirs[:, rows])


# -------------------------------------------------------------------------------------------- attention

@st.composite
def attention_case(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, dv = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["none", "bool", "bool_dead_row", "padding", "float", "float_neginf"]))
    full = batch + (n, m)
    # A mask shape that broadcasts to (..., N, M): some dims kept, some set to 1, maybe fewer leading dims.
    keep_dims = draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full)))
    mask_shape = tuple(s if kd else 1 for s, kd in zip(full, keep_dims))
    if kind == "padding":
        mask_shape = tuple(1 for _ in batch[:-1]) + batch[-1:] + (1, m)  # (B, 1, 1, M)-style key padding
    mask_shape = mask_shape[draw(st.integers(0, max(0, len(mask_shape) - 2))):]
    return dict(batch=batch, n=n, m=m, d=d, dv=dv, kind=kind, mask_shape=mask_shape,
                is_causal=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(0.05, 3.0))),
                mag=draw(st.sampled_from([0.3, 1.0, 4.0])), seed=draw(st.integers(0, 2**16)))


def _make_attention_inputs(c):
    """q, k, v and the mask for a drawn case, plus the bool mask 'allowed' and float mask the reference uses."""
    s = c["seed"]
    q = _randn(c["batch"] + (c["n"], c["d"]), s, c["mag"])
    k = _randn(c["batch"] + (c["m"], c["d"]), s + 1, c["mag"])
    v = _randn(c["batch"] + (c["m"], c["dv"]), s + 2)
    g = torch.Generator().manual_seed(s + 3)
    shape, kind = c["mask_shape"], c["kind"]
    mask, allowed, float_mask = None, None, None
    if kind in ("bool", "bool_dead_row", "padding"):
        allowed = torch.rand(shape, generator=g) < 0.7
        if kind == "bool_dead_row" and shape[-2] > 1:
            allowed[..., 0, :] = False  # query row 0 (or all rows, if broadcast) may attend to nothing
        mask = allowed
    elif kind in ("float", "float_neginf"):
        float_mask = torch.randn(shape, generator=g, **F64)
        if kind == "float_neginf":
            float_mask = float_mask.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))
            float_mask[..., -1, :] = float("-inf")  # the last query row (or every row) sees -inf only
        float_mask.requires_grad_(True)
        mask = float_mask
    if c["is_causal"]:
        causal = mf.causal_mask(c["n"], c["m"])
        allowed = causal if allowed is None else allowed & causal
    return q, k, v, mask, allowed, float_mask


@given(c=attention_case())
def test_attention_matches_reference_and_torch(c):
    """(attn.1)-(attn.4), (attn.6) forward and (attn.7)-(attn.12) backward == autograd through the reference;
    == F.scaled_dot_product_attention (same masks, causal with N != M) on rows that have an allowed key; rows
    with none give our documented zeros (softmax.4) and zero gradients."""
    q, k, v, mask, allowed, float_mask = _make_attention_inputs(c)
    inputs = [q, k, v] + ([float_mask] if float_mask is not None else [])
    out = mf.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=c["is_causal"], scale=c["scale"])
    ref, probs = ref_attention(q, k, v, allowed, float_mask, c["scale"])
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(c["seed"] + 4), **F64)
    check_close(out, ref)
    grads = _grads(out, inputs, g)
    for a, r in zip(grads, _grads(ref, inputs, g)):
        assert torch.isfinite(a).all()
        check_close(a, r, atol=1e-9, rtol=1e-6)

    dead = (probs.sum(-1) == 0).expand(out.shape[:-1])  # (..., N): query rows with no allowed key
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))
    assert torch.equal(grads[0][dead], torch.zeros_like(grads[0][dead]))  # q and out share their batch dims

    # PyTorch's op with the same mask: causal folded into a bool mask, or into the float mask as -inf.
    t_mask = None
    if float_mask is not None:
        t_mask = float_mask if not c["is_causal"] else float_mask.masked_fill(~mf.causal_mask(c["n"], c["m"]),
                                                                              float("-inf"))
    elif allowed is not None:
        t_mask = allowed
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=t_mask, scale=c["scale"])
    check_close(out[~dead], theirs[~dead])
    if not dead.any():
        for a, t in zip(grads, _grads(theirs, inputs, g)):
            check_close(a, t, atol=1e-9, rtol=1e-6)


@settings(max_examples=10)
@given(c=attention_case())
def test_attention_gradcheck(c):
    """(attn.7)-(attn.12) against finite differences in float64, masks (and fully masked rows) included."""
    q, k, v, mask, _, float_mask = _make_attention_inputs(c)
    inputs = (q, k, v) if float_mask is None else (q, k, v, float_mask)

    def fn(q, k, v, *m):
        return mf.scaled_dot_product_attention(q, k, v, attn_mask=m[0] if m else mask, is_causal=c["is_causal"],
                                               scale=c["scale"])
    # Finite differences cannot step through -inf mask entries, so those are checked above, not here.
    if float_mask is not None and torch.isinf(float_mask).any():
        inputs = (q, k, v)
    assert torch.autograd.gradcheck(fn, inputs)


@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), m=st.integers(1, 6))
def test_attention_extreme_logits_float32(seed, n, m):
    """(attn.4) via (softmax.1): scores of +-1e4 in float32 give finite outputs and gradients equal to float64."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randint(-1, 2, (2, n, 1), generator=g) * 100.0).requires_grad_(True)
    k = (torch.randint(-1, 2, (2, m, 1), generator=g) * 100.0 + torch.rand(2, m, 1, generator=g)).requires_grad_(True)
    v = torch.randn(2, m, 3, generator=g).requires_grad_(True)
    out = mf.scaled_dot_product_attention(q, k, v, scale=1.0)   # |scores| up to ~1e4
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in grads)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, _ = ref_attention(q64, k64, v64, scale=1.0)
    check_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    for a, r in zip(grads, torch.autograd.grad(ref.sum(), (q64, k64, v64))):
        check_close(a.double(), r, atol=1e-2, rtol=1e-3)


def test_attention_broadcasts_batch_dims_of_q_k_v():
    """(attn.11)/(attn.7): gradients of inputs that were broadcast are summed back to their own shapes."""
    q, k, v = _randn((2, 3, 4, 5), 0), _randn((1, 3, 6, 5), 1), _randn((3, 6, 2), 2)
    out = mf.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref, _ = ref_attention(q, k, v, mf.causal_mask(4, 6))
    check_close(out, ref)
    g = torch.randn(out.shape, **F64)
    for a, r, t in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g), (q, k, v)):
        assert a.shape == t.shape
        check_close(a, r)
    assert torch.autograd.gradcheck(lambda q, k, v: mf.scaled_dot_product_attention(q, k, v), (q, k, v))


def test_attention_returned_weights_rows_sum_to_one_and_carry_gradient():
    """(attn.4), (attn.6): out == weights @ v, rows sum to 1; a loss on the weights back-propagates (attn.8)."""
    q, k, v = _randn((2, 4, 3), 0), _randn((2, 5, 3), 1), _randn((2, 5, 2), 2)
    out, w = mf.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    ref_out, ref_w = ref_attention(q, k, v, mf.causal_mask(4, 5))
    check_close(w.sum(-1), torch.ones(2, 4, **F64))
    check_close(out, w @ v)
    loss, ref_loss = (out ** 2).sum() + (w ** 3).sum(), (ref_out ** 2).sum() + (ref_w ** 3).sum()
    for a, r in zip(torch.autograd.grad(loss, (q, k, v)), torch.autograd.grad(ref_loss, (q, k, v))):
        check_close(a, r)
    w_only = mf.scaled_dot_product_attention(q, k, v, return_weights=True)[1]
    grads = torch.autograd.grad(w_only[..., 0].sum(), (q, k, v), allow_unused=True)
    check_close(grads[2], torch.zeros_like(v))  # v does not influence the weights
    assert grads[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- dropout

def _dropout_run(seed, p=0.3, shape=(2, 3, 8, 8), **kw):
    q, k, v = _randn(shape, 0), _randn(shape, 1), _randn(shape, 2)
    gen = torch.Generator().manual_seed(seed)
    out, w = mf.scaled_dot_product_attention(q, k, v, dropout_p=p, generator=gen, return_weights=True, **kw)
    return q, k, v, out, w


def test_dropout_same_seed_same_mask_other_seed_other_mask():
    """(attn.5): the generator makes dropout reproducible; a different seed drops different weights."""
    *_, out_a, w_a = _dropout_run(7)
    *_, out_b, w_b = _dropout_run(7)
    *_, _, w_c = _dropout_run(8)
    assert torch.equal(w_a, w_b) and torch.equal(out_a, out_b)
    assert not torch.equal(w_a == 0, w_c == 0)


def test_dropout_keep_rate_and_inverted_scaling():
    """(attn.5): each weight is kept with probability 1 - p (binomial, 5 sigma) and kept weights are P / (1 - p),
    so the weights are unbiased: their mean equals the undropped mean 1/M."""
    p, shape = 0.3, (4, 4, 32, 32)
    q, k, v, _, w = _dropout_run(3, p=p, shape=shape)
    _, probs = ref_attention(q, k, v)
    kept = w != 0
    n = kept.numel()
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    check_close(w[kept], (probs / (1 - p))[kept])
    assert abs(w.mean().item() - 1 / 32) < 5 * (probs / (1 - p)).std().item() * math.sqrt(p / (1 - p) / n) + 1e-3


def test_dropout_backward_reuses_forward_mask():
    """(attn.9): gradients equal autograd through the reference with the forward's own keep mask; gradcheck
    (with a freshly seeded generator per call, so every evaluation draws the same mask)."""
    p = 0.4
    q, k, v, out, w = _dropout_run(11, p=p, shape=(2, 5, 4))
    keep = w != 0  # every softmax weight is > 0 here, so zeros are exactly the dropped entries
    ref, _ = ref_attention(q, k, v, keep=keep, p=p)
    check_close(out, ref)
    g = torch.randn(out.shape, **F64)
    for a, r in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)):
        check_close(a, r)

    def fn(q, k, v):
        return mf.scaled_dot_product_attention(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(11))
    assert torch.autograd.gradcheck(fn, (q, k, v))


# ----------------------------------------------------------------------------------------------- errors

_Q, _K, _V = torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), torch.zeros(2, 5, 6)
SDPA = mf.scaled_dot_product_attention


@pytest.mark.parametrize("call, exc, words", [
    (lambda: SDPA(_Q.numpy(), _K, _V), TypeError, "q"),
    (lambda: SDPA(_Q.long(), _K, _V), TypeError, "q"),
    (lambda: SDPA(_Q, _K.double(), _V), TypeError, "k"),
    (lambda: SDPA(_Q, _K, _V.double()), TypeError, "v"),
    (lambda: SDPA(_Q, _K[..., :3], _V), ValueError, "k"),
    (lambda: SDPA(_Q, _K, _V[:, :4]), ValueError, "v"),
    (lambda: SDPA(_Q[0, 0], _K, _V), ValueError, "q"),
    (lambda: SDPA(_Q, torch.zeros(3, 5, 4), torch.zeros(3, 5, 6)), ValueError, "batch"),
    (lambda: SDPA(_Q, _K, _V, attn_mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, "attn_mask"),
    (lambda: SDPA(_Q, _K, _V, attn_mask=torch.ones(3, 2, 3, 5, dtype=torch.bool)), ValueError, "attn_mask"),
    (lambda: SDPA(_Q, _K, _V, attn_mask=torch.ones(3, 5, dtype=torch.int64)), TypeError, "attn_mask"),
    (lambda: SDPA(_Q, _K, _V, attn_mask=[[True]]), TypeError, "attn_mask"),
    (lambda: SDPA(_Q, _K, _V, dropout_p=1.0), ValueError, "dropout_p"),
    (lambda: SDPA(_Q, _K, _V, dropout_p=-0.1), ValueError, "dropout_p"),
    (lambda: SDPA(_Q, _K, _V, scale=float("nan")), ValueError, "scale"),
    (lambda: SDPA(_Q, _K, _V, is_causal=1), TypeError, "is_causal"),
    (lambda: SDPA(_Q, _K, _V, generator=0), TypeError, "generator"),
    (lambda: mf.softmax(torch.zeros(3, 4), dim=2), ValueError, "dim"),
    (lambda: mf.softmax(torch.arange(3), dim=0), TypeError, "x"),
    (lambda: mf.layer_norm(torch.zeros(2, 4), torch.ones(3), None), ValueError, "weight"),
    (lambda: mf.layer_norm(torch.zeros(4), torch.ones(1, 4), None), ValueError, "weight"),
    (lambda: mf.layer_norm(torch.zeros(2, 4), None, torch.ones(4, dtype=torch.float64)), TypeError, "bias"),
    (lambda: mf.layer_norm(torch.zeros(2, 4), None, None, eps=-1.0), ValueError, "eps"),
    (lambda: mf.gelu(torch.arange(3)), TypeError, "x"),
    (lambda: mf.causal_mask(-1, 3), ValueError, "n"),
    (lambda: mf.causal_mask(2, 2.5), ValueError, "m"),
])
def test_bad_input_raises_naming_the_argument(call, exc, words):
    with pytest.raises(exc, match=words):
        call()



@pytest.mark.parametrize("kind", ["bool", "float_neginf", "causal_and_padding"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(kind):
    """(softmax.4): a query row with no allowed key gives zeros and zero dQ, and adds nothing to dK, dV."""
    q, k, v = _randn((2, 4, 3), 0), _randn((2, 5, 3), 1), _randn((2, 5, 2), 2)
    allowed = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.6
    allowed[:, :, 0] = True
    allowed[0, 2] = False                                            # batch 0, query 2: nothing allowed
    mask, is_causal = allowed, False
    if kind == "float_neginf":
        mask = torch.zeros(2, 4, 5, **F64).masked_fill(~allowed, float("-inf"))
    if kind == "causal_and_padding":                                 # key 0 padded: query 0 has no key left
        mask, is_causal = torch.tensor([False, True, True, True, True]), True
        allowed = mask & mf.causal_mask(4, 5)
    out = mf.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    dead = ~allowed.any(-1).expand(2, 4)
    assert dead.sum() >= 1
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v), retain_graph=True)
    assert torch.equal(out[dead], torch.zeros_like(out[dead])) and torch.equal(dq[dead], torch.zeros_like(dq[dead]))
    # dK, dV get nothing from dead rows: the same gradients come out when those rows' upstream gradient is 0.
    live = torch.autograd.grad((out * (~dead)[..., None]).sum(), (k, v))
    check_close(dk, live[0])
    check_close(dv, live[1])
    ref, _ = ref_attention(q, k, v, allowed)
    check_close(out, ref)


# -------------------------------------------------------------------------- fast forms = textbook forms
# The library runs fast forms (fewer passes, in place on buffers it owns); the textbook forms are kept beside
# them in the modules, exactly as printed in docs/math, and these tests prove the two equal.

from minitx.functional._gelu import _gelu_grad_textbook, _gelu_textbook  # noqa: E402
from minitx.functional._layer_norm import _layer_norm_backward_textbook  # noqa: E402
from minitx.functional._softmax import (_softmax_backward, _softmax_backward_textbook,  # noqa: E402
                                        _softmax_forward, _softmax_forward_textbook)


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), data=st.data())
def test_softmax_fast_forms_equal_the_textbook_ones(shape, seed, scale, data):
    """(softmax.5) = (softmax.1) and (softmax.6) = (softmax.3), -inf rows (softmax.4) included, in float64;
    the in-place backward leaves the same result as the one that allocates."""
    x = _randn(shape, seed, scale).detach()
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    if data.draw(st.booleans()):
        x.select(dim, 0).fill_(float("-inf"))  # some slices partly or fully -inf
    y = _softmax_forward(x, dim)
    check_close(y, _softmax_forward_textbook(x, dim), atol=1e-15, rtol=1e-12)
    g = _randn(shape, seed + 1).detach()
    want = _softmax_backward_textbook(y, g, dim)
    check_close(_softmax_backward(y, g, dim), want, atol=1e-15, rtol=1e-12)
    check_close(_softmax_backward(y, g.clone(), dim, inplace=True), want, atol=1e-15, rtol=1e-12)


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 10.0]))
def test_gelu_fast_forms_equal_the_textbook_ones(shape, seed, scale):
    """(gelu.4) = (gelu.1): the forward; (gelu.5) = (gelu.2): the derivative saved by the forward, in float64."""
    x = _randn(shape, seed, scale)
    y = mf.gelu(x)
    check_close(y, _gelu_textbook(x.detach()), atol=1e-15, rtol=1e-12)
    g = _randn(shape, seed + 1).detach()
    (grad,) = torch.autograd.grad(y, x, g)
    check_close(grad, g * _gelu_grad_textbook(x.detach()), atol=1e-15, rtol=1e-12)


def test_gelu_keeps_nothing_for_the_backward_without_grad():
    """No gradient needed (no_grad, or an input that does not require it): the forward skips (gelu.5)."""
    x = torch.randn(5, requires_grad=True)
    with torch.no_grad():
        y = mf.gelu(x)
    # the same numbers as the path that keeps (gelu.5) (x 1/2 is exact), and (gelu.1) within float32 rounding
    assert y.grad_fn is None and torch.equal(y, mf.gelu(x).detach())
    check_close(y, _gelu_textbook(x.detach()), atol=1e-6, rtol=1e-6)
    y = mf.gelu(torch.randn(5))
    assert y.grad_fn is None and not y.requires_grad


@pytest.mark.parametrize("weight_shape", [None, (7,), (1, 7), (1,)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_fast_backward_equals_the_textbook_one(weight_shape, with_bias):
    """(ln.9) = (ln.5)-(ln.8): the row means as matrix-vector products with w (a (C,) weight), or elementwise
    for other shapes, in float64; plus gradcheck through the fast form."""
    x = _randn((3, 4, 7), 0, 3.0)
    w = None if weight_shape is None else _randn(weight_shape, 1)
    b = _randn((7,), 2) if with_bias else None
    g = _randn((3, 4, 7), 3).detach()
    y = mf.layer_norm(x, w, b, 1e-5)
    grads = _grads(y, [t for t in (x, w, b) if t is not None], g)
    mean = x.detach().mean(-1, keepdim=True)
    rstd = ((x.detach() - mean) ** 2).mean(-1, keepdim=True).add(1e-5).rsqrt()
    x_hat = (x.detach() - mean) * rstd
    grad_x, g_x_hat = _layer_norm_backward_textbook(g, x_hat, rstd, None if w is None else w.detach())
    check_close(grads[0], grad_x, atol=1e-12, rtol=1e-10)
    if w is not None:
        check_close(grads[1], mf._sum_to_shape(g_x_hat, w.shape), atol=1e-12, rtol=1e-10)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*t):
        it = iter(t[1:])
        return mf.layer_norm(t[0], next(it) if w is not None else None, next(it) if b is not None else None, 1e-5)
    assert torch.autograd.gradcheck(fn, inputs)


# --- Inference runs the forward bodies alone (no autograd.Function), with the same numbers -------------------

def _inference_cases():
    x = torch.randn(3, 5, 8)
    w, b = torch.randn(8), torch.randn(8)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    allowed = torch.rand(2, 1, 4, 6) > 0.3
    return {
        "layer_norm (ln.1)-(ln.4)": (lambda *t: mf.layer_norm(*t, eps=1e-5), (x, w, b), True),
        "layer_norm without affine": (lambda t: mf.layer_norm(t, None, None), (x,), True),
        "rms_norm (rmsnorm.1)": (lambda *t: mf.rms_norm(*t, eps=1e-6), (x, w), True),
        "softmax (softmax.5)": (lambda t: mf.softmax(t, -1), (x,), True),
        "gelu (gelu.4), (gelu.1)": (mf.gelu, (x,), True),
        "silu (silu.1)": (mf.silu, (x,), True),
        "swiglu (swiglu.1)": (mf.swiglu, (x, x.flip(-1)), True),
        # the Function copies strided q, k, v before its matmuls, the inference path does not: equal to rounding
        "attention (attn.1)-(attn.6)": (lambda *t: mf.scaled_dot_product_attention(*t, attn_mask=allowed),
                                        (q, k, v), False),
    }


@pytest.mark.parametrize("name", list(_inference_cases()))
def test_inference_skips_the_function_and_computes_the_same_forward(name):
    """Under torch.no_grad() (and for inputs that need no gradient) each op runs its forward body directly:
    no grad_fn, and the numbers of the path that keeps what the backward needs."""
    fn, inputs, bitwise = _inference_cases()[name]
    with_grad = fn(*[t.clone().requires_grad_() for t in inputs])
    assert with_grad.grad_fn is not None
    with torch.no_grad():
        inferred = fn(*inputs)
    plain = fn(*inputs)  # grad mode on, but no input requires a gradient
    assert inferred.grad_fn is None and plain.grad_fn is None and not plain.requires_grad
    if bitwise:
        assert torch.equal(inferred, with_grad.detach()) and torch.equal(plain, inferred)
    else:
        check_close(inferred, with_grad.detach(), atol=1e-6, rtol=1e-6)
        assert torch.equal(plain, inferred)


def test_inference_softmax_keeps_the_zero_row_rule():
    """(softmax.4) on the inference path: a fully masked row (all -inf) gives zeros, not NaN, and a row with one
    allowed entry gives exactly one; the clamps leave ordinary rows bitwise unchanged."""
    x = torch.randn(4, 6)
    x[1] = float("-inf")
    x[2, 1:] = float("-inf")
    with torch.no_grad():
        y = mf.softmax(x, -1)
    assert torch.equal(y[1], torch.zeros(6)) and y[2, 0] == 1.0 and torch.equal(y[2, 1:], torch.zeros(5))
    check_close(y[[0, 3]], F.softmax(x[[0, 3]], -1), atol=1e-7, rtol=1e-6)


def test_layer_norm_statistics_two_passes_beat_var_mean():
    """Why (ln.2) is computed as ||x - mu||^2 after the mean and not by torch.var_mean: the two passes give the
    same variance and, on a CPU, are not slower (var_mean is a Welford reduction; measured 5-40x slower here)."""
    import time
    torch.set_num_threads(1)
    x = torch.randn(512, 256)
    mean = x.sum(-1, keepdim=True) / 256
    var_two_pass = torch.linalg.vector_norm(x - mean, dim=-1, keepdim=True).square() / 256
    var, mu = torch.var_mean(x, -1, correction=0, keepdim=True)
    check_close(var_two_pass, var, atol=1e-5, rtol=1e-5)

    def clock(fn, n=20):
        start = time.thread_time()
        for _ in range(n):
            fn()
        return time.thread_time() - start
    clock(lambda: torch.var_mean(x, -1, correction=0, keepdim=True), 3)
    two = min(clock(lambda: torch.linalg.vector_norm(x - x.sum(-1, keepdim=True) / 256, dim=-1)) for _ in range(3))
    one = min(clock(lambda: torch.var_mean(x, -1, correction=0, keepdim=True)) for _ in range(3))
    assert two < 1.5 * one, f"two passes {two:.4f} s vs var_mean {one:.4f} s"


def test_one_number_tensors_are_made_once_and_outside_inference_mode():
    """minitx.functional._scalars: the same 0-dim tensor for the same (value, dtype, device), usable in a
    training step even when first asked for under torch.inference_mode()."""
    from minitx.functional._scalars import same_dtype, scalar
    with torch.inference_mode():
        s = scalar(0.123, torch.float32, torch.device("cpu"))
    assert s is scalar(0.123, torch.float32, torch.device("cpu")) and not s.is_inference()
    assert s.dim() == 0 and s.item() == pytest.approx(0.123)
    x = torch.randn(3, requires_grad=True)
    (x * s).sum().backward()
    check_close(x.grad, torch.full((3,), 0.123), atol=1e-7, rtol=0)
    assert same_dtype(x, torch.float32) is x and same_dtype(x, torch.float64).dtype == torch.float64
