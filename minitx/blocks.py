"""The pieces of a transformer encoder layer: LayerNorm, FeedForward and the residual EncoderBlock.

Post-LN (BERT, the original transformer) normalises after each residual sum, (block.1)-(block.2); pre-LN
normalises the branch input and leaves the residual stream untouched, (block.3)-(block.4). Why that matters
for deep stacks is in docs/math/residual_blocks.md.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F
from minitx.attention import MultiHeadAttention, available_backends

__all__ = ["LayerNorm", "FeedForward", "EncoderBlock", "set_blocks_backend"]


def _check_probability(name: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with a learned gain and shift, (block.5), by `functional.layer_norm`."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model: expected a positive int, got {d_model!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected last dim {self.d_model}, got shape {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type) and x.dtype != self.weight.dtype:
            # Under autocast (bf16/fp16 activations, fp32 parameters) normalize in fp32 and cast back, as torch
            # autocast runs layer_norm: the mean and variance of a bf16 row lose too many bits otherwise.
            out = F.layer_norm(x.float(), self.weight.float(), self.bias.float(), self.eps)
            return out.to(x.dtype)
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class FeedForward(nn.Module):
    """Position-wise MLP, (block.6): fc_out(Drop(GELU(fc_in(x)))), C -> d_ff -> C.

    `dropout` sits after the activation (as in torch.nn.TransformerEncoderLayer); BERT has none there, which
    is why EncoderBlock builds this with 0. The dropout after `fc_out` belongs to the block.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        _check_probability("dropout", dropout)
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x))))  # (B, N, C) -> (B, N, d_ff) -> (B, N, C)


class EncoderBlock(nn.Module):
    """Self-attention and feed-forward sublayers, each wrapped in a residual connection and a LayerNorm.

    post-LN (default, BERT), (block.1)-(block.2):  x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(FFN(x)))
    pre-LN (norm_first=True), (block.3)-(block.4): x = x + Drop(Attn(LN(x)));  x = x + Drop(FFN(LN(x)))

    `dropout` is applied to each sublayer's output (after `out_proj` and after `fc_out`), `attention_dropout`
    (default: `dropout`) to the attention weights inside MultiHeadAttention.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float | None = None, norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 backend: str = "math"):
        super().__init__()
        _check_probability("dropout", dropout)
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        _check_probability("attention_dropout", attention_dropout)
        self.norm_first = bool(norm_first)
        self.attention = MultiHeadAttention(d_model, n_heads, dropout=attention_dropout, backend=backend)
        self.attention_norm = LayerNorm(d_model, eps=layer_norm_eps)
        self.feed_forward = FeedForward(d_model, d_ff, dropout=0.0)
        self.ffn_norm = LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def _attend(self, x, attention_mask, is_causal, return_weights, context=None):
        result = self.attention(x, context=context, attention_mask=attention_mask, is_causal=is_causal,
                                return_weights=return_weights)
        out, weights = result if return_weights else (result, None)
        return self.dropout(out), weights

    def forward(self, x: torch.Tensor, attention_mask=None, is_causal: bool = False, return_weights: bool = False,
                rows: torch.Tensor | None = None):
        """x (B, N, C) -> (B, N, C) [, attention weights (B, H, N, N)]; masks as in MultiHeadAttention.

        rows (B, R) int64: compute the block's output only at these positions of each sequence, (B, R, C);
        every position is still a key and a value (mlm.8). Each output row depends on the other positions
        only through attention's keys and values, so these rows equal the full output's rows exactly."""
        if rows is not None:
            if is_causal or return_weights:
                raise ValueError("rows: a block computed at some rows only is bidirectional and returns no "
                                 "weights; pass is_causal=False, return_weights=False")
            return self._forward_rows(x, attention_mask, rows)
        if self.norm_first:
            a, weights = self._attend(self.attention_norm(x), attention_mask, is_causal, return_weights)
            x = x + a  # (block.3)
            x = x + self.dropout(self.feed_forward(self.ffn_norm(x)))  # (block.4)
        else:
            a, weights = self._attend(x, attention_mask, is_causal, return_weights)
            x = self.attention_norm(x + a)  # (block.1)
            x = self.ffn_norm(x + self.dropout(self.feed_forward(x)))  # (block.2)
        return (x, weights) if return_weights else x

    def _forward_rows(self, x, attention_mask, rows):
        """(mlm.8): (block.1)-(block.2) or (block.3)-(block.4) with queries, residuals and the feed-forward
        at `rows` only, keys and values at every position. A bidirectional block only (no causal option)."""
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.long or rows.dim() != 2 \
                or rows.shape[0] != x.shape[0]:
            raise ValueError(f"rows: expected an int64 tensor (B, R) with B = {x.shape[0]}, got "
                             f"{tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__}")

        def pick(t):
            return t.gather(1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # (B, N, C) -> (B, R, C)
        if self.norm_first:
            normed = self.attention_norm(x)
            a, _ = self._attend(pick(normed), attention_mask, False, False, context=normed)
            h = pick(x) + a  # (block.3) at the rows
            return h + self.dropout(self.feed_forward(self.ffn_norm(h)))  # (block.4)
        x_rows = pick(x)
        a, _ = self._attend(x_rows, attention_mask, False, False, context=x)
        h = self.attention_norm(x_rows + a)  # (block.1) at the rows
        return self.ffn_norm(h + self.dropout(self.feed_forward(h)))  # (block.2)


def set_blocks_backend(blocks, backend: str) -> None:
    """Switch the attention backend (math, sdpa, flash) of every block in `blocks`, weights untouched."""
    if backend not in available_backends():
        raise ValueError(f"backend: expected one of {available_backends()}, got {backend!r}")
    for block in blocks:
        block.attention.backend = backend

