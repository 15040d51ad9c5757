"""Layer normalization with a hand-written backward (docs/math/layer_norm.md, labels (ln.*))."""

from __future__ import annotations

from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import _check_broadcasts_to, _check_float_tensor, _check_same, _sum_to_shape


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(dim=-1, keepdim=True)                                  # (ln.1)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)                   # (ln.2) biased: divide by C
        rstd = torch.rsqrt(var + eps)                                        # eps inside the root
        x_hat = (x - mean) * rstd                                            # (ln.3)
        y = x_hat
        if weight is not None:
            y = y * weight                                                   # (ln.4)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.bias_shape = None if bias is None else bias.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x_hat, rstd, weight = ctx.saved_tensors
        grad_x_hat = grad_y if weight is None else grad_y * weight           # (ln.5)
        grad_x = rstd * (grad_x_hat                                          # (ln.6)
                         - grad_x_hat.mean(dim=-1, keepdim=True)
                         - x_hat * (grad_x_hat * x_hat).mean(dim=-1, keepdim=True))
        grad_weight = None if weight is None else _sum_to_shape(grad_y * x_hat, weight.shape)   # (ln.7)
        grad_bias = None if ctx.bias_shape is None else _sum_to_shape(grad_y, ctx.bias_shape)  # (ln.8)
        return grad_x, grad_weight, grad_bias, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization over the last dim, (ln.1)-(ln.4); hand-written backward (ln.5)-(ln.8).

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
    return _LayerNorm.apply(x, weight, bias, float(eps))
