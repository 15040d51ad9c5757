"""Rotary position embedding (RoPE): queries and keys rotated by their positions, (pos.3)-(pos.6).

We pair dimension i with dimension i + D/2 ("split halves", the `rotate_half` layout of GPT-NeoX and Hugging Face
Llama), not adjacent dimensions (2i, 2i+1). `MultiHeadAttention(rotary=...)` applies it to q and k inside
attention, before keys enter a KV cache.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx.checks import check_positive_int


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
        check_positive_int("head_dim", head_dim)
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


