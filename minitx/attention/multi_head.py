"""MultiHeadAttention, equations (mha.1)-(mha.4): project, split into heads, attend, concatenate, project.

The attention itself goes through the front door (`minitx.attention.front_door.attention`), so every backend
(math, sdpa, flash, or one you register) runs inside the same module. Positions that act inside attention
live here too: RoPE rotates q and k (`rotary=`), ALiBi biases the scores (`alibi_slopes=`). A KV cache
(`cache=`, a `LayerKV`) keeps the keys and values of earlier tokens for decoding (dec.6)-(dec.9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F
from einops import rearrange
from torch import nn

from minitx.attention.backends import check_backend
from minitx.attention.cache import LayerKV
from minitx.attention.front_door import attention
from minitx.attention.fused_qkv import fuse_qkv_storage, fused_qkv, unfuse_qkv_storage
from minitx.attention.masks import repeat_kv
from minitx.attention.varlen import varlen_attention
from minitx.checks import check_probability
from minitx.hooks import HookPoints
from minitx.positional.rope import RotaryEmbedding


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (torch < 2.4 has one query per device type)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H D) -> (B, H, L, D), einops' "b l (h d) -> b h l d": a view, no copy.

    Written with `reshape` and `transpose` rather than `einops.rearrange`, which costs ~14 us a call in
    parsing and dispatch, four calls a layer: 10% of a batch-1 BERT forward (tests/test_attention.py proves
    the two equal)."""
    return x.reshape(*x.shape[:-1], n_heads, -1).transpose(1, 2)  # (B, L, H D) -> (B, L, H, D) -> (B, H, L, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H D), einops' "b h l d -> b l (h d)" (mha.3): the heads side by side."""
    return x.transpose(1, 2).flatten(2)  # (B, H, L, D) -> (B, L, H, D) -> (B, L, H D)


class MultiHeadAttention(HookPoints, nn.Module):
    """H attention heads side by side, equations (mha.1)-(mha.4).

    Each head attends in its own D = C / H dimensional subspace; the heads' outputs are concatenated back to
    width C and mixed by `out_proj` (mha.3). It is not an average over heads.
    Four C x C projections hold 4C^2 + 4C parameters with biases, whatever H (mha.5); a forward costs about
    8NC^2 + 4NMC FLOPs and holds H N M weights (mha.6). With `n_kv_heads` < H, k and v have fewer heads and
    query head h reads key/value head h // (H / H_kv) (grouped-query attention; 1: multi-query), (flash.18).

    Hook points (minitx.hooks): "q", "k", "v" (B, H or H_kv, L, D) after RoPE, the new tokens only;
    "pattern" (B, H, N, M) the attention weights (computed by the math path when hooked); "z" (B, H, N, D)
    each head's output before `out_proj`.
    """

    hook_points = ("q", "k", "v", "pattern", "z")

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 backend: str = "math", n_kv_heads: int | None = None, rotary: RotaryEmbedding | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model: expected a multiple of n_heads={n_heads}, got {d_model}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads: expected a divisor of n_heads={n_heads} (grouped-query attention), "
                             f"got {n_kv_heads}")
        check_probability("dropout", dropout)
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.n_kv_heads = n_kv_heads
        if rotary is not None and (not isinstance(rotary, RotaryEmbedding) or rotary.head_dim != self.head_dim):
            raise ValueError(f"rotary: expected a RotaryEmbedding of head_dim {self.head_dim}, got {rotary!r}")
        self.rotary = rotary
        self.dropout = dropout
        self.backend = backend
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self._qkv_storage = None  # set by fuse_qkv_storage (minitx.attention.fused_qkv): one tensor for q, k, v

    def train(self, mode: bool = True) -> "MultiHeadAttention":
        """As nn.Module.train, and q/k/v's weights laid out for the mode (minitx.attention.fused_qkv): side by
        side in one tensor in eval mode (one product per forward), each its own in training mode."""
        super().train(mode)
        if mode:
            unfuse_qkv_storage(self)
        else:
            fuse_qkv_storage(self)
        return self

    def _apply(self, fn, recurse=True):
        """.to() / .half() / .cuda() give each parameter new memory: lay q, k, v side by side again."""
        module = super()._apply(fn, recurse)
        if self._qkv_storage is not None:
            fuse_qkv_storage(self)
        return module

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_backend(name)

    def _check_inputs(self, x, context) -> None:
        for name, t in (("x", x), ("context", context)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name}: expected shape (B, L, {self.d_model}), got {tuple(t.shape)}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context: expected batch size {x.shape[0]} as x, got {context.shape[0]}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor (embeddings, not token ids), got dtype {x.dtype}")
        if context.dtype != x.dtype:
            raise TypeError(f"context: expected dtype {x.dtype} as x, got {context.dtype}")
        weight = getattr(self.q_proj, "weight", None)
        if not isinstance(weight, torch.Tensor):  # q_proj wrapped (LoRA): its first tensor is the base weight
            weight = next(self.q_proj.parameters())
        if x.dtype != weight.dtype and not _autocast_on(x.device.type):
            raise TypeError(f"x: expected dtype {weight.dtype} like the module's weights (or run under "
                            f"torch.autocast), got {x.dtype}")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, is_causal: bool = False, return_weights: bool = False,
                *, attn_mask: torch.Tensor | None = None, causal_align: str = "top_left",
                window: tuple[int, int] | None = None, alibi_slopes: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: LayerKV | None = None):
        """x (B, N, C) attends to `context` (B, M, C), or to itself. Returns (B, N, C) [, weights (B, H, N, M)].

        key_padding_mask (B, M) bool, True = real key; attn_mask bool (True = may attend) or float (added),
        broadcastable to (B, H, N, M); is_causal, causal_align, window, alibi_slopes: as in `attention`.
        positions (N,) or (B, N): where the new tokens sit, for RoPE (default: after the cached ones).
        cache: this layer's `LayerKV`; the new keys/values are appended and the queries attend to all of them,
        causally aligned bottom-right (dec.9). key_padding_mask then covers every key, cached and new.
        With a `context` (cross-attention), the cache holds the context's keys/values instead: projected on
        the first call, reused on every later one (the encoder's output is fixed while a decoder generates).
        cu_seqlens (n_seq + 1,): x is (1, T, C) holding sequences packed without padding, each attending within
        itself (`varlen_attention`; self-attention, no masks, no cache, no weights).
        """
        context = x if context is None else context
        self._check_inputs(x, context)
        if cache is not None and cu_seqlens is not None:
            raise ValueError("cache: packed sequences (cu_seqlens) take no KV cache")
        if cache is not None and context is not x:
            if is_causal:
                raise ValueError("is_causal: cross-attention over a cached context is not causal")
            q, k, v = self._project_cross(x, context, cache)
        else:
            q, k, v = self._project(x, context, positions, 0 if cache is None else cache.length)
        if cache is not None and context is x:
            k, v = cache.append(k, v)  # (B, Hkv, past + N, D): (dec.6)
            if is_causal:  # (dec.9): N new queries over past + N keys
                causal_align = "bottom_right"
        options = dict(attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                       dropout_p=self.dropout if self.training else 0.0, causal_align=causal_align, window=window,
                       alibi_slopes=alibi_slopes)
        weights = None
        if cu_seqlens is not None:
            out = self._packed(q, k, v, context is not x, return_weights, cu_seqlens, **options)
        elif return_weights or self.hooked("pattern"):  # the math path hands back its weights
            out, weights = attention(q, k, v, backend=self.backend, return_weights=True, **options)
            patched = self.hook("pattern", weights)
            if patched is not weights:  # an edited pattern is what the heads read with, out = weights @ v
                weights, out = patched, patched @ repeat_kv(v, self.n_heads)  # (B, H, N, M) @ (B, H, M, D)
        else:
            out = attention(q, k, v, backend=self.backend, **options)
        out = self.hook("z", out)
        # (mha.3): concatenate the heads and mix them
        out = self.out_proj(merge_heads(out))  # (B, H, N, D) -> (B, N, C)
        return (out, weights) if return_weights else out

    def _project(self, x, context, positions, past: int):
        """(mha.1): one projection per role, split into heads; then RoPE on q and k (pos.4) at their absolute
        positions (default: after the `past` cached tokens)."""
        fused = fused_qkv(self) if context is x else None
        if fused is not None:  # one product x [W_q; W_k; W_v]^T (minitx.attention.fused_qkv)
            kv_width = self.n_kv_heads * self.head_dim
            q, k, v = torch_F.linear(x, *fused).split([self.d_model, kv_width, kv_width], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(context), self.v_proj(context)
        q = split_heads(q, self.n_heads)  # (B, N, C) -> (B, H, N, D)
        k = split_heads(k, self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
        v = split_heads(v, self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
        if self.rotary is not None:
            if context is not x:
                raise ValueError("rotary: RoPE rotates self-attention only; got a context (cross-attention)")
            if positions is None:
                positions = torch.arange(past, past + x.shape[1], device=x.device)
            q, k = self.rotary.rotate(q, positions), self.rotary.rotate(k, positions)
        return self.hook("q", q), self.hook("k", k), self.hook("v", v)

    def _project_cross(self, x, context, cache: LayerKV):
        """Cross-attention with a cache: the context (an encoder's output) does not change while a decoder
        generates, so its keys and values are projected once, on the first call, and read back afterwards."""
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, N, C) -> (B, H, N, D)
        if cache.length == 0:
            k = split_heads(self.k_proj(context), self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
            v = split_heads(self.v_proj(context), self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
            cache.append(self.hook("k", k), self.hook("v", v))
        if cache.keys.shape[0] != x.shape[0] or cache.length != context.shape[1]:
            raise ValueError(f"cache: expected the keys of this context {tuple(context.shape[:2])}, "
                             f"got cached keys of shape {tuple(cache.keys.shape)}")
        return self.hook("q", q), cache.keys, cache.values

    def _packed(self, q, k, v, cross, return_weights, cu_seqlens, attn_mask, key_padding_mask, **options):
        if cross or attn_mask is not None or key_padding_mask is not None or return_weights or q.shape[0] != 1:
            raise ValueError("cu_seqlens: packed sequences take self-attention on x of shape (1, T, C), "
                             "without context, masks or return_weights")
        packed = [rearrange(t, "1 h t d -> t h d") for t in (q, k, v)]  # (1, H, T, D) -> (T, H, D)
        out = varlen_attention(*packed, cu_seqlens, cu_seqlens, backend=self.backend, **options)
        return rearrange(out, "t h d -> 1 h t d")  # (T, H, D) -> (1, H, T, D)

    def extra_repr(self) -> str:
        kv = "" if self.n_kv_heads == self.n_heads else f", n_kv_heads={self.n_kv_heads}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}{kv}, dropout={self.dropout}, backend={self.backend!r}"
