"""Helpers the hand-written ops share: argument checks, and undoing broadcasting in a gradient."""

from __future__ import annotations

import math
from numbers import Real

import torch


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum `grad` over the dims that broadcasting added or stretched to reach its shape."""
    extra = grad.dim() - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))  # leading dims that broadcasting prepended
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(dim=stretched, keepdim=True)  # size-1 dims that broadcasting stretched
    return grad


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


def _broadcast_shapes(*shapes) -> tuple | None:
    """The shape `shapes` broadcast to (numpy's rules), or None if they do not broadcast.

    Pure Python: `torch.broadcast_shapes` goes through symbolic-shape machinery that costs ~35 us a call, more
    than the op it guards at the sizes lessons and decoding run at."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for s in shapes:
        for i, size in enumerate(s, start=ndim - len(s)):
            if size != 1:
                if out[i] != 1 and out[i] != size:
                    return None
                out[i] = size
    return tuple(out)


def _check_broadcasts_to(x, shape, name):
    if x.dim() <= len(shape) and x.shape == shape[len(shape) - x.dim():]:  # trailing dims equal: the usual case
        return
    if _broadcast_shapes(x.shape, shape) != tuple(shape):
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
    batch = _broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if batch is None:
        raise ValueError(f"q, k, v: batch dims must broadcast, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    return tuple(batch), q.shape[-2], k.shape[-2]


def _check_scale(scale, head_dim):
    if scale is None:
        if head_dim == 0:
            raise ValueError("q: expected head dim D >= 1 to derive the default scale 1/sqrt(D), got D=0")
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")
    return float(scale)

