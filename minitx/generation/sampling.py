"""Choosing the next token from the model's last logits: greedy, temperature sampling, top-k, top-p (nucleus)."""

from __future__ import annotations

import torch

_TINY = torch.finfo(torch.float32).tiny


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): greedy if temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely and/or the smallest set whose
    probability reaches top_p (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if not torch.isfinite(scaled).all() and torch.isfinite(logits).all():
        # a tiny temperature overflows the division; shifted by the row's max first, the largest logit stays 0
        # and the others fall to -inf or a large negative number: the draw tends to greedy, as it should
        # (float32 flushes a temperature below its smallest normal number to 0: clamp it there)
        scaled = (logits.float() - logits.float().amax(dim=-1, keepdim=True)) / max(temperature, _TINY)
    logits = scaled
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
