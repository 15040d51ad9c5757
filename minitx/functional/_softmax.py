"""Softmax along one dim with a hand-written backward (docs/math/softmax.md, labels (softmax.*))."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import _check_float_tensor


def _softmax_forward(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(softmax.1) with the max subtracted; (softmax.4): a row that is all -inf gives zeros, not NaN."""
    row_max = x.amax(dim=dim, keepdim=True)
    # An all -inf row has max -inf and x - max = NaN; shift it by 0 instead so exp gives exact zeros.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x - row_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _softmax_backward(y: torch.Tensor, grad_y: torch.Tensor, dim: int) -> torch.Tensor:
    """(softmax.3): the Jacobian-vector product y * (g - sum(g * y)), without forming the Jacobian (softmax.2)."""
    return y * (grad_y - (grad_y * y).sum(dim=dim, keepdim=True))


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = _softmax_forward(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return _softmax_backward(y, grad_y, ctx.dim), None


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along `dim`: forward (softmax.1), backward (softmax.3).

    A slice that is entirely -inf (nothing allowed) gives zeros and zero gradients (softmax.4).
    """
    _check_float_tensor(x, "x")
    if not isinstance(dim, int) or not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    return _Softmax.apply(x, dim)
