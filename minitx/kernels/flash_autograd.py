"""The autograd op around the flash kernels and their launches (docs/math/flash_attention.md).

Forward (flash.3)-(flash.5), recomputing backward (flash.13)-(flash.16); fixed small tiles under Triton's
interpreter, autotuned report-accepted tiles on a GPU (`flash_configs`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import triton

from minitx.kernels.flash_bwd_kernels import (_bwd_atomic_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel,
                                              _bwd_preprocess_kernel)
from minitx.kernels.flash_tuning import launch_tuned
from minitx.kernels.flash_kernels import _fwd_kernel

# Under the interpreter every tile is a numpy call: few, small tiles keep the tests fast.
INTERPRETER_BLOCKS = {"BLOCK_N": 32, "BLOCK_M": 32}
# Tests may set this to run the tensor-descriptor (TMA) path under the interpreter; on a GPU it is chosen
# for sm_90 and newer when the strides allow it (`tma_ok`).
FORCE_TMA = {"fwd": False}
# name -> the row of the last tuned launch on a GPU (config, registers, spilled registers, Triton version), to
# set beside the compile report's prediction (benchmarks/gpu_check.py).
LAST_LAUNCH: dict = {}
_KERNELS = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel, "atomic": _bwd_atomic_kernel}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (`TRITON_INTERPRET=1`); tensors then live on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class FlashParams:
    """What the kernels need besides tensors. win_left/win_right < 0: that side of the band is open."""
    scale: float
    win_left: int = -1
    win_right: int = -1
    bottom_right: bool = False
    varlen: bool = False
    n_seq: int = 1          # sequences (B, or len(cu_seqlens) - 1 when packed)
    max_n: int = 0
    max_m: int = 0
    dropout_p: float = 0.0
    seed: int = 0           # Philox stream of the dropout mask (flash.21)
    deterministic: bool = True  # False: the single-kernel backward, dQ by atomic adds (flash.24)


def _launch(name: str, n_rows: int, n_programs: int, *args, lengths=(0, 0), reset=None, **kwargs) -> None:
    """Run kernel `name` on a (row tiles, programs) grid; fixed tiles under the interpreter, tuned on a GPU
    (`flash_tuning`: once per head dim, mask kind, dtype and length bucket)."""
    row_block = "BLOCK_M" if name in ("dkdv", "atomic") else "BLOCK_N"  # dK/dV tiles the keys
    grid = lambda meta: (triton.cdiv(n_rows, meta[row_block]), n_programs)  # noqa: E731
    if interpreting():
        _KERNELS[name][grid](*args, **kwargs, **INTERPRETER_BLOCKS)
        return
    LAST_LAUNCH[name] = launch_tuned(_KERNELS[name], name, grid, args, kwargs, *lengths, args[0].dtype, reset)


def block_d(d: int) -> int:
    """The head dim padded to a power of two (tl.arange needs one), at least 16 (tl.dot needs K >= 16)."""
    return max(16, triton.next_power_of_2(d))


def _rows_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, row) strides of a (B, H, rows, D) tensor; a packed one has no batch stride (flash.19)."""
    return (0 if varlen else t.stride(0)), t.stride(1), t.stride(2)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need a unit head-dim stride and 16-byte aligned base and row/head/batch strides."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def _use_tma(k: torch.Tensor, v: torch.Tensor) -> bool:
    if interpreting():
        return FORCE_TMA["fwd"]
    if torch.cuda.get_device_capability(k.device)[0] < 9 or not tma_ok(k, v):
        return False
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=k.device))
    return True


def _flags(q, mask, slopes, p: FlashParams) -> dict:
    # fp32 inputs: full-precision dots, as plain PyTorch would do (TF32 would lose ~3 decimal digits).
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return dict(HAS_MASK=mask is not None, HAS_LEFT=p.win_left >= 0, HAS_RIGHT=p.win_right >= 0,
                BOTTOM_RIGHT=p.bottom_right, HAS_ALIBI=slopes is not None, VARLEN=p.varlen,
                HAS_DROPOUT=p.dropout_p > 0.0,
                DOT_PRECISION=precision, HEAD_DIM=q.shape[3], BLOCK_D=block_d(q.shape[3]))


class FlashAttentionFunction(torch.autograd.Function):
    """q (B, H, N, D), k and v (B, H_kv, M, D) with a unit head-dim stride; packed sequences come as B = 1
    with cu_q / cu_k (int32, n_seq + 1). mask (B, M) int8 or None; slopes (H,) float32 or None."""

    @staticmethod
    def forward(ctx, q, k, v, mask, slopes, cu_q, cu_k, p: FlashParams):
        q, k, ctx.sign, scale = _positive_scale(q, k, p.scale)
        p = dataclasses.replace(p, scale=scale)
        _, H, N, D = q.shape
        H_kv = k.shape[1]
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        dummy = q  # any pointer will do for an argument its flag says is never read
        flags = _flags(q, mask, slopes, p)
        _launch("fwd", p.max_n, p.n_seq * H, q, k, v, out, lse, _or(mask, dummy), _or(slopes, dummy),
                _or(cu_q, dummy), _or(cu_k, dummy), *_rows_strides(q, p.varlen), *_rows_strides(k, p.varlen),
                *_rows_strides(v, p.varlen), *_rows_strides(out, p.varlen), *_rows_strides(lse[..., None], p.varlen)[:2],
                H, H // H_kv, p.max_n, p.max_m, p.scale * math.log2(math.e), p.win_left, p.win_right,
                p.seed, p.dropout_p, lengths=(p.max_n, p.max_m), USE_TMA=_use_tma(k, v), **flags)
        ctx.save_for_backward(q, k, v, out, lse, mask, slopes, cu_q, cu_k)
        ctx.params = p
        lse_natural = lse * math.log(2.0)  # the kernels keep L in base 2 (flash.9); users get natural log
        ctx.mark_non_differentiable(lse_natural)
        return out, lse_natural

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask, slopes, cu_q, cu_k = ctx.saved_tensors
        p: FlashParams = ctx.params
        _, H, N, D = q.shape
        H_kv = k.shape[1]
        if dout.stride(-1) != 1:  # e.g. the expanded (stride 0) gradient of out.sum()
            dout = dout.contiguous()
        dummy = q
        lse_strides = _rows_strides(lse[..., None], p.varlen)[:2]
        # (flash.15) Delta = rowsum(dO * O), one float per query row
        delta = torch.empty_like(lse)
        pre_block = INTERPRETER_BLOCKS["BLOCK_N"] if interpreting() else 64
        _bwd_preprocess_kernel[(triton.cdiv(p.max_n, pre_block), p.n_seq * H)](
            out, dout, delta, _or(cu_q, dummy), *_rows_strides(out, p.varlen), *_rows_strides(dout, p.varlen),
            *lse_strides, H, p.max_n, VARLEN=p.varlen, HEAD_DIM=D, BLOCK_N=pre_block, BLOCK_D=block_d(D))
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
        flags = _flags(q, mask, slopes, p)
        tensors = (q, k, v, dout, lse, delta)
        extra = (_or(mask, dummy), _or(slopes, dummy), _or(cu_q, dummy), _or(cu_k, dummy))
        strides = (*_rows_strides(q, p.varlen), *_rows_strides(k, p.varlen), *_rows_strides(v, p.varlen),
                   *_rows_strides(dout, p.varlen), *lse_strides)
        scalars = (H // H_kv, p.max_n, p.max_m, p.scale, p.scale * math.log2(math.e), p.win_left, p.win_right,
                   p.seed, p.dropout_p)
        if p.deterministic or not _single_kernel_here(q):  # two kernels, each owning the rows it writes (flash.16)
            _launch("dkdv", p.max_m, p.n_seq * H_kv, *tensors, dk, dv, *extra, *strides,
                    *_rows_strides(dk, p.varlen), H_kv, *scalars, lengths=(p.max_n, p.max_m), **flags)
            _launch("dq", p.max_n, p.n_seq * H, *tensors, dq, *extra, *strides,
                    *_rows_strides(dq, p.varlen), H, *scalars, lengths=(p.max_n, p.max_m), **flags)
        else:  # one kernel; dQ summed by atomic adds in fp32 (flash.24)
            dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
            _launch("atomic", p.max_m, p.n_seq * H_kv, *tensors, dk, dv, dq_acc, *extra, *strides,
                    *_rows_strides(dk, p.varlen), *_rows_strides(dq_acc, p.varlen), H_kv, *scalars,
                    lengths=(p.max_n, p.max_m), reset=dq_acc.zero_, **flags)
            dq = dq_acc.to(q.dtype)
        if ctx.sign < 0:  # the kernels saw -k (see _positive_scale): d/dk = -d/d(-k)
            dk = dk.neg_()
        elif ctx.sign == 0:  # scale 0: the scores do not depend on q (or k)
            dq = dq.zero_()
        return dq, dk, dv, None, None, None, None, None


def _positive_scale(q, k, scale: float):
    """(q, k, sign of scale, scale > 0) with the same scores: the kernels fold the scale into the row max
    and one FMA (flash.22), which needs it positive. scale < 0: tau q.k = |tau| q.(-k); scale = 0: every
    score is 0 = 1 * 0.k."""
    if scale > 0:
        return q, k, 1, scale
    if scale < 0:
        return q, k.neg(), -1, -scale
    return torch.zeros_like(q), k, 0, 1.0


def _single_kernel_here(q: torch.Tensor) -> bool:
    """The single-kernel backward runs where the compile report has a spill-free config of it for this GPU,
    head dim and Triton (flash.24); elsewhere (e.g. D = 128 with every feature) the deterministic kernels do."""
    if interpreting():
        return True
    from minitx.kernels.flash_configs import arch_of, single_kernel_ok

    return single_kernel_ok(arch_of(torch.cuda.get_device_capability(q.device)), block_d(q.shape[3]))


def _or(t, fallback):
    return fallback if t is None else t
