"""RMS normalization with a hand-written backward (docs/math/rms_norm.md, labels (rmsnorm.*)).

`_rms_norm_backward_textbook` is (rmsnorm.2)-(rmsnorm.4) as printed. The Function runs the fast form
(rmsnorm.5): g * x_hat, which the weight's gradient (rmsnorm.4) needs anyway, gives the row mean of (rmsnorm.3)
as a matrix-vector product with w, and grad_x is then built in place in that buffer. tests/test_functional.py
proves the forms equal. Half precision is computed in float32 and cast back, as the other norms.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._bodies import body, needs_grad, run
from minitx.functional._checks import _check_broadcasts_to, _check_float_tensor, _check_same, _sum_to_shape
from minitx.functional._scalars import same_dtype, scalar
from minitx.functional._softmax import _compute_dtype


def _rms_norm_backward_textbook(grad_y, x_hat, rstd, weight):
    """(rmsnorm.2)-(rmsnorm.4) as printed: (grad_x, grad_weight before summing over the rows)."""
    grad_x_hat = grad_y if weight is None else grad_y * weight                              # (rmsnorm.2)
    grad_x = rstd * (grad_x_hat - x_hat * (grad_x_hat * x_hat).mean(dim=-1, keepdim=True))  # (rmsnorm.3)
    return grad_x, grad_y * x_hat                                                           # (rmsnorm.4)


@body("rms_norm.forward")
def _rms_norm_forward(x, weight, eps):
    """(rmsnorm.1) in the compute dtype: (y, x_hat, rstd, weight in the compute dtype or None)."""
    dtype = _compute_dtype(x.dtype)
    xc = same_dtype(x, dtype)
    norm = torch.linalg.vector_norm(xc, dim=-1, keepdim=True)                     # ||x||, (..., 1)
    rstd = torch.addcmul(scalar(eps, dtype, x.device), norm, norm, value=1.0 / xc.shape[-1]).rsqrt_()  # eps inside
    x_hat = xc * rstd                                                              # x / rms(x)
    w = None if weight is None else same_dtype(weight, dtype)
    y = x_hat.clone() if w is None else x_hat * w                                  # (rmsnorm.1) w x_hat
    return same_dtype(y, x.dtype), x_hat, rstd, w


@body("rms_norm.backward")
def _rms_norm_backward(grad_y, x_hat, rstd, weight, weight_shape):
    """(rmsnorm.5) = (rmsnorm.2)-(rmsnorm.3), and (rmsnorm.4): (grad_x, grad_weight or None). One fresh
    (..., C) buffer: g * x_hat, summed for (rmsnorm.4), reduced with w for the row mean, then grad_x."""
    g = same_dtype(grad_y, x_hat.dtype)
    c = g.shape[-1]
    buf = g * x_hat                                                                # (rmsnorm.4) before the sum
    if weight is None:
        sum_gw_x_hat = buf.sum(dim=-1, keepdim=True)
    elif weight.dim() == 1 and weight.shape[0] == c:
        sum_gw_x_hat = buf @ weight[:, None]                                       # (rmsnorm.5) (g x_hat) w, (..., 1)
    else:
        sum_gw_x_hat = (buf * weight).sum(dim=-1, keepdim=True)
    grad_weight = None if weight_shape is None else _sum_to_shape(buf, weight_shape)   # (rmsnorm.4)
    if grad_weight is buf:  # a weight as large as x: nothing summed, so keep it out of the reused buffer
        grad_weight = buf.clone()
    grad_x = buf.copy_(g) if weight is None else torch.mul(g, weight, out=buf)     # (rmsnorm.2) g w
    grad_x.addcmul_(x_hat, sum_gw_x_hat, value=-1.0 / c)                           # - x_hat mean(g w x_hat)
    return grad_x.mul_(rstd), grad_weight                                          # (rmsnorm.3) r (...)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, x_hat, rstd, w = run("rms_norm.forward", x, weight, eps)
        ctx.save_for_backward(x_hat, rstd, w)
        ctx.weight_shape = None if weight is None else weight.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x_hat, rstd, weight = ctx.saved_tensors
        grad_x, grad_weight = run("rms_norm.backward", grad_y, x_hat, rstd, weight, ctx.weight_shape)  # (rmsnorm.5)
        grad_weight = None if grad_weight is None else same_dtype(grad_weight, grad_y.dtype)
        return same_dtype(grad_x, grad_y.dtype), grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMS normalization over the last dim, (rmsnorm.1): w * x / sqrt(mean(x^2) + eps); no centring, no shift.
    Hand-written backward (rmsnorm.2)-(rmsnorm.4), run as (rmsnorm.5).

    `weight` may be None, or any shape that broadcasts against x without enlarging it (usually (C,)); its
    gradient is summed back over the broadcast dims. Matches `torch.nn.functional.rms_norm(x, (C,), w, eps)`.
    """
    _check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dim (..., C), got a 0-dim tensor")
    if weight is not None:
        _check_float_tensor(weight, "weight")
        _check_same(x, weight, "weight")
        _check_broadcasts_to(weight, x.shape, "weight")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    if not needs_grad(x, weight):  # inference: the forward (rmsnorm.1) alone, no Function
        return run("rms_norm.forward", x, weight, float(eps))[0]
    return _RMSNorm.apply(x, weight, float(eps))
