"""Half-precision numerics of every attention backend, held to FlashAttention's rule (docs/math/attention.md,
(attn.13)): against a float64 reference, the error of each output and gradient (out, dQ, dK, dV) is at most
twice that of plain PyTorch at the same precision, plus a small floor. Plain PyTorch is the textbook
composition in that dtype (matmul, torch.softmax -- which accumulates in float32 -- matmul), as in
FlashAttention's own tests. Odd sizes, causal and padding masks, a fully masked row.

The readable path passes because softmax and its backward run in float32 and cast back (softmax.7); before, the
float16 query gradient failed this rule in 42 of the cases of the ported peer tests.
"""

import math
import os

import pytest
import torch

if torch.cuda.is_available() is False:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # flash runs on the CPU in the interpreter (before triton)

from minitx import functional as mf  # noqa: E402
from minitx.attention.front_door import attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the same cases run the real kernels
FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
# FlashAttention's multiple is 2. PyTorch's own SDPA on the CPU (its blocked flash kernel) exceeds 2x the plain
# composition's error in a few causal half-precision cases (up to ~1.5x the allowance): it is held to 3x, the
# backends minitx writes (math, flash) to 2x.
MULTIPLE = {"math": 2.0, "flash": 2.0, "sdpa": 3.0}
SIZES = [(1, 1, 1, 5, 8), (2, 1, 7, 17, 16), (1, 2, 33, 40, 24), (2, 2, 64, 33, 8),
         (1, 2, 255, 129, 64), (1, 1, 128, 511, 32)]  # (B, H, N, M, D)
MASKS = ["none", "causal", "padding", "padding_causal"]


def _inputs(b, h, n, m, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, d, generator=gen, dtype=torch.float64) for length in (n, m, m))
    # Values sharing a common part (as real ones do) make dP = dO V^T nearly constant along a row: (attn.10)'s
    # dP - rowsum(dP * P) then cancels, which a float16 backward gets wrong and a float32 one does not.
    v = v + 2.0 * torch.randn(b, h, 1, d, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    padding = torch.ones(b, m, dtype=torch.bool)
    padding[-1, m // 2 + 1:] = False  # the last sequence is padded
    return q, k, v, grad_out, padding


def _allowed(mask, padding, n, m):
    """Bool (B, 1, N, M) allowed-mask (True = may attend) for the textbook reference, or None."""
    allowed = torch.ones(padding.shape[0], 1, n, m, dtype=torch.bool)
    if "padding" in mask:
        allowed = allowed & padding[:, None, None, :]
    if "causal" in mask:
        allowed = allowed & mf.causal_mask(n, m)
    return None if mask == "none" else allowed


def _textbook(q, k, v, allowed):
    """Plain PyTorch in q's dtype: softmax(Q K^T / sqrt(D) + mask) V; a row with no allowed key gives zeros."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        probs = probs.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # NaN rows -> zeros
    return probs @ v


def _out_and_grads(fn, q, k, v, grad_out, dtype):
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(DEVICE, dtype))
    return [out.detach().double().cpu()] + [t.grad.double().cpu() for t in leaves]


def _backend_fn(backend, mask, padding):
    def fn(q, k, v):
        return attention(q, k, v, backend=backend, is_causal="causal" in mask,
                         key_padding_mask=padding.to(q.device) if "padding" in mask else None)
    return fn


def check_rule(backend, dtype, size, mask, seed=0):
    q, k, v, grad_out, padding = _inputs(*size, seed)
    allowed = _allowed(mask, padding, size[2], size[3])
    def textbook(*t):
        return _textbook(*t, None if allowed is None else allowed.to(t[0].device))
    ref = _out_and_grads(textbook, q, k, v, grad_out, torch.float64)
    plain = _out_and_grads(textbook, q, k, v, grad_out, dtype)
    ours = _out_and_grads(_backend_fn(backend, mask, padding), q, k, v, grad_out, dtype)
    for name, r, p, o in zip(("out", "dq", "dk", "dv"), ref, plain, ours):
        err, allowance = (o - r).abs().max().item(), MULTIPLE[backend] * (p - r).abs().max().item() + FLOOR[dtype]
        assert err <= allowance, f"{backend} {dtype} {size} {mask}: {name} error {err:.3g} > {allowance:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_half_precision_meets_flash_attentions_rule(backend, mask, size, dtype):
    """(attn.13) for the readable path (math) and PyTorch's SDPA: outputs and all three gradients."""
    check_rule(backend, dtype, size, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", SIZES[:3])
@pytest.mark.parametrize("mask", MASKS)
def test_flash_kernel_float16_meets_the_same_rule(mask, size, dtype):
    """(attn.13) for the Triton kernel: float16 under TRITON_INTERPRET=1 on a CPU (the interpreter has no bf16),
    float16 and bfloat16 on a GPU."""
    pytest.importorskip("triton")
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("the Triton interpreter has no bfloat16")
    check_rule("flash", dtype, size, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_functional_softmax_computes_in_float32_and_casts_back(dtype):
    """(softmax.7): the half-precision softmax equals the float32 one rounded once, forward and backward."""
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(4, 300, generator=gen) * 4, torch.randn(4, 300, generator=gen)
    xh = x.to(dtype).requires_grad_()
    y = mf.softmax(xh, -1)
    y.backward(g.to(dtype))
    assert y.dtype == dtype and xh.grad.dtype == dtype
    assert torch.equal(y, torch.softmax(xh.detach().float(), -1).to(dtype))
    # The backward: (softmax.3) in float32 from the saved (rounded) y, as PyTorch's, then one rounding.
    y32, g32 = y.detach().float(), g.to(dtype).float()
    want = (y32 * (g32 - (g32 * y32).sum(-1, keepdim=True))).to(dtype)
    assert torch.equal(xh.grad, want)


def test_half_layer_norm_normalises_in_float32():
    """A float16 LayerNorm equals the float32 one rounded once (its statistics are not taken in float16)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 64, generator=gen) * 30 + 200).half()
    w, b = torch.ones(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float16)
    got = mf.layer_norm(x, w, b, 1e-5)
    want = torch.nn.functional.layer_norm(x.float(), (64,), eps=1e-5).half()
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
