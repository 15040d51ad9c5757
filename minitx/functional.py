"""Pure math with hand-written backward passes: softmax, layer norm, GELU, scaled dot-product attention.

Every forward is written out with plain tensor ops and every backward is the formula derived in
`docs/math/*.md`, inside a `torch.autograd.Function`, so the code can be read side by side with the
derivation. Labels such as `(attn.8)` point at the equation a line computes.

Conventions (see docs/architecture.md): q (..., N, D), k (..., M, D), v (..., M, Dv); boolean masks use
True = may attend; a query row with no allowed key gives zeros and zero gradients, never NaN.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch.autograd.function import once_differentiable

__all__ = ["softmax", "layer_norm", "gelu", "causal_mask", "scaled_dot_product_attention"]


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum `grad` over the dims that broadcasting added or stretched to reach its shape."""
    extra = grad.dim() - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))  # leading dims that broadcasting prepended
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(dim=stretched, keepdim=True)  # size-1 dims that broadcasting stretched
    return grad


# ----------------------------------------------------------------------------------------------- softmax

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


# -------------------------------------------------------------------------------------------- layer norm

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


# -------------------------------------------------------------------------------------------------- gelu

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


# --------------------------------------------------------------------------------------------- attention

def causal_mask(n: int, m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (N, M) mask, True = may attend: key j allowed for query i iff j <= i (attn.3).

    Top-left aligned, exactly like `is_causal=True` in torch's SDPA when N != M (not FlashAttention-2's
    bottom-right j <= i + M - N; see docs/math/attention.md).
    """
    for name, size in (("n", n), ("m", m)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {size!r}")
    return torch.ones(n, m, dtype=torch.bool, device=device).tril()


def _attention_scores(q, k, bias, scale):
    """(attn.1)-(attn.2): S = scale * Q K^T, plus the additive mask (0 where allowed, -inf where not)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale   # (..., N, D) @ (..., D, M) -> (..., N, M)
    return scores if bias is None else scores + bias


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, dropout_p, scale, generator):
        probs = _softmax_forward(_attention_scores(q, k, bias, scale), dim=-1)   # (attn.4), (softmax.4)
        keep = None
        weights = probs
        if dropout_p > 0.0:
            # (attn.5) inverted dropout: keep with probability 1 - p, scale survivors by 1 / (1 - p).
            noise = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
            keep = noise >= dropout_p
            weights = probs * keep / (1.0 - dropout_p)
        out = torch.matmul(weights, v)                      # (attn.6) (..., N, M) @ (..., M, Dv) -> (..., N, Dv)
        ctx.save_for_backward(q, k, v, probs, weights, keep)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.set_materialize_grads(False)  # an unused output (weights, usually) gets None, not a zeros tensor
        return out, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_weights):
        q, k, v, probs, weights, keep = ctx.saved_tensors
        if grad_out is None:                                                 # only the weights were used
            grad_out = torch.zeros(weights.shape[:-1] + v.shape[-1:], dtype=v.dtype, device=v.device)
        grad_v = torch.matmul(weights.transpose(-2, -1), grad_out)           # (attn.7) dV = P~^T dO
        grad_w = torch.matmul(grad_out, v.transpose(-2, -1))                 # (attn.8) dP~ = dO V^T
        if grad_weights is not None:
            grad_w = grad_w + grad_weights                                   # the weights were also an output
        # (attn.9) through dropout with the forward's own mask; else dP = dP~.
        grad_p = grad_w if keep is None else grad_w * keep / (1.0 - ctx.dropout_p)
        grad_s = _softmax_backward(probs, grad_p, dim=-1)                    # (attn.10) softmax Jacobian
        grad_q = torch.matmul(grad_s, k) * ctx.scale                         # (attn.11) dQ = scale dS K
        grad_k = torch.matmul(grad_s.transpose(-2, -1), q) * ctx.scale       # (attn.11) dK = scale dS^T Q
        grad_bias = None
        if ctx.needs_input_grad[3]:                                          # a float mask that requires grad
            grad_bias = _sum_to_shape(grad_s, ctx.bias_shape)                # (attn.12) dB = dS, unbroadcast
        return (_sum_to_shape(grad_q, q.shape), _sum_to_shape(grad_k, k.shape),
                _sum_to_shape(grad_v, v.shape), grad_bias, None, None, None)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                 return_weights=False, generator=None):
    """softmax(scale * Q K^T + mask) V with a hand-written backward, (attn.1)-(attn.12).

    q (..., N, D), k (..., M, D), v (..., M, Dv); the batch dims `...` of q, k and v broadcast against each
    other. `attn_mask` is bool (True = may attend) or float (added to the scores), broadcastable to
    (..., N, M) without enlarging the output; `is_causal` adds the top-left causal mask (attn.3) and may be
    combined with `attn_mask`. `scale` defaults to 1/sqrt(D) (attn.1). Dropout (attn.5) is inverted dropout on
    the weights, drawn from `generator` when given; its backward reuses the forward's mask (attn.9).
    A query row with no allowed key gives zeros and zero gradients (softmax.4).

    Returns out (..., N, Dv), or (out, weights (..., N, M)) with `return_weights`; the weights are the ones
    multiplied into V, i.e. after dropout, so `out == weights @ v`.
    """
    batch_shape, n, m = _check_qkv(q, k, v)
    scale = _check_scale(scale, q.shape[-1])
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal: expected a bool, got {type(is_causal).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    bias = _mask_to_bias(attn_mask, is_causal, batch_shape + (n, m), q)
    out, weights = _Attention.apply(q, k, v, bias, float(dropout_p), scale, generator)
    return (out, weights) if return_weights else out


def _mask_to_bias(attn_mask, is_causal, scores_shape, q):
    """(attn.2)-(attn.3): turn the masks into one additive bias: 0 (allowed) / -inf (not), plus float masks."""
    bias = None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask: expected a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask: expected dtype bool (True = may attend) or a float dtype, "
                            f"got {attn_mask.dtype}")
        _check_same(q, attn_mask, "attn_mask", check_dtype=False)
        _check_broadcasts_to(attn_mask, torch.Size(scores_shape), "attn_mask")
        if attn_mask.dtype == torch.bool:
            bias = _bool_to_bias(attn_mask, q.dtype)
        else:
            bias = attn_mask.to(q.dtype)  # autograd casts its gradient back, so a float mask stays learnable
    if is_causal:
        causal = _bool_to_bias(causal_mask(scores_shape[-2], scores_shape[-1], device=q.device), q.dtype)
        bias = causal if bias is None else bias + causal
    return bias


def _bool_to_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(attn.2): True -> 0, False -> -inf, so exp(score + bias) is exactly 0 where attention is not allowed."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


# -------------------------------------------------------------------------------------------- validation

def _check_float_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def _check_same(ref, x, name, check_dtype=True):
    if check_dtype and x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (as the input), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (as the input), got {x.device}")


def _check_broadcasts_to(x, shape, name):
    try:
        ok = torch.broadcast_shapes(x.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a shape broadcastable to {tuple(shape)}, got {tuple(x.shape)}")


def _check_qkv(q, k, v):
    """Validate q (..., N, D), k (..., M, D), v (..., M, Dv); return (broadcast batch shape, N, M)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float_tensor(t, name)
        if t.dim() < 2:
            raise ValueError(f"{name}: expected at least 2 dims (..., length, dim), got shape {tuple(t.shape)}")
    _check_same(q, k, "k")
    _check_same(q, v, "v")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected last dim D={q.shape[-1]} (as q), got shape {tuple(k.shape)}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v: expected {k.shape[-2]} keys (as k, dim -2), got shape {tuple(v.shape)}")
    if k.shape[-2] == 0:
        raise ValueError(f"k: expected at least one key (M >= 1), got shape {tuple(k.shape)}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"q, k, v: batch dims must broadcast, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}") from None
    return tuple(batch), q.shape[-2], k.shape[-2]


def _check_scale(scale, head_dim):
    if scale is None:
        if head_dim == 0:
            raise ValueError("q: expected head dim D >= 1 to derive the default scale 1/sqrt(D), got D=0")
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")
    return float(scale)
