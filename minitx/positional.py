"""Positional information for attention, which on its own is blind to order.

Four ways to tell a token where it is (docs/math/positional.md):

* `SinusoidalPositionalEncoding`: a fixed table of sines and cosines added to the input (pos.1).
* `LearnedPositionalEmbedding`: a trained table added to the input, as in BERT (pos.2).
* `RotaryEmbedding` (RoPE): rotates queries and keys so that their dot product depends only on the offset
  between positions (pos.3)-(pos.6). We pair dimension i with dimension i + D/2 ("split halves", the
  `rotate_half` layout of GPT-NeoX and Hugging Face Llama), not adjacent dimensions (2i, 2i+1).
* ALiBi: no embedding at all; a per-head linear penalty on distance added to the scores (pos.7)-(pos.8).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "sinusoidal_table",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "rotate_half",
    "alibi_slopes",
    "alibi_bias",
    "alibi_bias_from_slopes",
]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def _check_sequence_input(x: torch.Tensor, d_model: int, max_len: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x: expected shape (B, N, {d_model}), got {tuple(x.shape)}")
    if x.shape[1] > max_len:
        raise ValueError(f"x: sequence length {x.shape[1]} exceeds max_len={max_len}")


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of (pos.1): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    _check_positive_int("max_len", max_len)
    _check_positive_int("d_model", d_model)
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / (10000.0 ** (two_i / d_model))  # (max_len, ceil(d/2))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # an odd width has one sine more than cosines
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table of Vaswani et al. (2017), equation (pos.1): x + PE[:N]."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        # A buffer, not a parameter: it moves with .to(device) but is never trained.
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence_input(x, self.d_model, self.max_len)
        return x + self.pe[: x.shape[1]].to(x.dtype)  # (N, C) broadcasts over B


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trained table E (max_len, C), as BERT does, equation (pos.2): x + E[:N]."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        _check_positive_int("max_len", max_len)
        _check_positive_int("d_model", d_model)
        self.d_model, self.max_len = d_model, max_len
        # BERT's initialisation: N(0, 0.02^2), small next to the token embeddings it is added to.
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence_input(x, self.d_model, self.max_len)
        return x + self.weight[: x.shape[1]].to(x.dtype)  # (N, C) broadcasts over B


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: multiplication by i in the pairing of (pos.3)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., D) -> 2 x (..., D/2)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), equations (pos.3)-(pos.5).

    Dimension i is paired with dimension i + D/2 (split halves, as GPT-NeoX / HF Llama `rotate_half`), and
    the pair is rotated by the angle p * theta_i with theta_i = base^(-2i/D). Then
    <R(p) q, R(p') k> depends on p' - p only (pos.6), which is the whole point.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        _check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even number (dimensions are rotated in pairs), got {head_dim}")
        if not base > 1.0:
            raise ValueError(f"base: expected a number > 1, got {base}")
        self.head_dim, self.base = head_dim, float(base)
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles p * theta_i, laid out to match `rotate_half`: (..., N, D)."""
        angles = positions.to(torch.float64).unsqueeze(-1) * self.inv_freq.to(positions.device)  # (..., N, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (..., N, D/2) -> (..., N, D): pair i with i + D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """R(p) x for x (B, H, N, D), equation (pos.4): x * cos + rotate_half(x) * sin."""
        cos, sin = self.cos_sin(positions, x.dtype)
        if cos.dim() == 3:  # per-batch positions (B, N) -> (B, 1, N, D) to broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return x * cos + rotate_half(x) * sin

    def forward(self, q: torch.Tensor, k: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (B, H, N, D) by their positions: `positions` (N,) or (B, N), default 0..N-1.

        Pass `positions` to offset a chunk (e.g. `arange(start, start + N)`); q and k share positions here,
        so for keys at other positions call `rotate` on each with its own.
        """
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[-1] != self.head_dim:
                raise ValueError(f"{name}: expected shape (B, H, N, {self.head_dim}), got {tuple(t.shape)}")
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"k: expected the same length N as q ({q.shape[2]}) when sharing positions, "
                             f"got {k.shape[2]}; call rotate() on each with its own positions")
        n = q.shape[2]
        if positions is None:
            positions = torch.arange(n, device=q.device)
        if positions.dim() not in (1, 2) or positions.shape[-1] != n or positions.is_floating_point():
            raise ValueError(f"positions: expected an integer tensor of shape (N,) or (B, N) with N={n}, "
                             f"got {positions.dtype} {tuple(positions.shape)}")
        return self.rotate(q, positions), self.rotate(k, positions)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (H,), equation (pos.7), by the rule of the official implementation.

    For H a power of two: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8). Otherwise take the slopes
    for the closest power of two below, P, and add every other slope of the 2P sequence until there are H.
    """
    _check_positive_int("n_heads", n_heads)

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
    _check_positive_int("n", n)
    _check_positive_int("m", m)
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
