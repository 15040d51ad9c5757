"""The attention implementations a benchmark can compare, by name.

- `minitx:<backend>`: a backend of minitx's front door, `minitx.attention.get_backend(<backend>)` -- "math",
  "sdpa", "flash" or anything registered with `register_backend`.
- `sdpa:<kernel>`: PyTorch's `scaled_dot_product_attention` pinned to one of its kernels with
  `torch.nn.attention.sdpa_kernel` -- "flash", "efficient", "cudnn", "math".
- `flex`: PyTorch's FlexAttention (`torch.nn.attention.flex_attention`, compiled), timed on CUDA only.
- a custom kernel, `NAME=FILE.py:FUNCTION` (`load_custom`, the CLI's `--custom`): FUNCTION has SDPA's
  signature, `fn(q, k, v, attn_mask=None, is_causal=False, scale=None)`.

Every implementation is called as `fn(q, k, v, causal, scale) -> out` with q of shape (B, H, N, D) and k, v of
shape (B, H_kv, N, D), H_kv dividing H (grouped-query sweeps); a sliding-window sweep adds `window=(left,
right)` (flash.10), a dropout sweep `dropout_p=p` to the timed calls (one without it raises NotImplementedError
or lacks the argument: skipped).
A name that matches nothing is an error (`resolve` raises ValueError naming it); an implementation that
exists but cannot run here is not: `resolve` returns the reason and the sweep records it as skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], torch.Tensor]

SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}
DEFAULT_IMPLS = ("minitx:math", "minitx:flash") + tuple(f"sdpa:{k}" for k in SDPA_KERNELS) + ("flex",)
# Kernels that only make sense to *time* on a GPU: the Triton kernel runs on a CPU only in the interpreter
# (TRITON_INTERPRET=1), which checks correctness but is orders of magnitude slower than any real kernel;
# FlexAttention on a CPU is Inductor's C++ code, not the kernel a GPU comparison is about.
GPU_ONLY = {"minitx:flash", "flex"}
# SDPA's fused kernels that exist only on CUDA: on a CPU they are "no viable backend" at every point.
CUDA_ONLY_SDPA = {"efficient", "cudnn"}


def band_mask(n: int, m: int, causal: bool, window: tuple[int, int] | None, device) -> torch.Tensor | None:
    """The bool (N, M) mask, True = may attend, of causal (top-left) and a sliding window (left, right), as
    (flash.10); None when neither is set (the kernel's own is_causal is then the fast path)."""
    if window is None:
        return None
    left, right = window
    rel = torch.arange(m, device=device)[None, :] - torch.arange(n, device=device)[:, None]
    allowed = torch.ones(n, m, dtype=torch.bool, device=device)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if right >= 0:
        allowed &= rel <= right
    if left >= 0:
        allowed &= rel >= -left
    return allowed


def _sdpa_call(q, k, v, causal, scale, window, dropout_p=0.0):
    mask = band_mask(q.shape[2], k.shape[2], causal, window, q.device)
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale,
                                          dropout_p=dropout_p, **gqa)


def _sdpa(kernel: str) -> AttentionFn:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_KERNELS[kernel])

    def fn(q, k, v, causal, scale, window=None, dropout_p=0.0):
        with sdpa_kernel(backend):
            return _sdpa_call(q, k, v, causal, scale, window, dropout_p)
    return fn


def _flex() -> AttentionFn:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)  # default dynamism: a sweep over N recompiles once, not per N
    masks: dict = {}

    def fn(q, k, v, causal, scale, window=None, dropout_p=0.0):
        if dropout_p:
            raise NotImplementedError("FlexAttention has no attention dropout")
        block_mask = None
        left, right = window if window is not None else (-1, -1)
        if causal:
            right = 0 if right < 0 else min(right, 0)
        if left >= 0 or right >= 0:
            key = (q.shape[2], k.shape[2], q.device, left, right)
            if key not in masks:
                def mask_mod(b, h, q_idx, kv_idx):
                    ok = kv_idx >= 0
                    if right >= 0:
                        ok = ok & (kv_idx - q_idx <= right)
                    if left >= 0:
                        ok = ok & (kv_idx - q_idx >= -left)
                    return ok
                masks[key] = create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
            block_mask = masks[key]
        return compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return fn


def load_custom(spec: str) -> tuple[str, AttentionFn]:
    """(NAME, fn) from "NAME=FILE.py:FUNCTION"; FUNCTION has SDPA's signature and is called as
    FUNCTION(q, k, v, attn_mask=None, is_causal=causal, scale=scale)."""
    name, eq, target = spec.partition("=")
    path, colon, function = target.rpartition(":")
    if not eq or not colon or not name.strip() or not path or not function.isidentifier():
        raise ValueError(f"--custom: expected NAME=FILE.py:FUNCTION, got {spec!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--custom {name}: no such file {str(file)!r}")
    module_spec = importlib.util.spec_from_file_location(f"minitx_custom_{abs(hash(str(file.resolve())))}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)  # the user's own kernel file, named on the command line
    except Exception as exc:  # noqa: BLE001 (a broken file is the user's to fix: say which and why)
        raise ValueError(f"--custom {name}: importing {str(file)!r} failed: {type(exc).__name__}: {exc}") from exc
    user_fn = getattr(module, function, None)
    if not callable(user_fn):
        raise ValueError(f"--custom {name}: {str(file)!r} defines no function {function!r}")
    try:
        inspect.signature(user_fn).bind(None, None, None, attn_mask=None, is_causal=False, scale=None)
    except TypeError as exc:
        raise ValueError(f"--custom {name}: {function} must take SDPA's arguments (q, k, v, attn_mask=None, "
                         f"is_causal=False, scale=None): {exc}") from None
    except ValueError:  # a builtin or C function without a signature: trust it
        pass

    def fn(q, k, v, causal, scale, window=None, dropout_p=0.0):
        if dropout_p:
            raise NotImplementedError("a --custom kernel has SDPA's signature without dropout_p")
        if q.shape[1] != k.shape[1]:  # SDPA's signature has no GQA: the kernel sees repeated key/value heads
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        mask = band_mask(q.shape[2], k.shape[2], causal, window, q.device)
        return user_fn(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    return name.strip(), fn


def check_name(name: str) -> None:
    """Raise ValueError unless `name` names an implementation that exists (runnable here or not)."""
    family, _, which = name.partition(":")
    if name == "flex":
        return
    if family not in ("minitx", "sdpa") or not which:
        raise ValueError(f"impls: expected names like 'minitx:math', 'sdpa:flash' or 'flex', got {name!r}")
    if family == "sdpa" and which not in SDPA_KERNELS:
        raise ValueError(f"impls: expected an sdpa kernel in {sorted(SDPA_KERNELS)}, got {name!r}")
    if family == "minitx":
        known = importlib.import_module("minitx.attention.backends").available_backends()
        if which not in known:
            raise ValueError(f"impls: no minitx backend {which!r} in {name!r}; known: "
                             f"{', '.join('minitx:' + b for b in known)}")


def interpreter_allowed() -> bool:
    """Dry runs time the Triton kernel under the interpreter (MINITX_BENCH_INTERPRETER=1 with TRITON_INTERPRET=1):
    meaningless numbers, but every step of a GPU session runs end to end on a CPU."""
    return (os.environ.get("MINITX_BENCH_INTERPRETER", "0") not in ("", "0")
            and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


def runnable_here(name: str, device: torch.device) -> bool:
    """Whether `name` can be timed on `device` (the CPU default impl list keeps only these)."""
    if device.type == "cuda":
        return True
    if name == "minitx:flash":
        return interpreter_allowed()
    return name not in GPU_ONLY and name.partition(":")[2] not in CUDA_ONLY_SDPA


def resolve(name: str, device: torch.device) -> tuple[AttentionFn | None, str | None]:
    """(fn, None) for a usable implementation, or (None, reason) when it cannot run on `device`; ValueError
    when `name` matches no implementation at all."""
    check_name(name)
    family, _, which = name.partition(":")
    if name in GPU_ONLY and device.type != "cuda" and not (name == "minitx:flash" and interpreter_allowed()):
        what = "a Triton GPU kernel" if name == "minitx:flash" else "timed on CUDA only"
        return None, (f"{name} is {what}; on {device.type} it runs only in the Triton interpreter or Inductor's "
                      "CPU code, which checks correctness but cannot be timed meaningfully")
    if name == "flex":
        return _flex(), None
    if family == "sdpa":
        return _sdpa(which), None
    try:
        backend = importlib.import_module("minitx.attention.backends").get_backend(which)
    except Exception as exc:  # ImportError (no Triton), a kernel failing to build
        return None, f"minitx backend {which!r} unavailable: {type(exc).__name__}: {exc}"

    front_door = importlib.import_module("minitx.attention.front_door").attention

    def fn(q, k, v, causal, scale, window=None, dropout_p=0.0):
        if window is None and q.shape[1] == k.shape[1]:
            return backend(q, k, v, is_causal=causal, scale=scale, dropout_p=dropout_p)
        # windows and grouped-query heads through the front door, which lowers what a backend lacks
        return front_door(q, k, v, backend=which, is_causal=causal, scale=scale, window=window,
                          dropout_p=dropout_p)
    return fn, None
