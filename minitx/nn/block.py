"""The one residual Block every family is built from: self-attention, an optional cross-attention, a
feed-forward, each wrapped in a residual connection and a norm, post-LN or pre-LN.

Post-LN (BERT, the original transformer) normalises after each residual sum, (block.1)-(block.2); pre-LN
normalises the branch input and leaves the residual stream untouched, (block.3)-(block.4). Why that matters
for deep stacks is in docs/math/residual_blocks.md.

The Block is composed from parts it is given, so a family is a config plus parts, never a block changed after
construction: `attention` (a MultiHeadAttention: its backend, grouped-query heads, RoPE), `feed_forward` (any
module (B, N, C) -> (B, N, C): the GELU MLP, SwiGLU, ...), `norm` (a factory called once per sublayer:
LayerNorm, RMSNorm, ...), and `cross_attention` for a decoder that reads an encoder's output.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from minitx.attention.backends import check_backend
from minitx.attention.cache import LayerKV
from minitx.attention.multi_head import MultiHeadAttention
from minitx.checks import check_probability
from minitx.hooks import HookPoints
from minitx.nn.dropout import drop
from minitx.nn.feed_forward import FeedForward
from minitx.nn.norms import LayerNorm


class Block(HookPoints, nn.Module):
    """Self-attention (+ cross-attention) and feed-forward sublayers, each with a residual and a norm.

    post-LN (default, BERT), (block.1)-(block.2):  x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(FFN(x)))
    pre-LN (norm_first=True), (block.3)-(block.4): x = x + Drop(Attn(LN(x)));  x = x + Drop(FFN(LN(x)))
    With `cross_attention`, a third sublayer between the two reads `context` (the encoder's output) the same
    way: (block.1) or (block.3) with CrossAttn(x, context) in place of Attn(x).

    `dropout` is applied to each sublayer's output (after `out_proj` and after the feed-forward); the attention
    weights' dropout is the attention module's own.
    Hook points (minitx.hooks): "resid_pre" the block's input; "attn_out", "cross_attn_out", "ffn_out" each
    sublayer's output after dropout, before it joins the residual stream; "resid_mid" the stream after the
    attention sublayer(s); "resid_post" the block's output.
    """

    hook_points = ("resid_pre", "attn_out", "cross_attn_out", "resid_mid", "ffn_out", "resid_post")

    def __init__(self, attention: MultiHeadAttention, feed_forward: nn.Module, norm: Callable[[], nn.Module], *,
                 norm_first: bool = False, dropout: float = 0.1, cross_attention: MultiHeadAttention | None = None):
        super().__init__()
        for name, part, optional in (("attention", attention, False), ("cross_attention", cross_attention, True)):
            if not isinstance(part, MultiHeadAttention) and not (optional and part is None):
                raise TypeError(f"{name}: expected a MultiHeadAttention, got {type(part).__name__}")
        if not isinstance(feed_forward, nn.Module):
            raise TypeError(f"feed_forward: expected an nn.Module, got {type(feed_forward).__name__}")
        if not callable(norm) or isinstance(norm, nn.Module):  # a module would be shared by every sublayer
            raise TypeError(f"norm: expected a factory of norm modules, called once per sublayer (e.g. "
                            f"partial(LayerNorm, C)), got {type(norm).__name__}")
        if not isinstance(norm_first, bool):
            raise TypeError(f"norm_first: expected a bool, got {norm_first!r}")
        check_probability("dropout", dropout)
        self.norm_first = norm_first
        self.attention = attention
        self.attention_norm = norm()
        if cross_attention is not None:
            self.cross_attention = cross_attention
            self.cross_attention_norm = norm()
        else:
            self.cross_attention = None
        self.feed_forward = feed_forward
        self.ffn_norm = norm()
        self.dropout = nn.Dropout(dropout)

    def _attend(self, attention, x, context=None, **options):
        """One attention sublayer's branch: Drop(Attn(x, context)), and the weights when asked for."""
        result = attention(x, context, **options)
        out, weights = result if options.get("return_weights") else (result, None)
        return drop(self.dropout, out), weights

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, is_causal: bool = False,
                return_weights: bool = False, *, rows: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: LayerKV | None = None, attn_mask: torch.Tensor | None = None,
                cross_cache: LayerKV | None = None, window: tuple[int, int] | None = None):
        """x (B, N, C) -> (B, N, C) [, self-attention weights (B, H, N, M)].

        key_padding_mask (B, M) bool, True = real key (cached and new, with a cache); is_causal: the causal
        mask (dec.2), bottom-right aligned over a cache (dec.9); attn_mask: any further mask, as in
        `attention`. context (B, S, C) and context_padding_mask (B, S): what cross-attention reads.
        positions, cache, window: passed to self-attention (RoPE positions, this layer's `LayerKV`, a sliding
        window (left, right) as in `attention`).
        cross_cache: cross-attention's `LayerKV`: the context's keys/values, projected once and then reused.
        rows (B, R) int64: compute the block's output only at these positions of each sequence, (B, R, C);
        every position is still a key and a value (mlm.8). Each output row depends on the other positions
        only through attention's keys and values, so these rows equal the full output's rows exactly."""
        if rows is not None:
            if is_causal or window is not None or return_weights or cache is not None \
                    or self.cross_attention is not None:
                raise ValueError("rows: a block computed at some rows only is bidirectional, without cache, "
                                 "cross-attention or weights; pass is_causal=False, return_weights=False")
            return self._forward_rows(x, key_padding_mask, rows)
        if (context is None) != (self.cross_attention is None):
            raise ValueError("context: expected the encoder's output exactly when the block has cross_attention, "
                             f"got context={'a tensor' if context is not None else None} with cross_attention="
                             f"{'set' if self.cross_attention is not None else None}")
        attend = dict(key_padding_mask=key_padding_mask, is_causal=is_causal, return_weights=return_weights,
                      attn_mask=attn_mask, positions=positions, cache=cache, window=window)
        cross = self.cross_attention
        x = self.hook("resid_pre", x)
        if self.norm_first:
            a, weights = self._attend(self.attention, self.attention_norm(x), **attend)
            x = x + self.hook("attn_out", a)  # (block.3)
            if cross is not None:
                c, _ = self._attend(cross, self.cross_attention_norm(x), context, key_padding_mask=context_padding_mask,
                                   cache=cross_cache)
                x = x + self.hook("cross_attn_out", c)  # (block.3), reading the context
            x = self.hook("resid_mid", x)
            x = x + self.hook("ffn_out", drop(self.dropout, self.feed_forward(self.ffn_norm(x))))  # (block.4)
        else:
            a, weights = self._attend(self.attention, x, **attend)
            x = self.attention_norm(x + self.hook("attn_out", a))  # (block.1)
            if cross is not None:
                c, _ = self._attend(cross, x, context, key_padding_mask=context_padding_mask, cache=cross_cache)
                x = self.cross_attention_norm(x + self.hook("cross_attn_out", c))  # (block.1), reading the context
            x = self.hook("resid_mid", x)
            x = self.ffn_norm(x + self.hook("ffn_out", drop(self.dropout, self.feed_forward(x))))  # (block.2)
        x = self.hook("resid_post", x)
        return (x, weights) if return_weights else x
    def _forward_rows(self, x, key_padding_mask, rows):
        """(mlm.8): (block.1)-(block.2) or (block.3)-(block.4) with queries, residuals and the feed-forward
        at `rows` only, keys and values at every position. A bidirectional block only (no causal option);
        the block's own hook points are not on this path (the model runs it for training with labels only)."""
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.long or rows.dim() != 2 \
                or rows.shape[0] != x.shape[0]:
            raise ValueError(f"rows: expected an int64 tensor (B, R) with B = {x.shape[0]}, got "
                             f"{tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__}")

        def pick(t):
            return t.gather(1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # (B, N, C) -> (B, R, C)
        if self.norm_first:
            normed = self.attention_norm(x)
            a, _ = self._attend(self.attention, pick(normed), normed, key_padding_mask=key_padding_mask)
            h = pick(x) + a  # (block.3) at the rows
            return h + drop(self.dropout, self.feed_forward(self.ffn_norm(h)))  # (block.4)
        x_rows = pick(x)
        a, _ = self._attend(self.attention, x_rows, x, key_padding_mask=key_padding_mask)
        h = self.attention_norm(x_rows + a)  # (block.1) at the rows
        return self.ffn_norm(h + drop(self.dropout, self.feed_forward(h)))  # (block.2)


def standard_block(d_model: int, n_heads: int, d_ff: int, *, dropout: float = 0.1,
                   attention_dropout: float | None = None, norm_first: bool = False, layer_norm_eps: float = 1e-5,
                   backend: str = "math", activation: str = "gelu", bias: bool = True,
                   n_kv_heads: int | None = None, cross_attention: bool = False) -> Block:
    """The block of BERT, GPT-2 and the original transformer: LayerNorm and a GELU MLP around multi-head
    attention, post-LN or pre-LN. `attention_dropout` defaults to `dropout`; `bias=False` drops every shift
    (nanoGPT's); `cross_attention=True` adds the encoder-decoder sublayer."""
    check_probability("dropout", dropout)
    attention_dropout = dropout if attention_dropout is None else attention_dropout
    check_probability("attention_dropout", attention_dropout)

    def attention() -> MultiHeadAttention:
        return MultiHeadAttention(d_model, n_heads, dropout=attention_dropout, bias=bias, backend=backend,
                                  n_kv_heads=n_kv_heads)
    self_attention = attention()
    return Block(self_attention, FeedForward(d_model, d_ff, activation=activation, bias=bias),
                 partial(LayerNorm, d_model, eps=layer_norm_eps, bias=bias), norm_first=norm_first, dropout=dropout,
                 cross_attention=attention() if cross_attention else None)


def set_blocks_backend(blocks, backend: str) -> None:
    """Switch the attention backend of every block in `blocks` (self- and cross-attention), weights untouched;
    a name that is not registered changes nothing."""
    check_backend(backend)
    for block in blocks:
        for attention in (block.attention, block.cross_attention):
            if attention is not None:
                attention.backend = backend
