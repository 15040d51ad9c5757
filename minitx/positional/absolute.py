"""Positions added to the input: a fixed sinusoidal table (pos.1) or a learned one, as BERT (pos.2).

The other two ways to tell a token where it is act inside attention: RoPE rotates queries and keys
(`minitx.positional.rope`), ALiBi biases the scores (`minitx.positional.alibi`). docs/math/positional.md has all four.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx.checks import check_positive_int


def _check_sequence_input(x: torch.Tensor, d_model: int, max_len: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x: expected shape (B, N, {d_model}), got {tuple(x.shape)}")
    if x.shape[1] > max_len:
        raise ValueError(f"x: sequence length {x.shape[1]} exceeds max_len={max_len}")


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of (pos.1): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    check_positive_int("max_len", max_len)
    check_positive_int("d_model", d_model)
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
        check_positive_int("max_len", max_len)
        check_positive_int("d_model", d_model)
        self.d_model, self.max_len = d_model, max_len
        # BERT's initialisation: N(0, 0.02^2), small next to the token embeddings it is added to.
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence_input(x, self.d_model, self.max_len)
        return x + self.weight[: x.shape[1]].to(x.dtype)  # (N, C) broadcasts over B


