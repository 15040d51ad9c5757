"""Variable-length sequences packed without padding, through the attention front door (flash.19)."""

from __future__ import annotations

import torch
from einops import rearrange

from minitx.attention.backends import get_backend
from minitx.attention.front_door import attention


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, backend: str = "math", **options) -> torch.Tensor:
    """Attention over sequences packed without padding: q (T_q, H, D), k, v (T_k, H_kv, D), sequence s in
    rows cu_seqlens_q[s]:cu_seqlens_q[s+1] (and likewise for keys) attends within itself only (flash.19).

    `options` are `attention`'s (is_causal, scale, causal_align, window, alibi_slopes, dropout_p), applied per
    sequence. A backend that offers `fn.varlen` (flash: one kernel over the packing) runs it; any other
    loops over the sequences through the front door.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name}: expected a (T, H, D) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    cu = [_offsets(name, c, t.shape[0]) for name, c, t in (("cu_seqlens_q", cu_seqlens_q, q),
                                                            ("cu_seqlens_k", cu_seqlens_k, k))]
    if len(cu[0]) != len(cu[1]):
        raise ValueError(f"cu_seqlens_k: expected {len(cu[0])} offsets as cu_seqlens_q, got {len(cu[1])}")
    native = getattr(get_backend(backend), "varlen", None)
    if native is not None:
        return native(q, k, v, cu_seqlens_q, cu_seqlens_k, **options)
    outs = []
    for (q0, q1), (k0, k1) in zip(zip(cu[0], cu[0][1:]), zip(cu[1], cu[1][1:])):
        if q1 == q0:
            continue
        if k1 == k0:  # a sequence with queries and no key: zeros, as an empty row anywhere
            outs.append(q.new_zeros(q1 - q0, q.shape[1], v.shape[2]))
            continue
        seq = [rearrange(t[a:b], "t h d -> 1 h t d") for t, a, b in ((q, q0, q1), (k, k0, k1), (v, k0, k1))]
        outs.append(rearrange(attention(*seq, backend=backend, **options), "1 h t d -> t h d"))
    return torch.cat(outs) if outs else q.new_zeros(0, q.shape[1], v.shape[2])


def _offsets(name: str, cu, total: int) -> list[int]:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.is_floating_point():
        raise ValueError(f"{name}: expected an integer tensor (n_seq + 1,) of offsets, got {cu!r}")
    offsets = cu.tolist()
    if offsets[0] != 0 or offsets[-1] != total or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"{name}: expected non-decreasing offsets from 0 to {total}, got {offsets}")
    return offsets
