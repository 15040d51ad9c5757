"""The KV cache: every layer keeps the keys and values of the tokens seen so far (docs/math/decoder.md).

Without a cache, each new token reruns the whole prefix: step t costs O(t) projections and O(t^2) attention
scores (dec.8). With one, each layer keeps the keys and values of every token so far, (dec.6), and a step
projects only the new tokens and attends their queries to the M cached keys (dec.7). The cache flows through
the model: `model(ids, cache=cache)` hands layer i's `LayerKV` to block i, whose self-attention appends to it.
Keys are stored with the layer's number of key/value heads (H_kv, grouped-query attention) and after RoPE.

When N new queries join M - N cached keys, query i sits at absolute position i + M - N, so the causal mask
must be aligned to the bottom-right, key j allowed iff j <= i + M - N (dec.9); the top-left mask (j <= i,
SDPA's `is_causal`) would hide from the new tokens almost everything in the cache.
"""

from __future__ import annotations

import torch

from minitx.checks import check_positive_int
from minitx.functional import causal_mask


class LayerKV:
    """One layer's keys and values (B, H_kv, M, D) of every token so far: what (dec.6) keeps."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """M, the number of tokens cached."""
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values (B, H_kv, N, D); return all of them (B, H_kv, M, D), (dec.6)."""
        if self.keys is not None:
            if k.shape[:2] != self.keys.shape[:2] or k.shape[3] != self.keys.shape[3]:
                raise ValueError(f"k: expected (B, H_kv, N, D) matching the cached {tuple(self.keys.shape)}, "
                                 f"got {tuple(k.shape)}")
            k = torch.cat([self.keys, k], dim=2)  # (B, H_kv, M - N, D) + (B, H_kv, N, D) -> (B, H_kv, M, D)
            v = torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (B',) of the batch, in that order: beam search's reshuffle of its hypotheses."""
        if self.keys is not None:
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)


class KVCache:
    """A model's cache: one `LayerKV` per block; `cache[i]` is block i's."""

    def __init__(self, n_layers: int) -> None:
        check_positive_int("n_layers", n_layers)
        self.layers = [LayerKV() for _ in range(n_layers)]

    def __getitem__(self, layer: int) -> LayerKV:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """Tokens cached so far (the same in every layer)."""
        return self.layers[0].length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` in every layer (beam search follows its surviving hypotheses)."""
        for layer in self.layers:
            layer.reorder(index)


def bottom_right_causal_mask(n: int, m: int, device=None) -> torch.Tensor:
    """Bool (N, M), True = may attend: key j allowed for query i iff j <= i + (M - N), (dec.9).

    The last query sees every key; with M = N it is the ordinary causal mask (dec.2). A cache never holds
    fewer keys than new queries, so N > M is refused here (`causal_mask(n, m, align="bottom_right")`, which
    computes it, would give such queries no key)."""
    if not (isinstance(n, int) and isinstance(m, int)) or n < 0 or m < n:
        raise ValueError(f"n, m: expected ints with 0 <= n <= m (N queries over M keys), got {n!r}, {m!r}")
    return causal_mask(n, m, device=device, align="bottom_right")
