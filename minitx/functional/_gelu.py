"""GELU, exact erf form, with a hand-written backward (docs/math/gelu.md, labels (gelu.*)).

`_gelu_textbook` / `_gelu_grad_textbook` are (gelu.1) / (gelu.2) as printed. The Function runs the fast form
(gelu.4)-(gelu.5): erf is evaluated once, in the forward, and Phi(x) is saved for the backward, each step in
place on a buffer the Function owns. tests/test_functional.py proves the two forms equal.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import _check_float_tensor

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_textbook(x: torch.Tensor) -> torch.Tensor:
    """(gelu.1) as printed: x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    return 0.5 * x * (1.0 + torch.erf(x * _INV_SQRT2))


def _gelu_grad_textbook(x: torch.Tensor) -> torch.Tensor:
    """(gelu.2) as printed: Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); erf evaluated again."""
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)
    return cdf + x * pdf


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        cdf = torch.mul(x, _INV_SQRT2).erf_().add_(1.0).mul_(0.5)            # (gelu.4) Phi(x), erf once
        ctx.save_for_backward(x, cdf)
        return x * cdf                                                       # (gelu.1) x Phi(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, cdf = ctx.saved_tensors
        grad = torch.mul(x, x).mul_(-0.5).exp_().mul_(x)                     # x exp(-x^2/2) = sqrt(2 pi) x phi(x)
        grad = torch.add(cdf, grad, alpha=_INV_SQRT_2PI, out=grad)           # (gelu.5) Phi + x phi = (gelu.2)
        return grad.mul_(grad_y)                                             # elementwise chain rule


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, exact erf form x * Phi(x) (gelu.1); derivative Phi(x) + x * phi(x) (gelu.2), computed as
    (gelu.4)-(gelu.5) with Phi(x) saved from the forward."""
    _check_float_tensor(x, "x")
    return _Gelu.apply(x)
