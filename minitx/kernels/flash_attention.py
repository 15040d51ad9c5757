"""FlashAttention-2 in Triton: the "flash" attention backend.

`flash_attention(q, k, v, causal, scale, attention_mask)` computes softmax(scale q k^T + mask) v without ever
materialising the (N, M) score matrix: the forward streams key tiles through an online softmax and saves only
the row logsumexp; the backward recomputes the probabilities from it (docs/math/flash_attention.md, (flash.1)
to (flash.16)). The backward is two kernels that each own the rows they write (dK/dV per key tile, dQ per query
tile), so there are no atomics and two backward passes are bit-identical.

Where it runs: on a CUDA GPU (fp32, fp16, bf16), or on the CPU under Triton's interpreter with
`TRITON_INTERPRET=1` set before triton is imported (fp32 and fp16: the interpreter has no bf16).
"""

from __future__ import annotations

import math
import os

import torch
import triton

from minitx.kernels.flash_kernels import _bwd_dkdv_kernel, _bwd_dq_kernel, _bwd_preprocess_kernel, _fwd_kernel

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128
# Under the interpreter every tile is a numpy call: few, small tiles keep the tests fast.
INTERPRETER_BLOCKS = {"BLOCK_N": 32, "BLOCK_M": 32}
# On a GPU a small search keyed on the problem size; benchmarks/ tunes further.
GPU_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s)
    for bn, bm, w, s in [(64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)]
]
_TUNED = {kernel: triton.autotune(GPU_CONFIGS, key=["N", "M", "D"])(kernel)
          for kernel in (_fwd_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel)}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (`TRITON_INTERPRET=1`); tensors then live on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _launch(kernel, n_rows: int, bh: int, *args, **kwargs) -> None:
    """Run `kernel` on a (row tiles, B * H) grid; fixed tiles under the interpreter, autotuned on a GPU."""
    row_block = "BLOCK_M" if kernel is _bwd_dkdv_kernel else "BLOCK_N"  # dK/dV tiles the keys
    grid = lambda meta: (triton.cdiv(n_rows, meta[row_block]), bh)  # noqa: E731
    if interpreting():
        kernel[grid](*args, **kwargs, **INTERPRETER_BLOCKS)
    else:
        _TUNED[kernel][grid](*args, **kwargs)


def _check_inputs(q, k, v, causal, scale, attention_mask) -> None:
    """Refuse what the kernel does not support, saying what it does support."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, H, N or M, D), got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k, v: expected the same shape (B, H, M, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q, k: expected q (B, H, N, D) and k (B, H, M, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if min(q.shape) == 0 or k.shape[2] == 0:
        raise ValueError(f"q, k: expected non-empty tensors, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not 1 <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim D must be 1..{MAX_HEAD_DIM}, got {q.shape[3]}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v: expected one device, got {q.device}, {k.device}, {v.device}")
    _check_device(q)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected bool, got {type(causal).__name__}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise TypeError(f"scale: expected None or a finite number, got {scale!r}")
    if attention_mask is not None:
        expected = (q.shape[0], k.shape[2])
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != expected:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask: expected a (B, M) = {expected} tensor, 1/True = real token; got {got}")
        if attention_mask.device != q.device:
            raise ValueError(f"attention_mask: expected device {q.device} as q, got {attention_mask.device}")


def _check_device(q: torch.Tensor) -> None:
    if interpreting():
        if q.device.type != "cpu":
            raise ValueError(f"q: under TRITON_INTERPRET=1 tensors must be on the CPU, got {q.device}")
        if q.dtype == torch.bfloat16:
            raise TypeError("q: bfloat16 needs a CUDA GPU (Triton's interpreter has no bf16); use float32/float16")
    elif q.device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"q: the flash kernel needs CUDA tensors, or TRITON_INTERPRET=1 (set before importing "
                         f"triton) for CPU tensors; got device {q.device}")


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())  # (B, H, rows, D) strides, in elements


class FlashAttentionFunction(torch.autograd.Function):
    """Forward (flash.3)-(flash.5) and the recomputing backward (flash.13)-(flash.16) as one autograd op."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):
        B, H, N, D = q.shape
        M = k.shape[2]
        out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
        flags = _flags(q, mask, causal)
        _launch(_fwd_kernel, N, B * H, q, k, v, out, lse, q if mask is None else mask,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                H, N, M, D, scale * math.log2(math.e), **flags)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.scale = causal, scale
        lse_natural = lse * math.log(2.0)  # the kernels keep L in base 2 (flash.9); users get natural log
        ctx.mark_non_differentiable(lse_natural)
        return out, lse_natural

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        B, H, N, D = q.shape
        M = k.shape[2]
        block_d = _block_d(D)
        # (flash.15) Delta = rowsum(dO * O), one float per query row
        delta = torch.empty_like(lse)
        pre_block = INTERPRETER_BLOCKS["BLOCK_N"] if interpreting() else 64
        _bwd_preprocess_kernel[(triton.cdiv(N, pre_block), B * H)](
            out, dout, delta, *_strides(out), *_strides(dout), H, N, D, BLOCK_N=pre_block, BLOCK_D=block_d)
        dq = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
        dk = torch.empty(B, H, M, D, dtype=k.dtype, device=k.device)
        dv = torch.empty(B, H, M, D, dtype=v.dtype, device=v.device)
        flags = _flags(q, mask, ctx.causal)
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(dout),
                  H, N, M, D, ctx.scale, ctx.scale * math.log2(math.e))
        mask_arg = q if mask is None else mask  # any pointer will do when HAS_MASK is False: it is never read
        _launch(_bwd_dkdv_kernel, M, B * H, q, k, v, dout, lse, delta, dk, dv, mask_arg, *common, **flags)
        _launch(_bwd_dq_kernel, N, B * H, q, k, v, dout, lse, delta, dq, mask_arg, *common, **flags)
        return dq, dk, dv, None, None, None


def _block_d(d: int) -> int:
    """The head dim padded to a power of two (tl.arange needs one), at least 16 (tl.dot needs K >= 16)."""
    return max(16, triton.next_power_of_2(d))


def _flags(q, mask, causal) -> dict:
    # fp32 inputs: full-precision dots, as plain PyTorch would do (TF32 would lose ~3 decimal digits).
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return dict(HAS_MASK=mask is not None, CAUSAL=causal, DOT_PRECISION=precision, BLOCK_D=_block_d(q.shape[3]))


def flash_attention(q, k, v, causal=False, scale=None, attention_mask=None, return_lse=False):
    """softmax(scale q k^T) v, fused, with optional causal and key-padding masks.

    q (B, H, N, D); k, v (B, H, M, D), any strides; D in 1..128; float32/float16 (and bfloat16 on a GPU).
    causal: key j may be seen by query i iff j <= i (top-left aligned, as torch SDPA's is_causal), (flash.10).
    scale: defaults to 1/sqrt(D).
    attention_mask: (B, M), 1/True = real token, 0/False = padding (flash.10). A query with no allowed key
        returns zeros and zero gradients (flash.11).
    return_lse: also return the row logsumexp L (B, H, N), float32, natural log, -inf for empty rows (flash.5).
    """
    _check_inputs(q, k, v, causal, scale, attention_mask)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    mask = None if attention_mask is None else (attention_mask != 0).to(torch.int8).contiguous()
    out, lse = FlashAttentionFunction.apply(q, k, v, mask, causal, scale)
    return (out, lse) if return_lse else out


def attention_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                      scale=None):
    """The "flash" backend for `minitx.attention`: key padding and causal masks only, no dropout.

    A boolean attn_mask that only varies along the keys, shape (B or 1, 1, 1, M), is a key padding mask
    written as an attention mask and is accepted; any other attn_mask is refused.
    """
    if dropout_p:
        raise ValueError(f"dropout_p: the flash kernel has no dropout, got {dropout_p}; use backend 'math' or "
                         f"'sdpa' for attention dropout")
    if attn_mask is not None:
        key_padding_mask = _merge_key_padding(attn_mask, key_padding_mask, q.shape[0], k.shape[2])
    return flash_attention(q, k, v, causal=bool(is_causal), scale=scale, attention_mask=key_padding_mask)


def _merge_key_padding(attn_mask, key_padding_mask, batch: int, m: int):
    keys_only = (attn_mask.dtype == torch.bool and attn_mask.dim() == 4 and attn_mask.shape[1:3] == (1, 1)
                 and attn_mask.shape[0] in (1, batch) and attn_mask.shape[3] == m)
    if not keys_only:
        raise ValueError(f"attn_mask: the flash backend supports only key padding (key_padding_mask (B, M), or a "
                         f"bool attn_mask of shape (B, 1, 1, M)) and is_causal; got {attn_mask.dtype} "
                         f"{tuple(attn_mask.shape)}. Use backend 'math' or 'sdpa' for general masks")
    mask = attn_mask[:, 0, 0, :].expand(batch, m)  # (B or 1, 1, 1, M) -> (B, M)
    return mask if key_padding_mask is None else mask & key_padding_mask.bool()
