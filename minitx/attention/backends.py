"""The attention backends and their registry: one interface, interchangeable implementations.

A backend is `fn(q, k, v, *, attn_mask, key_padding_mask, is_causal, dropout_p, scale)` -> (B, H, N, Dv):

* ``"math"``: `minitx.functional.scaled_dot_product_attention`, the readable one (docs/math/multi_head_attention.md).
* ``"sdpa"``: PyTorch's `torch.nn.functional.scaled_dot_product_attention`, with fully masked query rows
  turned into zeros (and zero gradients) as in every minitx backend; with dropout on a CPU, where PyTorch has
  no fused kernel, the math backend.
* ``"flash"``: the Triton kernel, imported from `minitx.kernels.flash_attention` on first use only.

A backend may declare what it does natively in `fn.native_features` (e.g. {"gqa", "window", "causal_align",
"alibi"}); the front door lowers everything else into masks for it (`minitx.attention.masks`). A backend that
runs packed variable-length sequences in one call offers it as `fn.varlen` (flash.19).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as torch_F

from minitx import functional as F
from minitx.attention.masks import band_mask, merge_masks

Backend = Callable[..., torch.Tensor]
_BACKENDS: dict[str, Backend] = {}
_LAZY_BACKENDS = {"flash": ("minitx.kernels.flash_attention", "attention_backend")}


def register_backend(name: str, fn: Backend) -> None:
    """Make `fn(q, k, v, *, attn_mask, key_padding_mask, is_causal, dropout_p, scale)` available as `name`:
    to `attention(..., backend=name)`, every model's `attention_backend`, and the CLI's --attention-backend."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable backend, got {type(fn).__name__}")
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    """Names `get_backend` accepts (``"flash"`` is listed before its import is tried)."""
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))


def check_backend(backend, argument: str = "backend") -> str:
    """`backend` if it names a registered (or lazily registered) backend, else ValueError naming `argument`."""
    if not isinstance(backend, str) or backend not in available_backends():
        raise ValueError(f"{argument}: expected one of {available_backends()}, got {backend!r}")
    return backend


def get_backend(name: str) -> Backend:
    """The backend called `name`; a lazy one (``"flash"``) is imported the first time it is asked for."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    check_backend(name)
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


def _math_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                  scale=None, return_weights=False):
    """Equation (mha.2) per head, by `minitx.functional`; its backward is the documented one.

    `return_weights` (not part of the backend interface) is how MultiHeadAttention gets the weights too.
    """
    mask = merge_masks(attn_mask, key_padding_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale, return_weights=return_weights)


def sdpa_runs_math(dropout_p: float, device_type: str) -> bool:
    """Does the sdpa backend run the math backend for this call? With dropout on a CPU, where PyTorch has no
    fused SDPA kernel (see `_sdpa_backend`)."""
    return dropout_p > 0.0 and device_type == "cpu"


def _sdpa_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                  scale=None):
    """PyTorch's SDPA. Rows with no allowed key are given a harmless all-allowed row, then zeroed.

    Multiplying by the row indicator (not writing zeros in place) is what makes their gradients zero too. On a
    CPU, where asking whether any row needs it costs no device sync, that fix-up runs only when one does.

    With dropout on a CPU PyTorch has no fused kernel: its SDPA runs `_scaled_dot_product_attention_math`, an
    unfused composite of the same equation (mha.2) whose autograd keeps every intermediate. The math backend is
    that equation with its hand-written backward, and a BERT training step with attention dropout runs 4-12%
    faster on it (benchmarks/README.md, "Training throughput"), so there it runs instead.
    """
    if sdpa_runs_math(dropout_p, q.device.type):
        return _math_backend(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                             is_causal=is_causal, dropout_p=dropout_p, scale=scale)
    mask = merge_masks(attn_mask, key_padding_mask)
    if mask is None:
        return torch_F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal,
                                                    scale=scale)
    n, m = q.shape[-2], k.shape[-2]
    if is_causal:  # SDPA refuses attn_mask together with is_causal, so fold the causal mask in
        causal = band_mask(n, m, True, "top_left", None, q.device)  # (N, M), like SDPA's is_causal
        mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
    allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
    row_ok = allowed.any(dim=-1, keepdim=True)  # (..., N, 1): does the query have any key at all?
    fix_rows = q.device.type != "cpu" or not bool(row_ok.all())
    if fix_rows:
        mask = mask | ~row_ok if mask.dtype == torch.bool else torch.where(row_ok, mask, 0.0)
    if mask.dtype != torch.bool:  # SDPA wants a float mask in q's dtype (e.g. a float32 ALiBi bias with fp16 q)
        mask = mask.to(q.dtype)
    out = torch_F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out * row_ok.to(out.dtype) if fix_rows else out


register_backend("math", _math_backend)
register_backend("sdpa", _sdpa_backend)
