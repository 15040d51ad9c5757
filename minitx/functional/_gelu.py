"""GELU, exact erf form, with a hand-written backward (docs/math/gelu.md, labels (gelu.*)).

`_gelu_textbook` / `_gelu_grad_textbook` are (gelu.1) / (gelu.2) as printed. The Function runs the fast form
(gelu.4)-(gelu.5): erf is evaluated once, in the forward, and the derivative (gelu.2) is formed there from that
Phi(x) and saved in place of x (one saved tensor, as for x itself), so the backward is one multiply; every
step runs in place on a buffer the Function owns, and nothing is kept when no gradient is needed. tests/test_functional.py proves the two forms equal.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._bodies import body, needs_grad, run
from minitx.functional._checks import _check_float_tensor

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG2_E = 1.0 / math.log(2.0)
_HALF, _ZERO = torch.tensor(0.5), torch.tensor(0.0)  # 0-dim: the scalar terms of fused ops, made once


def _gelu_textbook(x: torch.Tensor) -> torch.Tensor:
    """(gelu.1) as printed: x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    return 0.5 * x * (1.0 + torch.erf(x * _INV_SQRT2))


def _gelu_grad_textbook(x: torch.Tensor) -> torch.Tensor:
    """(gelu.2) as printed: Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); erf evaluated again."""
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)
    return cdf + x * pdf


@body("gelu.forward")
def _gelu_forward(x: torch.Tensor, need_grad: bool):
    """(gelu.4) then (gelu.1), and (gelu.5) when a gradient is needed: (y, derivative or None).

    Each line is one pass over memory, and only two fresh buffers (the output and the saved derivative):
    on a CPU a pass costs about as much as the arithmetic in it, and a fresh buffer costs page faults.
    Numbers enter as `alpha=`/`value=` (no one-number tensor converted per call, see `_scalars`)."""
    cdf = torch.add(_ZERO, x, alpha=_INV_SQRT2).erf_()                       # erf(x / sqrt 2), erf once
    cdf = torch.add(_HALF, cdf, alpha=0.5, out=cdf)                          # (gelu.4) Phi = 1/2 + erf/2
    grad = _gelu_grad_from_cdf(x, cdf) if need_grad else None                # (gelu.5): saved in place of x
    return cdf.mul_(x), grad                                                 # (gelu.1) x Phi(x), in place


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, need_grad):
        y, grad = run("gelu.forward", x, need_grad)
        if grad is not None:
            ctx.save_for_backward(grad)                                      # one saved tensor, as x would be
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (grad,) = ctx.saved_tensors
        return grad_y * grad, None                                           # elementwise chain rule


def _gelu_grad_from_cdf(x: torch.Tensor, cdf: torch.Tensor) -> torch.Tensor:
    """(gelu.5) = (gelu.2): Phi(x) + x phi(x) from the forward's Phi(x), on one buffer, in three passes.

    exp(-x^2 / 2) is taken as 2^(-x^2 log2(e) / 2): the same number (to a few ulp), but PyTorch's CPU `exp2` runs
    ~3x faster than its `exp` (111 vs 318 us on 393k floats, one thread)."""
    grad = torch.addcmul(_ZERO, x, x, value=-0.5 * _LOG2_E).exp2_()          # exp(-x^2 / 2) = 2^(-x^2 log2 e / 2)
    return torch.addcmul(cdf, grad, x, value=_INV_SQRT_2PI, out=grad)        # Phi + x exp(-x^2/2) / sqrt(2 pi)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, exact erf form x * Phi(x) (gelu.1); derivative Phi(x) + x * phi(x) (gelu.2), computed as
    (gelu.4)-(gelu.5) in the forward from the same Phi(x), and saved."""
    _check_float_tensor(x, "x")
    if not needs_grad(x):  # inference: the forward (gelu.4), (gelu.1) alone, no Function
        return run("gelu.forward", x, False)[0]
    return _Gelu.apply(x, True)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, (dec.5): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); autograd differentiates it.

    An approximation of (gelu.1) kept only to load GPT-2's weights exactly (docs/math/decoder.md)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
