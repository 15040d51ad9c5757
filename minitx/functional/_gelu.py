"""GELU, exact erf form, with a hand-written backward (docs/math/gelu.md, labels (gelu.*))."""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import _check_float_tensor

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * x * (1.0 + torch.erf(x * _INV_SQRT2))                   # (gelu.1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))                        # Phi(x)
        pdf = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)                        # phi(x)
        return grad_y * (cdf + x * pdf)                                      # (gelu.2)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, exact erf form x * Phi(x) (gelu.1); derivative Phi(x) + x * phi(x) (gelu.2)."""
    _check_float_tensor(x, "x")
    return _Gelu.apply(x)
