"""Scaled dot-product attention with a hand-written backward (docs/math/attention.md, labels (attn.*)).

q (..., N, D), k (..., M, D), v (..., M, Dv); boolean masks use True = may attend; a query row with no allowed
key gives zeros and zero gradients, never NaN. The softmax inside is `_softmax`'s, forward and backward.
"""

from __future__ import annotations

from functools import lru_cache
from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import (_broadcast_shapes, _check_broadcasts_to, _check_qkv, _check_same, _check_scale,
                                       _sum_to_shape)
from minitx.functional import _softmax  # noqa: F401 (registers the softmax bodies used below)
from minitx.functional._bodies import needs_grad, run
from minitx.functional._scalars import scalar


def causal_mask(n: int, m: int, device: torch.device | str | None = None, align: str = "top_left") -> torch.Tensor:
    """Boolean (N, M) mask, True = may attend: key j allowed for query i iff j <= i + off (attn.3).

    align "top_left" (off = 0, the default) is exactly `is_causal=True` in torch's SDPA when N != M;
    "bottom_right" (off = M - N) is FlashAttention-2's, what decoding with a KV cache needs: the last query
    sees every key, and a query with no key left (N > M) sees none (see docs/math/attention.md).
    """
    for name, size in (("n", n), ("m", m)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {size!r}")
    if align not in ("top_left", "bottom_right"):
        raise ValueError(f"align: expected 'top_left' or 'bottom_right', got {align!r}")
    return torch.ones(n, m, dtype=torch.bool, device=device).tril(m - n if align == "bottom_right" else 0)


_FULL = (torch.float32, torch.float64)


def _attention_scores(q, k, bias, scale):
    """(attn.1)-(attn.2): S = scale * Q K^T, plus the additive mask (0 where allowed, -inf where not); the
    scale and the mask are applied in place on the one (..., N, M) buffer the matmul returns."""
    scores = torch.matmul(q, k.transpose(-2, -1))  # (..., N, D) @ (..., D, M) -> (..., N, M)
    # a kept one-number tensor (no conversion per call); in half precision the Python number, which torch applies
    # in float32 (a float16 copy of 1/sqrt(D) would be off by up to 5e-4 relative)
    scores.mul_(scalar(scale, scores.dtype, scores.device) if scores.dtype in _FULL else scale)
    if bias is None:
        return scores
    if _broadcast_shapes(scores.shape, bias.shape) == tuple(scores.shape):
        return scores.add_(bias)
    return scores + bias  # only when v's batch dims enlarge the scores (broadcast against q and k alone)


def _dropout_mask(probs, dropout_p, generator):
    """(attn.5): Z / (1 - p) with Z ~ Bernoulli(1 - p), drawn once and saved for the backward (attn.9)."""
    noise = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    return noise.ge_(dropout_p).div_(1.0 - dropout_p)   # in place: Z = [U >= p], then Z / (1 - p)


def _attention_forward(q, k, v, bias, dropout_p, scale, generator):
    """(attn.1)-(attn.6): (out, weights P~, probs P, dropout mask or None)."""
    probs = run("softmax.forward", _attention_scores(q, k, bias, scale), -1)   # (attn.4), (softmax.4)
    mask = _dropout_mask(probs, dropout_p, generator) if dropout_p > 0.0 else None
    weights = probs if mask is None else probs * mask   # (attn.5) P~ = P Z / (1 - p)
    out = torch.matmul(weights, v)                      # (attn.6) (..., N, M) @ (..., M, Dv) -> (..., N, Dv)
    return out, weights, probs, mask


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, dropout_p, scale, generator):
        # Head-split inputs are strided views; each matmul would copy them, in the forward and again in the
        # backward. One copy each, saved, serves every matmul (and frees the views' bases, so memory is equal).
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, weights, probs, mask = _attention_forward(q, k, v, bias, dropout_p, scale, generator)
        # P~ is not saved: the backward rebuilds it from P and the mask (one multiply), so a layer keeps two
        # (..., N, M) tensors for its backward, not three.
        ctx.save_for_backward(q, k, v, probs, mask)
        ctx.scale = scale
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.set_materialize_grads(False)  # an unused output (weights, usually) gets None, not a zeros tensor
        return out, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_weights):
        q, k, v, probs, mask = ctx.saved_tensors
        if grad_out is None and grad_weights is None:                        # neither output was used
            grad_out = torch.zeros(probs.shape[:-1] + v.shape[-1:], dtype=v.dtype, device=v.device)
        if grad_out is not None:
            grad_out = grad_out.contiguous()                                 # one copy for both of its matmuls
            weights = probs if mask is None else probs * mask                # (attn.5) rebuilt
            grad_v = torch.matmul(weights.transpose(-2, -1), grad_out)       # (attn.7) dV = P~^T dO
            del weights
            grad_w = torch.matmul(grad_out, v.transpose(-2, -1))             # (attn.8) dP~ = dO V^T
            if grad_weights is not None:                                     # the weights were also an output
                grad_w = grad_w.add_(grad_weights) if grad_w.shape == grad_weights.shape else grad_w + grad_weights
        else:                                                                # only the weights were used
            grad_v, grad_w = torch.zeros_like(v), grad_weights.clone()
        if mask is not None:
            grad_w.mul_(mask)                                                # (attn.9) dP = dP~ Z / (1 - p)
        grad_s = run("softmax.backward", probs, grad_w, -1, True)      # (attn.10), on dP's memory
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale)                     # (attn.11) dQ = scale dS K
        grad_k = torch.matmul(grad_s.transpose(-2, -1), q).mul_(ctx.scale)   # (attn.11) dK = scale dS^T Q
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
    if needs_grad(q, k, v, bias):
        out, weights = _Attention.apply(q, k, v, bias, float(dropout_p), scale, generator)
    else:  # inference: the same forward (attn.1)-(attn.6), no Function, nothing saved, no copies for a backward
        out, weights, _, _ = _attention_forward(q, k, v, bias, float(dropout_p), scale, generator)
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
        causal = _causal_bias(scores_shape[-2], scores_shape[-1], q.dtype, q.device)
        bias = causal if bias is None else bias + causal
    return bias


@lru_cache(maxsize=32)
def _causal_bias(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(attn.3) as an additive bias (N, M), built once per (shape, dtype, device) and shared by every layer and
    call that asks again; it is only ever read (added into fresh scores). Made outside inference mode, so a
    bias first built under `torch.inference_mode()` still serves a later training step."""
    with torch.inference_mode(False):
        return _bool_to_bias(causal_mask(n, m, device=device), dtype)


def _bool_to_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(attn.2): True -> 0, False -> -inf, so exp(score + bias) is exactly 0 where attention is not allowed."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
