"""What FlashAttention users ask for, written for backends that only take masks (docs/math/attention.md,
"Masks for decoding, windows and ALiBi"; docs/math/flash_attention.md (flash.10), (flash.18), (flash.20)).

The front door hands a backend that declares a feature in `fn.native_features` the option as is (the flash
kernel does it in-kernel); for every other backend (math, sdpa, anything registered) it lowers the option here
into what the backend interface already has: a boolean allowed-mask, a float bias, repeated k/v heads.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from einops import repeat

from minitx import functional as F
from minitx.positional.alibi import alibi_bias_from_slopes

CAUSAL_ALIGNS = ("top_left", "bottom_right")


def check_options(causal_align, window, alibi_slopes, n_heads: int) -> None:
    if causal_align not in CAUSAL_ALIGNS:
        raise ValueError(f"causal_align: expected one of {CAUSAL_ALIGNS}, got {causal_align!r}")
    if window is not None and (not isinstance(window, (tuple, list)) or len(window) != 2 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < -1 for w in window)):
        raise ValueError(f"window: expected (left, right), each an int >= 0 or -1 for unbounded, got {window!r}")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor) or not alibi_slopes.is_floating_point():
            raise TypeError(f"alibi_slopes: expected a float Tensor (H,), got {type(alibi_slopes).__name__}")
        if tuple(alibi_slopes.shape) != (n_heads,):
            raise ValueError(f"alibi_slopes: expected shape (H,) = ({n_heads},), got {tuple(alibi_slopes.shape)}")


def band_mask(n: int, m: int, is_causal: bool, causal_align: str, window, device=None) -> torch.Tensor | None:
    """(N, M) bool, True = may attend, or None if everything is allowed (flash.10).

    Relative to the aligned diagonal d = j - i - off (off = 0 top-left, M - N bottom-right): causal keeps
    d <= 0 (`functional.causal_mask`), a window (left, right) keeps -left <= d <= right (-1 = unbounded).
    Built once per (shape, options, device) and reused by every layer and step that asks again: callers
    combine it into new tensors and never write into it.
    """
    window = None if window is None else tuple(window)
    return _band_mask(n, m, bool(is_causal), causal_align, window, None if device is None else torch.device(device))


@lru_cache(maxsize=32)
def _band_mask(n, m, is_causal, causal_align, window, device):
    with torch.inference_mode(False):  # a mask first built in inference mode still serves a training step
        return _band_mask_uncached(n, m, is_causal, causal_align, window, device)


def _band_mask_uncached(n, m, is_causal, causal_align, window, device):
    allowed = None
    if is_causal:
        allowed = F.causal_mask(n, m, device=device, align=causal_align)
    if window is not None and window != (-1, -1):
        off = m - n if causal_align == "bottom_right" else 0
        d = torch.arange(m, device=device)[None, :] - torch.arange(n, device=device)[:, None] - off  # (N, M)
        left, right = window
        inside = torch.ones(n, m, dtype=torch.bool, device=device)
        if left >= 0:
            inside &= d >= -left
        if right >= 0:
            inside &= d <= right
        allowed = inside if allowed is None else allowed & inside
    return allowed


def merge_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """One mask from an allowed-mask / float bias (broadcastable to (B, H, N, M)) and a (B, M) padding mask.

    Booleans combine with AND; a float bias gets -inf where the key is padding.
    """
    if key_padding_mask is None:
        return attn_mask
    pad = key_padding_mask[:, None, None, :]  # (B, M) -> (B, 1, 1, M), "b m -> b 1 1 m"
    if attn_mask is None:
        return pad
    if attn_mask.dtype == torch.bool:
        return attn_mask & pad
    return torch.where(pad, attn_mask, float("-inf"))  # broadcasts both ways, unlike masked_fill


def combine(attn_mask, allowed: torch.Tensor | None, bias: torch.Tensor | None, dtype):
    """One attn_mask from the user's (bool or float, or None), a structural allowed-mask and a float bias."""
    mask = attn_mask
    if bias is not None:
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = torch.where(mask, bias, float("-inf"))  # broadcasts both ways, unlike masked_fill
        else:
            mask = mask + bias
    if allowed is not None:
        if mask is None or mask.dtype == torch.bool:
            mask = allowed if mask is None else mask & allowed
        else:
            mask = torch.where(allowed, mask, float("-inf"))
    if mask is not None and mask.dtype != torch.bool and mask.dtype != dtype:
        mask = mask.to(dtype)
    return mask


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Grouped-query k or v (B, H_kv, M, D) -> (B, H, M, D): query head h reads head h // (H / H_kv) (flash.18).

    The readable path only: it materialises H / H_kv copies; the flash kernel reads the shared head instead.
    """
    if t.shape[1] == n_heads:
        return t
    return repeat(t, "b hkv m d -> b (hkv g) m d", g=n_heads // t.shape[1])  # (B, H_kv, M, D) -> (B, H, M, D)


def simplify_causal(n: int, m: int, is_causal: bool, causal_align: str, window):
    """The same mask with the fewest options (flash.10): an unbounded window is none; without a window, the
    bottom-right alignment (dec.9) is the top-left one when N = M (no cached keys) and no mask at all when
    N = 1 (one new query sees every key: what each decoding step asks for), so backends take SDPA's own
    `is_causal` or nothing instead of a mask tensor."""
    if window is not None and tuple(window) == (-1, -1):
        window = None
    if window is None and causal_align == "bottom_right" and (not is_causal or n == m or n == 1):
        is_causal, causal_align = is_causal and n != 1, "top_left"
    return is_causal, causal_align, window


def lower(q, k, v, attn_mask, is_causal, causal_align, window, alibi_slopes, native) -> tuple:
    """(k, v, attn_mask, is_causal, extra kwargs) for a backend whose native features are `native`."""
    n, m, h = q.shape[2], k.shape[2], q.shape[1]
    extra = {}
    is_causal, causal_align, window = simplify_causal(n, m, is_causal, causal_align, window)
    if "gqa" not in native:
        k, v = repeat_kv(k, h), repeat_kv(v, h)
    structural = window is not None or causal_align != "top_left"
    if structural and {"window", "causal_align"} <= native:
        extra.update(causal_align=causal_align, window=window)
    elif structural:
        allowed = band_mask(n, m, is_causal, causal_align, window, device=q.device)
        attn_mask, is_causal = combine(attn_mask, allowed, None, q.dtype), False
    if alibi_slopes is not None and "alibi" in native:
        extra["alibi_slopes"] = alibi_slopes
    elif alibi_slopes is not None:
        off = m - n if causal_align == "bottom_right" else 0
        bias = alibi_bias_from_slopes(alibi_slopes.to(q.device), n, m, offset=off)  # (H, N, M)
        attn_mask = combine(attn_mask, None, bias.to(q.dtype), q.dtype)
    return k, v, attn_mask, is_causal, extra
