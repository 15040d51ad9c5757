"""FlashAttention-2 in Triton: the "flash" attention backend.

`flash_attention(q, k, v, causal, scale, attention_mask)` computes softmax(scale q k^T + mask) v without ever
materialising the (N, M) score matrix: the forward streams key tiles through an online softmax and saves only
the row logsumexp; the backward recomputes the probabilities from it (docs/math/flash_attention.md, (flash.1)
to (flash.16)). The backward is two kernels that each own the rows they write (dK/dV per key tile, dQ per query
tile), so there are no atomics and two backward passes are bit-identical; `deterministic=False` asks for the
single-kernel backward with dQ by atomic adds instead (flash.24).

Where it runs: on a CUDA GPU (fp32, fp16, bf16), or on the CPU under Triton's interpreter with
`TRITON_INTERPRET=1` set before triton is imported (fp32 and fp16: the interpreter has no bf16).
"""

from __future__ import annotations

import math

import torch
import triton

from minitx.kernels.flash_autograd import (INTERPRETER_BLOCKS, FlashAttentionFunction, FlashParams,  # noqa: F401
                                          block_d, interpreting)
from minitx.kernels.flash_configs import CANDIDATES  # noqa: F401

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
ALIGNS = ("top_left", "bottom_right")


def _check_inputs(q, k, v, causal, scale, attention_mask, packed=False) -> None:
    """Refuse what the kernel does not support, saying what it does support."""
    rank, layout = (3, "(T, H, D)") if packed else (4, "(B, H, N or M, D)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{name}: expected shape {layout}, got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k, v: expected the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    heads = -2 if packed else 1
    if (not packed and q.shape[0] != k.shape[0]) or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k: expected q (B, H, N, D) and k (B, H_kv, M, D), got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if k.shape[heads] == 0 or q.shape[heads] % k.shape[heads]:
        raise ValueError(f"k: expected a number of heads that divides q's {q.shape[heads]} (grouped-query "
                         f"attention), got {k.shape[heads]}")
    if min(q.shape) == 0 or min(k.shape) == 0:
        raise ValueError(f"q, k: expected non-empty tensors, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim D must be 1..{MAX_HEAD_DIM}, got {q.shape[-1]}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v: expected one device, got {q.device}, {k.device}, {v.device}")
    _check_device(q)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected bool, got {type(causal).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
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


def _window(causal, causal_align, window) -> tuple[int, int, bool]:
    """(win_left, win_right, bottom_right) from the options; -1 leaves a side of the band open (flash.10)."""
    if causal_align not in ALIGNS:
        raise ValueError(f"causal_align: expected one of {ALIGNS}, got {causal_align!r}")
    left, right = -1, -1
    if window is not None:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or any(isinstance(w, bool) or not isinstance(w, int) or w < -1 for w in window)):
            raise ValueError(f"window: expected (left, right), ints >= 0 or -1 for unbounded, got {window!r}")
        left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right, causal_align == "bottom_right"


def _check_slopes(slopes, q, heads: int):
    if slopes is None:
        return None
    if not isinstance(slopes, torch.Tensor) or slopes.shape != (heads,) or not slopes.is_floating_point():
        got = tuple(slopes.shape) if isinstance(slopes, torch.Tensor) else type(slopes).__name__
        raise ValueError(f"alibi_slopes: expected a float tensor of shape (H,) = ({heads},), got {got}")
    return slopes.detach().to(device=q.device, dtype=torch.float32).contiguous()


def _unit_last_stride(*tensors):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def _dropout(dropout_p, seed) -> tuple[float, int]:
    """(p, Philox seed); a seed of None is drawn from torch's default generator, so torch.manual_seed repeats it."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if dropout_p > 0 else 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"dropout_seed: expected an int in [0, 2**31), got {seed!r}")
    return float(dropout_p), seed


def dropout_keep_mask(shape, dropout_p: float, dropout_seed: int, device=None) -> torch.Tensor:
    """The bool keep-mask (B, H, N, M) the kernels draw for `dropout_seed` (flash.21), for tests and debugging.

    For packed sequences pass (1, H, max N, max M): element (s H + h, i, j) is then sequence s's."""
    b, h, n, m = shape
    out = torch.empty(b, h, n, m, dtype=torch.int8, device=device)
    from minitx.kernels.flash_kernels import _dropout_mask_kernel

    block = INTERPRETER_BLOCKS["BLOCK_N"] if interpreting() else 64
    _dropout_mask_kernel[(triton.cdiv(n, block), triton.cdiv(m, block), b * h)](
        out, dropout_seed, float(dropout_p), n, m, BLOCK_N=block, BLOCK_M=block)
    return out.bool()


def flash_attention(q, k, v, causal=False, scale=None, attention_mask=None, return_lse=False, *,
                    causal_align="top_left", window=None, alibi_slopes=None, dropout_p=0.0, dropout_seed=None,
                    deterministic=True):
    """softmax(scale q k^T + bias) v, fused, with causal, sliding-window, key-padding masks and ALiBi.

    q (B, H, N, D); k, v (B, H_kv, M, D) with H_kv dividing H (grouped-query / multi-query attention: query
        head h reads key/value head h // (H / H_kv), flash.18); D in 1..256; float32/float16 (and bf16 on a GPU).
    causal: key j may be seen by query i iff j <= i + off (flash.10), with off = 0 for causal_align
        "top_left" (torch SDPA's is_causal) or M - N for "bottom_right" (FlashAttention-2's, what a KV cache
        needs: the last query sees every key).
    window: (left, right), sliding-window (local) attention: j - i - off in [-left, right]; -1 = unbounded.
    alibi_slopes: (H,) float: adds -slope_h |j - i - off| to the scores (flash.20); not differentiated.
    dropout_p, dropout_seed: inverted dropout on the attention weights from a Philox stream (flash.21): the
        same seed gives the same mask (`dropout_keep_mask`); None draws a seed from torch's generator.
    scale: defaults to 1/sqrt(D).
    attention_mask: (B, M), 1/True = real token, 0/False = padding (flash.10). A query with no allowed key
        returns zeros and zero gradients (flash.11).
    return_lse: also return the row logsumexp L (B, H, N), float32, natural log, -inf for empty rows (flash.5).
    deterministic: True (default) runs the two-kernel backward, bit-identical from run to run; False the
        single-kernel one that adds dQ atomically (flash.24): less recomputation, dQ's last bits vary. On a GPU
        it runs only where the compile report has a spill-free config of it (D <= 64 under Triton 3.6 and
        3.9); elsewhere the deterministic kernels run.
    """
    _check_inputs(q, k, v, causal, scale, attention_mask)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected bool, got {type(deterministic).__name__}")
    left, right, bottom_right = _window(causal, causal_align, window)
    slopes = _check_slopes(alibi_slopes, q, q.shape[1])
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    mask = None if attention_mask is None else (attention_mask != 0).to(torch.int8).contiguous()
    p_drop, seed = _dropout(dropout_p, dropout_seed)
    params = FlashParams(scale, left, right, bottom_right, False, q.shape[0], q.shape[2], k.shape[2], p_drop, seed,
                         deterministic)
    out, lse = FlashAttentionFunction.apply(*_unit_last_stride(q, k, v), mask, slopes, None, None, params)
    return (out, lse) if return_lse else out


def _check_cu_seqlens(name: str, cu, total: int, device) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.is_floating_point():
        raise ValueError(f"{name}: expected an integer tensor (n_seq + 1,) of offsets 0 = c_0 <= ... = T, got "
                         f"{cu!r}")
    lengths = cu[1:] - cu[:-1]
    if int(cu[0]) != 0 or int(cu[-1]) != total or bool((lengths < 0).any()):
        raise ValueError(f"{name}: expected non-decreasing offsets from 0 to {total}, got {cu.tolist()}")
    return cu.to(device=device, dtype=torch.int32).contiguous()


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=False, scale=None, return_lse=False, *,
                           causal_align="top_left", window=None, alibi_slopes=None, dropout_p=0.0,
                           dropout_seed=None, deterministic=True):
    """`flash_attention` over variable-length sequences packed without padding (flash.19).

    q (T_q, H, D) and k, v (T_k, H_kv, D) hold sequence s in rows cu_seqlens_q[s]:cu_seqlens_q[s+1] (and
    likewise for k); every other option is `flash_attention`'s, applied per sequence. Returns (T_q, H, D)
    [and the logsumexp (H, T_q)].
    """
    _check_inputs(q, k, v, causal, scale, None, packed=True)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected bool, got {type(deterministic).__name__}")
    cu_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    cu_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_k: expected {cu_q.numel()} offsets as cu_seqlens_q, got {cu_k.numel()}")
    left, right, bottom_right = _window(causal, causal_align, window)
    slopes = _check_slopes(alibi_slopes, q, q.shape[1])
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    max_n, max_m = int((cu_q[1:] - cu_q[:-1]).max()), int((cu_k[1:] - cu_k[:-1]).max())
    p_drop, seed = _dropout(dropout_p, dropout_seed)
    params = FlashParams(scale, left, right, bottom_right, True, cu_q.numel() - 1, max(max_n, 1), max(max_m, 1),
                         p_drop, seed, deterministic)
    # (T, H, D) -> (1, H, T, D) views: the kernels index rows c_s + i through the row stride
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in _unit_last_stride(q, k, v))
    out, lse = FlashAttentionFunction.apply(q4, k4, v4, None, slopes, cu_q, cu_k, params)
    out = out[0].transpose(0, 1)  # (1, H, T, D) -> (T, H, D)
    return (out, lse[0]) if return_lse else out


def attention_backend(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                      scale=None, causal_align="top_left", window=None, alibi_slopes=None):
    """The "flash" backend for `minitx.attention`: key padding, causal (either alignment), sliding windows,
    ALiBi, grouped-query k, v and dropout (Philox, seeded from torch's generator) natively.

    A boolean attn_mask that only varies along the keys, shape (B or 1, 1, 1, M), is a key padding mask
    written as an attention mask and is accepted; any other attn_mask is refused.
    """
    if attn_mask is not None:
        key_padding_mask = _merge_key_padding(attn_mask, key_padding_mask, q.shape[0], k.shape[2])
    return flash_attention(q, k, v, causal=bool(is_causal), scale=scale, attention_mask=key_padding_mask,
                           causal_align=causal_align, window=window, alibi_slopes=alibi_slopes,
                           dropout_p=dropout_p)


# What `minitx.attention` may hand this backend as is rather than lowering it into masks and repeated heads.
attention_backend.native_features = frozenset({"gqa", "causal_align", "window", "alibi"})


def _varlen_backend(q, k, v, cu_seqlens_q, cu_seqlens_k, *, is_causal=False, **options):
    """What `minitx.attention.varlen` calls for this backend: one kernel over the whole packing (flash.19)."""
    return flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=is_causal, **options)


attention_backend.varlen = _varlen_backend


def _merge_key_padding(attn_mask, key_padding_mask, batch: int, m: int):
    keys_only = (attn_mask.dtype == torch.bool and attn_mask.dim() == 4 and attn_mask.shape[1:3] == (1, 1)
                 and attn_mask.shape[0] in (1, batch) and attn_mask.shape[3] == m)
    if not keys_only:
        raise ValueError(f"attn_mask: the flash backend supports only key padding (key_padding_mask (B, M), or a "
                         f"bool attn_mask of shape (B, 1, 1, M)) and is_causal; got {attn_mask.dtype} "
                         f"{tuple(attn_mask.shape)}. Use backend 'math' or 'sdpa' for general masks")
    mask = attn_mask[:, 0, 0, :].expand(batch, m)  # (B or 1, 1, 1, M) -> (B, M)
    return mask if key_padding_mask is None else mask & key_padding_mask.bool()
