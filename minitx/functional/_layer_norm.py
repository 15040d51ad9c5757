"""Layer normalization with a hand-written backward (docs/math/layer_norm.md, labels (ln.*)).

`_layer_norm_backward_textbook` is (ln.5)-(ln.8) as printed. The Function runs the fast form: the variance (ln.2) as
the squared norm of the centred row (no squared temporary), and a backward (ln.9) whose two row means are matrix-vector products with w,
reusing g * x_hat, which (ln.7) needs anyway; the rest is in place on one buffer. tests/test_functional.py
proves the forms equal. Half precision is computed in float32 and cast back (as torch.nn.LayerNorm does).
"""

from __future__ import annotations

from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._bodies import body, needs_grad, run
from minitx.functional._scalars import same_dtype, scalar
from minitx.functional._checks import _check_broadcasts_to, _check_float_tensor, _check_same, _sum_to_shape
from minitx.functional._softmax import _compute_dtype


def _layer_norm_backward_textbook(grad_y, x_hat, rstd, weight):
    """(ln.5)-(ln.7) as printed: (grad_x, grad_weight-before-unbroadcasting)."""
    grad_x_hat = grad_y if weight is None else grad_y * weight                           # (ln.5)
    grad_x = rstd * (grad_x_hat - grad_x_hat.mean(dim=-1, keepdim=True)
                     - x_hat * (grad_x_hat * x_hat).mean(dim=-1, keepdim=True))          # (ln.6)
    return grad_x, grad_y * x_hat                                                        # (ln.7) summed later


def _row_sums(g, g_x_hat, weight):
    """(ln.9): sum_c(g w) and sum_c(g w x_hat), each (..., 1) (the caller divides by C). For a (C,) weight they
    are matrix-vector products with w (no (..., C) temporary); otherwise the textbook elementwise form."""
    c = g.shape[-1]
    if weight is None:
        return g.sum(dim=-1, keepdim=True), g_x_hat.sum(dim=-1, keepdim=True)
    if weight.dim() == 1 and weight.shape[0] == c:
        column = weight[:, None]  # (C, 1): the products come out (..., 1)
        return g @ column, g_x_hat @ column
    return (g * weight).sum(dim=-1, keepdim=True), (g_x_hat * weight).sum(dim=-1, keepdim=True)


@body("layer_norm.forward")
def _layer_norm_forward(x, weight, bias, eps, need_grad=True):
    """(ln.1)-(ln.4) in the compute dtype: (y, x_hat, rstd, weight in the compute dtype or None).

    Two passes for the statistics and no (..., C) temporary: the mean, then the norm of the centred buffer
    (which x_hat needs anyway), sum (x - mu)^2 = ||x - mu||^2. (`torch.var_mean` would be one call, but on a
    CPU it is a Welford reduction 5-40x slower than these two passes; tests/test_functional.py times it.)
    Without `need_grad` nothing is kept for a backward, and y is written over x_hat."""
    dtype = _compute_dtype(x.dtype)
    xc = same_dtype(x, dtype)
    inv_c = 1.0 / xc.shape[-1]
    x_hat = torch.sub(xc, xc.sum(dim=-1, keepdim=True), alpha=inv_c)       # x - mu (ln.1), the one buffer
    norm = torch.linalg.vector_norm(x_hat, dim=-1, keepdim=True)            # ||x - mu||, (..., 1)
    rstd = torch.addcmul(scalar(eps, dtype, x.device), norm, norm, value=inv_c).rsqrt_()  # (ln.2), eps inside
    x_hat.mul_(rstd)                                                         # (ln.3) in place
    w = None if weight is None else same_dtype(weight, dtype)
    out = None if need_grad else x_hat                                       # no backward: y over x_hat
    if w is not None and bias is not None:
        y = torch.addcmul(same_dtype(bias, dtype), x_hat, w, out=out)                 # (ln.4) w x_hat + b, one pass
    elif w is not None:
        y = torch.mul(x_hat, w, out=out)
    elif bias is not None:
        y = torch.add(x_hat, same_dtype(bias, dtype), out=out)
    else:
        y = x_hat.clone() if need_grad else x_hat
    return same_dtype(y, x.dtype), x_hat, rstd, w


@body("layer_norm.backward")
def _layer_norm_backward(grad_y, x_hat, rstd, weight, weight_shape, bias_shape):
    """(ln.9) = (ln.5)-(ln.6), then (ln.7)-(ln.8): (grad_x, grad_weight or None, grad_bias or None). One fresh
    (..., C) buffer: g * x_hat, which (ln.7) sums and (ln.9) reduces, and which then receives grad_x."""
    g = same_dtype(grad_y, x_hat.dtype)
    inv_c = 1.0 / g.shape[-1]
    buf = g * x_hat                                                          # (ln.7) before summing rows
    sum_gw, sum_gw_x_hat = _row_sums(g, buf, weight)                         # (ln.9), C times the means
    grad_weight = None if weight_shape is None else _sum_to_shape(buf, weight_shape)       # (ln.7)
    if grad_weight is buf:  # a weight as large as x: nothing to sum, so keep it out of the reused buffer
        grad_weight = buf.clone()
    grad_bias = None if bias_shape is None else _sum_to_shape(g, bias_shape)               # (ln.8)
    grad_x = buf.copy_(g) if weight is None else torch.mul(g, weight, out=buf)   # (ln.5) g w, into the buffer
    grad_x.sub_(sum_gw, alpha=inv_c).addcmul_(x_hat, sum_gw_x_hat, value=-inv_c)  # - mean(g w) - x_hat mean(g w x_hat)
    return grad_x.mul_(rstd), grad_weight, grad_bias                         # (ln.6) = r (...)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, x_hat, rstd, w = run("layer_norm.forward", x, weight, bias, eps)
        ctx.save_for_backward(x_hat, rstd, w)
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.weight_shape = None if weight is None else weight.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x_hat, rstd, weight = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = run("layer_norm.backward", grad_y, x_hat, rstd, weight,
                                             ctx.weight_shape, ctx.bias_shape)   # (ln.5)-(ln.9)
        return (same_dtype(grad_x, grad_y.dtype), _cast(grad_weight, grad_y.dtype), _cast(grad_bias, grad_y.dtype),
                None)


def _cast(t, dtype):
    return None if t is None else same_dtype(t, dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization over the last dim, (ln.1)-(ln.4); hand-written backward (ln.5)-(ln.8), run as (ln.9).

    Uses the biased variance (divide by C) with `eps` inside the square root, as `torch.nn.LayerNorm`.
    `weight` and `bias` may be None, or any shape that broadcasts against x without enlarging it
    (usually (C,)); their gradients are summed back over the broadcast dims.
    """
    _check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dim (..., C), got a 0-dim tensor")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        _check_float_tensor(p, name)
        _check_same(x, p, name)
        _check_broadcasts_to(p, x.shape, name)
    if not isinstance(eps, Real) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    if not needs_grad(x, weight, bias):  # inference: the same forward (ln.1)-(ln.4), no Function, nothing saved
        return run("layer_norm.forward", x, weight, bias, float(eps), False)[0]
    return _LayerNorm.apply(x, weight, bias, float(eps))
