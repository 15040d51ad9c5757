"""The front door's argument checks: one set of clear errors, whichever backend runs (attention.py)."""

from __future__ import annotations

from numbers import Real

import torch


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, H, L, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name}: expected dtype {q.dtype} on {q.device} like q, got {t.dtype} on {t.device}")
    if k.shape[0] != q.shape[0] or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"k, v: expected batch {q.shape[0]} as q and the same heads, "
                         f"got {tuple(k.shape[:2])} and {tuple(v.shape[:2])}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"k: expected a number of heads dividing q's {q.shape[1]} (grouped-query attention), "
                         f"got {k.shape[1]}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected head dim {q.shape[-1]} as q, got {k.shape[-1]}")
    if q.shape[-1] == 0:
        raise ValueError(f"q: expected head dim D >= 1, got shape {tuple(q.shape)}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v: expected key length {k.shape[2]} as k, got {v.shape[2]}")
    if k.shape[2] == 0:
        raise ValueError(f"k: expected at least one key (M >= 1), got shape {tuple(k.shape)}")


def _check_dropout(dropout_p) -> None:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")


def _check_masks(q, k, attn_mask, key_padding_mask) -> None:
    b, h, n, _ = q.shape
    m = k.shape[2]
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask: expected a bool or float Tensor, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask: expected bool (True = may attend) or float (added), got {attn_mask.dtype}")
        shape = tuple(attn_mask.shape)
        target = (b, h, n, m)[4 - len(shape):] if len(shape) <= 4 else ()
        if len(shape) > 4 or any(s not in (1, t) for s, t in zip(shape, target)):
            raise ValueError(f"attn_mask: expected a shape broadcastable to (B, H, N, M) = {(b, h, n, m)}, "
                             f"got {shape}")
        if attn_mask.is_floating_point() and bool((attn_mask.isnan() | attn_mask.isposinf()).any()):
            # +inf would make a row's softmax inf / inf = NaN: a float mask adds 0 (allowed) down to -inf (blocked)
            bad = "NaN" if bool(attn_mask.isnan().any()) else "+inf"
            raise ValueError(f"attn_mask: expected float values below +inf (0 = allowed, -inf = blocked), "
                             f"got {bad}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask)
            raise TypeError(f"key_padding_mask: expected a bool Tensor (True = real token), got {got}")
        if tuple(key_padding_mask.shape) != (b, m):
            raise ValueError(f"key_padding_mask: expected shape (B, M) = {(b, m)}, "
                             f"got {tuple(key_padding_mask.shape)}")
