"""Scaled dot-product attention behind one front door, interchangeable backends, and MultiHeadAttention.

`attention(q, k, v, backend=...)` checks shapes and masks once, then hands the call to a backend:

* ``"math"``: `minitx.functional.scaled_dot_product_attention`, the readable one (docs/math/multi_head_attention.md).
* ``"sdpa"``: PyTorch's `torch.nn.functional.scaled_dot_product_attention`, with fully masked query rows
  turned into zeros (and zero gradients) as in every minitx backend.
* ``"flash"``: the Triton kernel, imported from `minitx.kernels.flash_attention` on first use only.

`MultiHeadAttention` is equations (mha.1)-(mha.4): project, split into heads, attend, concatenate, project.

Beyond plain masks the front door takes what FlashAttention users ask for: grouped-query k, v (fewer heads
than q), `causal_align="bottom_right"` (decoding with a KV cache), sliding `window`s, `alibi_slopes`, and
packed variable-length sequences (`varlen_attention`). A backend that declares one in `fn.native_features`
(the flash kernel) gets it as is; for the others `minitx.attention_masks` lowers it into masks, a bias and
repeated heads, so the readable math path computes the same thing.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as torch_F
from einops import rearrange
from torch import nn

from minitx import functional as F
from minitx.attention_checks import _check_dropout, _check_masks, _check_qkv
from minitx.attention_masks import check_options, lower
from minitx.functional._checks import _check_scale

__all__ = ["register_backend", "get_backend", "available_backends", "attention", "varlen_attention",
           "merge_masks", "MultiHeadAttention"]

Backend = Callable[..., torch.Tensor]
_BACKENDS: dict[str, Backend] = {}
_LAZY_BACKENDS = {"flash": ("minitx.kernels.flash_attention", "attention_backend")}


def register_backend(name: str, fn: Backend) -> None:
    """Make `fn(q, k, v, *, attn_mask, key_padding_mask, is_causal, dropout_p, scale)` available as `name`."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable backend, got {type(fn).__name__}")
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    """Names `get_backend` accepts (``"flash"`` is listed before its import is tried)."""
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))


def get_backend(name: str) -> Backend:
    """The backend called `name`; a lazy one (``"flash"``) is imported the first time it is asked for."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name not in _LAZY_BACKENDS:
        raise ValueError(f"backend: expected one of {available_backends()}, got {name!r}")
    module_name, attr = _LAZY_BACKENDS[name]
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RuntimeError(
            f"backend {name!r} could not be loaded from {module_name}:{attr} ({err}). It needs triton and "
            "either a CUDA GPU or TRITON_INTERPRET=1 (the Triton interpreter, on the CPU); "
            "use backend='math' or 'sdpa' otherwise") from err
    register_backend(name, fn)
    return fn


def merge_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """One mask from an allowed-mask / float bias (broadcastable to (B, H, N, M)) and a (B, M) padding mask.

    Booleans combine with AND; a float bias gets -inf where the key is padding.
    """
    if key_padding_mask is None:
        return attn_mask
    pad = rearrange(key_padding_mask, "b m -> b 1 1 m")  # (B, M) -> (B, 1, 1, M)
    if attn_mask is None:
        return pad
    if attn_mask.dtype == torch.bool:
        return attn_mask & pad
    return torch.where(pad, attn_mask, float("-inf"))  # broadcasts both ways, unlike masked_fill


def _math_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                  scale=None, return_weights=False):
    """Equation (mha.2) per head, by `minitx.functional`; its backward is the documented one.

    `return_weights` (not part of the backend interface) is how MultiHeadAttention gets the weights too.
    """
    mask = merge_masks(attn_mask, key_padding_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale, return_weights=return_weights)


def _sdpa_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                  scale=None):
    """PyTorch's SDPA. Rows with no allowed key are given a harmless all-allowed row, then zeroed.

    Multiplying by the row indicator (not writing zeros in place) is what makes their gradients zero too.
    """
    mask = merge_masks(attn_mask, key_padding_mask)
    if mask is None:
        return torch_F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal,
                                                    scale=scale)
    n, m = q.shape[-2], k.shape[-2]
    if is_causal:  # SDPA refuses attn_mask together with is_causal, so fold the causal mask in
        causal = F.causal_mask(n, m, device=q.device)  # (N, M), top-left aligned like SDPA's is_causal
        mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
    allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
    row_ok = allowed.any(dim=-1, keepdim=True)  # (..., N, 1): does the query have any key at all?
    if mask.dtype == torch.bool:
        safe_mask = mask | ~row_ok
    else:  # SDPA wants a float mask in q's dtype (e.g. a float32 ALiBi bias with fp16 q)
        safe_mask = torch.where(row_ok, mask, torch.zeros((), dtype=mask.dtype, device=mask.device)).to(q.dtype)
    out = torch_F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask, dropout_p=dropout_p, scale=scale)
    return out * row_ok.to(out.dtype)


register_backend("math", _math_backend)
register_backend("sdpa", _sdpa_backend)


def attention(q, k, v, *, backend: str = "math", attn_mask=None, key_padding_mask=None, is_causal: bool = False,
              dropout_p: float = 0.0, scale: float | None = None, causal_align: str = "top_left",
              window: tuple[int, int] | None = None, alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, equation (mha.2), computed by the named backend.

    q (B, H, N, D), k (B, H_kv, M, D), v (B, H_kv, M, Dv) -> (B, H, N, Dv); H_kv divides H (grouped-query
    attention: query head h reads key/value head h // (H / H_kv)). `attn_mask` is bool (True = may attend)
    or float (added to the scores), broadcastable to (B, H, N, M); `key_padding_mask` is bool (B, M), True =
    real token. `causal_align` "top_left" (torch SDPA's is_causal) or "bottom_right" (FlashAttention's: the
    last query sees every key, as a KV cache needs); `window` (left, right) keeps keys j with
    -left <= j - i - off <= right (-1 = unbounded; off = M - N when bottom-right aligned, else 0);
    `alibi_slopes` (H,) adds -slope_h |j - i - off|. A query with no allowed key gets zeros.
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
    fn = get_backend(backend)
    k, v, attn_mask, is_causal, extra = lower(q, k, v, attn_mask, is_causal, causal_align, window, alibi_slopes,
                                              getattr(fn, "native_features", frozenset()))
    return fn(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
              dropout_p=dropout_p, scale=scale, **extra)


class MultiHeadAttention(nn.Module):
    """H attention heads side by side, equations (mha.1)-(mha.4).

    Each head attends in its own D = C / H dimensional subspace; the heads' outputs are concatenated back to
    width C and mixed by `out_proj` (mha.3). It is not an average over heads.
    Four C x C projections hold 4C^2 + 4C parameters with biases, whatever H (mha.5); a forward costs about
    8NC^2 + 4NMC FLOPs and holds H N M weights (mha.6).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 backend: str = "math", n_kv_heads: int | None = None):
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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.n_kv_heads = n_kv_heads  # fewer than n_heads: grouped-query (1: multi-query) attention, (flash.18)
        self.dropout = dropout
        self.backend = backend
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if not isinstance(name, str) or name not in available_backends():
            raise ValueError(f"backend: expected one of {available_backends()}, got {name!r}")
        self._backend = name

    def _masks(self, attention_mask, b: int, n: int, m: int):
        """Split `attention_mask` into (attn_mask, key_padding_mask) for the front door."""
        if attention_mask is None:
            return None, None
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask: expected a Tensor, got {type(attention_mask).__name__}")
        if attention_mask.dim() == 2:
            if tuple(attention_mask.shape) != (b, m):
                raise ValueError(f"attention_mask: expected (B, M) = {(b, m)} with 1/True for real tokens, "
                                 f"got {tuple(attention_mask.shape)}")
            return None, attention_mask != 0  # HF style 1/0 -> True/False
        if attention_mask.dim() == 4:
            if attention_mask.dtype != torch.bool:
                raise TypeError(f"attention_mask: a 4-d mask must be bool (True = may attend), "
                                f"got {attention_mask.dtype}")
            if tuple(attention_mask.shape) not in ((b, 1, n, m), (b, self.n_heads, n, m)):
                raise ValueError(f"attention_mask: expected (B, 1 or H, N, M) = ({b}, 1 or {self.n_heads}, "
                                 f"{n}, {m}), got {tuple(attention_mask.shape)}")
            return attention_mask, None
        raise ValueError(f"attention_mask: expected (B, M) or (B, 1 or H, N, M), got {tuple(attention_mask.shape)}")

    def _check_inputs(self, x, context) -> None:
        for name, t in (("x", x), ("context", context)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name}: expected shape (B, L, {self.d_model}), got {tuple(t.shape)}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context: expected batch size {x.shape[0]} as x, got {context.shape[0]}")
        if context.dtype != x.dtype:
            raise TypeError(f"context: expected dtype {x.dtype} as x, got {context.dtype}")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, attention_mask=None,
                is_causal: bool = False, return_weights: bool = False, *, causal_align: str = "top_left",
                window: tuple[int, int] | None = None, alibi_slopes: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None):
        """x (B, N, C) attends to `context` (B, M, C), or to itself. Returns (B, N, C) [, weights (B, H, N, M)].

        causal_align, window, alibi_slopes: as in `attention`. cu_seqlens (n_seq + 1,): x is (1, T, C) holding
        sequences packed without padding, each attending within itself (`varlen_attention`; self-attention,
        no attention_mask, no weights).
        """
        context = x if context is None else context
        self._check_inputs(x, context)
        (b, n, _), m = x.shape, context.shape[1]
        options = dict(causal_align=causal_align, window=window, alibi_slopes=alibi_slopes)
        # (mha.1): one projection per role, then split the width into heads
        q = rearrange(self.q_proj(x), "b n (h d) -> b h n d", h=self.n_heads)  # (B, N, C) -> (B, H, N, D)
        k = rearrange(self.k_proj(context), "b m (h d) -> b h m d", h=self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
        v = rearrange(self.v_proj(context), "b m (h d) -> b h m d", h=self.n_kv_heads)  # (B, M, Hkv D) -> (B, Hkv, M, D)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if cu_seqlens is not None:
            out = self._packed(q, k, v, context is not x, attention_mask, return_weights, cu_seqlens,
                               is_causal=is_causal, dropout_p=dropout_p, **options)
        elif return_weights:  # only the math path can hand back its weights
            attn_mask, key_padding_mask = self._masks(attention_mask, b, n, m)
            check_options(causal_align, window, alibi_slopes, self.n_heads)
            k, v, attn_mask, is_causal, _ = lower(q, k, v, attn_mask, is_causal, causal_align, window,
                                                  alibi_slopes, frozenset())
            out, weights = _math_backend(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                         is_causal=is_causal, dropout_p=dropout_p, return_weights=True)
        else:
            attn_mask, key_padding_mask = self._masks(attention_mask, b, n, m)
            out = attention(q, k, v, backend=self.backend, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                            is_causal=is_causal, dropout_p=dropout_p, **options)
        # (mha.3): concatenate the heads and mix them
        out = self.out_proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, H, N, D) -> (B, N, C)
        return (out, weights) if return_weights else out

    def _packed(self, q, k, v, cross, attention_mask, return_weights, cu_seqlens, **options):
        if cross or attention_mask is not None or return_weights or q.shape[0] != 1:
            raise ValueError("cu_seqlens: packed sequences take self-attention on x of shape (1, T, C), "
                             "without context, attention_mask or return_weights")
        packed = [rearrange(t, "1 h t d -> t h d") for t in (q, k, v)]  # (1, H, T, D) -> (T, H, D)
        out = varlen_attention(*packed, cu_seqlens, cu_seqlens, backend=self.backend, **options)
        return rearrange(out, "t h d -> 1 h t d")  # (T, H, D) -> (1, H, T, D)

    def extra_repr(self) -> str:
        kv = "" if self.n_kv_heads == self.n_heads else f", n_kv_heads={self.n_kv_heads}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}{kv}, dropout={self.dropout}, backend={self.backend!r}"


# Packed sequences call `attention` per sequence; defined in their own module, importable from here too.
from minitx.attention_varlen import varlen_attention  # noqa: E402
