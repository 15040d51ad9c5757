"""Scaled dot-product attention behind one front door: `attention(q, k, v, backend=...)`.

It checks shapes and masks once, lowers what the chosen backend does not do natively into masks
(`minitx.attention.masks`), and hands the call to the backend (`minitx.attention.backends`). Beyond plain
masks it takes what FlashAttention users ask for: grouped-query k, v (fewer heads than q),
`causal_align="bottom_right"` (decoding with a KV cache), sliding `window`s and `alibi_slopes`; packed
variable-length sequences go through `minitx.attention.varlen`.
"""

from __future__ import annotations

import torch

from minitx.attention.backends import check_backend, get_backend
from minitx.attention.checks import _check_dropout, _check_masks, _check_qkv
from minitx.attention.masks import check_options, lower
from minitx.functional._checks import _check_scale


def attention(q, k, v, *, backend: str = "math", attn_mask=None, key_padding_mask=None, is_causal: bool = False,
              dropout_p: float = 0.0, scale: float | None = None, causal_align: str = "top_left",
              window: tuple[int, int] | None = None, alibi_slopes: torch.Tensor | None = None,
              return_weights: bool = False):
    """softmax(q k^T * scale + mask) v, equation (mha.2), computed by the named backend.

    q (B, H, N, D), k (B, H_kv, M, D), v (B, H_kv, M, Dv) -> (B, H, N, Dv); H_kv divides H (grouped-query
    attention: query head h reads key/value head h // (H / H_kv)). `attn_mask` is bool (True = may attend)
    or float (added to the scores), broadcastable to (B, H, N, M); `key_padding_mask` is bool (B, M), True =
    real token. `causal_align` "top_left" (torch SDPA's is_causal) or "bottom_right" (FlashAttention's: the
    last query sees every key, as a KV cache needs); `window` (left, right) keeps keys j with
    -left <= j - i - off <= right (-1 = unbounded; off = M - N when bottom-right aligned, else 0);
    `alibi_slopes` (H,) adds -slope_h |j - i - off|. A query with no allowed key gets zeros.
    `return_weights`: also return the weights (B, H, N, M), after dropout, so out == weights @ v; only the
    math backend materialises them, so it computes this call whatever `backend` names.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    _check_qkv(q, k, v)
    _check_masks(q, k, attn_mask, key_padding_mask)
    _check_dropout(dropout_p)
    _check_scale(scale, q.shape[-1])
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal: expected a bool, got {type(is_causal).__name__}")
    check_options(causal_align, window, alibi_slopes, q.shape[1])
    if attn_mask is not None and attn_mask.dim() < 4:  # (M,) or (N, M): make every backend see (.., .., N, M)
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    check_backend(backend)
    fn = get_backend("math" if return_weights else backend)  # only the math backend materialises the weights
    k, v, attn_mask, is_causal, extra = lower(q, k, v, attn_mask, is_causal, causal_align, window, alibi_slopes,
                                              getattr(fn, "native_features", frozenset()))
    if return_weights:
        extra["return_weights"] = True
    return fn(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
              dropout_p=dropout_p, scale=scale, **extra)
