"""Softmax along one dim with a hand-written backward (docs/math/softmax.md, labels (softmax.*)).

Each op is written once in its textbook form (`_softmax_forward_textbook`, `_softmax_backward_textbook`:
(softmax.1), (softmax.3) as printed) and once in the fast form the library runs (one buffer, updated in
place: (softmax.5), (softmax.6)); tests/test_functional.py proves the two equal, values and gradients.
In float16/bfloat16 both accumulate and normalise in float32 and cast back, as PyTorch does (softmax.7).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._bodies import body, needs_grad, run
from minitx.functional._checks import _check_float_tensor
from minitx.functional._scalars import same_dtype

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """(softmax.7): half precision is computed in float32; every other float dtype in itself."""
    return torch.float32 if dtype in _HALF else dtype


def _softmax_forward_textbook(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(softmax.1) as printed, with the max subtracted; (softmax.4): an all -inf row gives zeros, not NaN."""
    row_max = x.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x - row_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _softmax_backward_textbook(y: torch.Tensor, grad_y: torch.Tensor, dim: int) -> torch.Tensor:
    """(softmax.3) as printed: y * (g - <g, y>), without forming the Jacobian (softmax.2)."""
    return y * (grad_y - (grad_y * y).sum(dim=dim, keepdim=True))


@body("softmax.forward")
def _softmax_forward(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(softmax.5) = (softmax.1): e = exp(x - max) in one buffer, then e /= sum(e) in place; (softmax.7).

    (softmax.4) costs one clamp per row statistic: an all -inf row's max is raised to the dtype's lowest
    finite number (a finite max is unchanged), so it shifts to -inf and exponentiates to 0; and a sum is
    clamped to >= 1, which leaves every other row alone (its max term is exp(0) = 1) and divides an empty row's
    zeros by 1."""
    dtype = _compute_dtype(x.dtype)
    xc = same_dtype(x, dtype)
    row_max = xc.amax(dim=dim, keepdim=True).clamp_(min=torch.finfo(dtype).min)   # (softmax.4)
    e = torch.sub(xc, row_max).exp_()                          # the one buffer this op allocates
    total = e.sum(dim=dim, keepdim=True).clamp_(min=1.0)       # (softmax.4): 0 / 1 = 0, not NaN
    return same_dtype(e.div_(total), x.dtype)


@body("softmax.backward")
def _softmax_backward(y: torch.Tensor, grad_y: torch.Tensor, dim: int, inplace: bool = False) -> torch.Tensor:
    """(softmax.6) = (softmax.3): t = y * g, then t - y * sum(t) by one addcmul_ in place; (softmax.7).

    `inplace=True` lets it reuse `grad_y`'s memory for t (the caller owns `grad_y` and no longer needs it).
    """
    dtype = _compute_dtype(y.dtype)
    yc = y.to(dtype)
    if inplace and grad_y.dtype == dtype:
        t = grad_y.mul_(yc)
    else:
        t = torch.mul(grad_y.to(dtype), yc)
    dot = t.sum(dim=dim, keepdim=True)                          # <g, y> per row
    return t.addcmul_(yc, dot, value=-1.0).to(y.dtype)          # y g - y <g, y> = y (g - <g, y>)


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = run("softmax.forward", x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return run("softmax.backward", y, grad_y, ctx.dim), None


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along `dim`: forward (softmax.1) (run as (softmax.5)), backward (softmax.3)
    (run as (softmax.6)); float16/bfloat16 are computed in float32 and cast back (softmax.7).

    A slice that is entirely -inf (nothing allowed) gives zeros and zero gradients (softmax.4).
    """
    _check_float_tensor(x, "x")
    if not isinstance(dim, int) or not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    if not needs_grad(x):  # inference: the forward (softmax.5) alone, no Function, nothing saved
        return run("softmax.forward", x, dim)
    return _Softmax.apply(x, dim)
