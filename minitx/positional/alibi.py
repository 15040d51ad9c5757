"""ALiBi: no embedding at all; a per-head linear penalty on distance added to the scores, (pos.7)-(pos.8).

The attention front door takes `alibi_slopes` and lowers them into this bias for backends that lack it natively
(`minitx.attention.masks`); the flash kernel adds it in-kernel (flash.20).
"""

from __future__ import annotations

import math

import torch

from minitx.checks import check_positive_int


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (H,), equation (pos.7), by the rule of the official implementation.

    For H a power of two: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8). Otherwise take the slopes
    for the closest power of two below, P, and add every other slope of the 2P sequence until there are H.
    """
    check_positive_int("n_heads", n_heads)

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(p) + power_of_two(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, n: int, m: int, device=None) -> torch.Tensor:
    """ALiBi bias (H, N, M) to add to the scores, equation (pos.8): -slope_h * |j - i|.

    Queries and keys are aligned at position 0 (as `causal_mask`). Under a causal mask only j <= i is used,
    where this is the paper's slope_h * (j - i); the absolute value extends it to bidirectional encoders.
    """
    check_positive_int("n", n)
    check_positive_int("m", m)
    slopes = alibi_slopes(n_heads).to(device)
    i = torch.arange(n, device=device).unsqueeze(1)  # (N, 1)
    j = torch.arange(m, device=device).unsqueeze(0)  # (1, M)
    distance = (j - i).abs().float()  # (N, M)
    return -slopes[:, None, None] * distance  # (H, 1, 1) * (N, M) -> (H, N, M)


def alibi_bias_from_slopes(slopes: torch.Tensor, n: int, m: int, offset: int = 0) -> torch.Tensor:
    """(H, N, M) bias -slope_h * |j - i - offset| for any slopes (H,), equation (pos.8) with the diagonal
    moved by `offset` (M - N aligns it bottom-right, as for causal decoding; flash.20 in the flash kernel)."""
    if not isinstance(slopes, torch.Tensor) or slopes.dim() != 1:
        raise ValueError(f"slopes: expected a 1-d Tensor (H,), got {slopes!r}")
    i = torch.arange(n, device=slopes.device).unsqueeze(1)  # (N, 1)
    j = torch.arange(m, device=slopes.device).unsqueeze(0)  # (1, M)
    distance = (j - i - offset).abs().to(slopes.dtype if slopes.is_floating_point() else torch.float32)
    return -slopes[:, None, None] * distance  # (H, 1, 1) * (N, M) -> (H, N, M)
