"""The attention implementations a benchmark can compare, by name.

- `minitx:<backend>`: a backend of minitx's front door, `minitx.attention.get_backend(<backend>)` -- "math",
  "sdpa", "flash" or anything registered with `register_backend`.
- `sdpa:<kernel>`: PyTorch's `scaled_dot_product_attention` pinned to one of its kernels with
  `torch.nn.attention.sdpa_kernel` -- "flash", "efficient", "cudnn", "math".

Every implementation is called as `fn(q, k, v, causal, scale) -> out` with q, k, v of shape (B, H, N, D).
An implementation that cannot run here is not an error: `resolve` returns the reason and the sweep records it
as skipped.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], torch.Tensor]

SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}
DEFAULT_IMPLS = ("minitx:math", "minitx:flash") + tuple(f"sdpa:{k}" for k in SDPA_KERNELS)
# Kernels that only make sense to *time* on a GPU: the Triton kernel runs on a CPU only in the interpreter
# (TRITON_INTERPRET=1), which checks correctness but is orders of magnitude slower than any real kernel.
GPU_ONLY = {"minitx:flash"}


def _sdpa(kernel: str) -> AttentionFn:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_KERNELS[kernel])

    def fn(q, k, v, causal, scale):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return fn


def resolve(name: str, device: torch.device) -> tuple[AttentionFn | None, str | None]:
    """(fn, None) for a usable implementation, or (None, reason) when it cannot run on `device`."""
    family, _, which = name.partition(":")
    if family not in ("minitx", "sdpa") or not which:
        raise ValueError(f"impls: expected names like 'minitx:math' or 'sdpa:flash', got {name!r}")
    if name in GPU_ONLY and device.type != "cuda":
        return None, (f"{name} is a Triton GPU kernel; on {device.type} it runs only in the Triton interpreter, "
                      "which checks correctness but cannot be timed meaningfully")
    if family == "sdpa":
        if which not in SDPA_KERNELS:
            raise ValueError(f"impls: expected an sdpa kernel in {sorted(SDPA_KERNELS)}, got {name!r}")
        return _sdpa(which), None
    try:
        backend = importlib.import_module("minitx.attention.backends").get_backend(which)
    except Exception as exc:  # ImportError, KeyError/ValueError for an unknown name, a kernel failing to build
        return None, f"minitx backend {which!r} unavailable: {type(exc).__name__}: {exc}"

    def fn(q, k, v, causal, scale):
        return backend(q, k, v, is_causal=causal, scale=scale)
    return fn, None
