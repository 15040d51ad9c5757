"""Text generation from a causal LM, with and without a KV cache (docs/math/decoder.md, (dec.6)-(dec.9)).

Without a cache, each new token reruns the whole prefix: step t costs O(t) projections and O(t^2) attention
scores (dec.8). With a cache, each block keeps the keys and values of every token seen so far, (dec.6), and a
step projects only the new token and attends its one query to the M cached keys (dec.7).

The cached path reuses each block's own parts (its LayerNorms, the attention's q/k/v/out projections, the
feed-forward) and the `minitx.attention.attention` front door; it adds no weights. When N new queries join
M - N cached keys, query i sits at absolute position i + M - N, so the causal mask must be aligned to the
bottom-right, key j allowed iff j <= i + M - N (dec.9); the top-left mask (j <= i, SDPA's `is_causal`) would
hide from the new tokens almost everything in the cache. With N = 1 the bottom-right mask allows every key,
so no mask is passed at all.
"""

from __future__ import annotations

from typing import Iterator

import torch
from einops import rearrange

from minitx.attention import attention
from minitx.functional import causal_mask
from minitx.models.gpt import GPT

__all__ = ["KVCache", "bottom_right_causal_mask", "forward_cached", "sample_next", "iter_generate", "generate"]


class KVCache:
    """Per block, keys and values (B, H, M, D) of every token so far: what (dec.6) keeps."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values (B, H, N, D) to layer `layer`; return all of them (B, H, M, D)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, H, M - N, D) + (B, H, N, D) -> (B, H, M, D)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def bottom_right_causal_mask(n: int, m: int, device=None) -> torch.Tensor:
    """Bool (N, M), True = may attend: key j allowed for query i iff j <= i + (M - N), (dec.9).

    The last query sees every key; with M = N it is the ordinary causal mask (dec.2). A cache never holds
    fewer keys than new queries, so N > M is refused here (`causal_mask(n, m, align="bottom_right")`, which
    computes it, would give such queries no key)."""
    if not (isinstance(n, int) and isinstance(m, int)) or n < 0 or m < n:
        raise ValueError(f"n, m: expected ints with 0 <= n <= m (N queries over M keys), got {n!r}, {m!r}")
    return causal_mask(n, m, device=device, align="bottom_right")


def _cached_attention(block, h: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
    """The block's MultiHeadAttention (mha.1)-(mha.3) on new tokens h (B, N, C) against cached keys."""
    mha = block.attention
    q = rearrange(mha.q_proj(h), "b n (h d) -> b h n d", h=mha.n_heads)  # (B, N, C) -> (B, H, N, D)
    k = rearrange(mha.k_proj(h), "b n (h d) -> b h n d", h=mha.n_heads)
    v = rearrange(mha.v_proj(h), "b n (h d) -> b h n d", h=mha.n_heads)
    k, v = cache.append(layer, k, v)  # (B, H, M, D): (dec.6)
    # (dec.9): N new queries over M >= N keys, aligned bottom-right; with an empty cache (M = N) that is the
    # ordinary causal mask, and one query (N = 1, dec.7) sees all M keys. Every backend, flash included, takes it.
    out = attention(q, k, v, backend=mha.backend, is_causal=True, causal_align="bottom_right")
    return mha.out_proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, H, N, D) -> (B, N, C)


@torch.no_grad()
def forward_cached(model: GPT, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (B, N, V) for `input_ids` (B, N) that follow the cache's tokens; extends the cache by N.

    Each block is the pre-LN block (block.3)-(block.4) of `EncoderBlock.forward`, with its attention
    reading the cache. Positions continue from the cache's length."""
    past, n = cache.length, input_ids.shape[1]
    if past + n > model.config.max_position:
        raise ValueError(f"input_ids: {past} cached + {n} new tokens exceed max_position="
                         f"{model.config.max_position}")
    positions = torch.arange(past, past + n, device=input_ids.device)[None]  # (1, N)
    x = model.embed(input_ids, positions)
    for i, block in enumerate(model.blocks):
        x = x + block.dropout(_cached_attention(block, block.attention_norm(x), cache, i))  # (block.3)
        x = x + block.dropout(block.feed_forward(block.ffn_norm(x)))  # (block.4)
    return model.lm_head(model.final_norm(x))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): greedy if temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely and/or the smallest set whose
    probability reaches top_p (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token in the sorted order
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(model, ids, max_new_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected a minitx GPT, got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype != torch.long:
        got = (tuple(ids.shape), ids.dtype) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids: expected a non-empty (B, N) long tensor of token ids, got {got}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature: expected a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


@torch.no_grad()
def iter_generate(model: GPT, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield each new token (B,) as soon as it is chosen. The context is the last max_position tokens, as in
    nanoGPT; once the cache holds a full window it is rebuilt from the window (positions are absolute)."""
    _check_args(model, ids, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(seed)
    window, cache, pending = model.config.max_position, None, ids
    try:
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = model(ids[:, -window:]).logits[:, -1]
            else:
                if cache is None or cache.length + pending.shape[1] > window:
                    cache, pending = KVCache(len(model.blocks)), ids[:, -window:]  # (re)fill from the window
                logits = forward_cached(model, pending, cache)[:, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            ids = torch.cat([ids, token[:, None]], dim=1)
            pending = token[:, None]
            yield token
    finally:
        model.train(was_training)


def generate(model: GPT, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """`ids` (B, N) followed by `max_new_tokens` generated tokens: (B, N + max_new_tokens).

    temperature 0 is greedy decoding; `seed` makes sampling repeatable (a private torch.Generator)."""
    new = list(iter_generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache))
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids.clone()
