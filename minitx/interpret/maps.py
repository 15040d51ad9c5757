"""Attention maps: every layer's pattern per head (interp.1) and attention rollout (Abnar & Zuidema, 2020),
the product of the layers' head-averaged patterns with the residual connection added (interp.2)-(interp.3)."""

from __future__ import annotations

import torch

from minitx.interpret.cache import ActivationCache


def attention_patterns(cache: ActivationCache, stack: str | None = None) -> torch.Tensor:
    """(L, B, H, N, M): A_l,h = softmax(q k^T / sqrt(D) + mask) of every block of `stack` (interp.1)."""
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache: expected an ActivationCache (run_with_cache), got {type(cache).__name__}")
    return cache.stack("attention.pattern", stack)


def attention_rollout(patterns: torch.Tensor, residual_weight: float = 0.5) -> torch.Tensor:
    """(L, B, H, N, N) patterns -> (B, N, N) rollout, how much each token's final state draws on each input token:
    Â_l = (1 - α) mean_h A_l,h + α I, rows renormalised (interp.2); R = Â_L ... Â_1 (interp.3).
    α = `residual_weight` (0.5 in the paper) stands for the residual connection around attention."""
    if not isinstance(patterns, torch.Tensor) or patterns.dim() != 5 or patterns.shape[-1] != patterns.shape[-2]:
        got = tuple(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__
        raise ValueError(f"patterns: expected self-attention patterns (L, B, H, N, N), got {got}")
    if isinstance(residual_weight, bool) or not isinstance(residual_weight, (int, float)) \
            or not 0.0 <= residual_weight <= 1.0:
        raise ValueError(f"residual_weight: expected a number in [0, 1], got {residual_weight!r}")
    n = patterns.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=patterns.device)
    rollout = eye.expand(patterns.shape[1], n, n)
    for layer in patterns.double():
        mixed = (1.0 - residual_weight) * layer.mean(dim=1) + residual_weight * eye  # (B, H, N, N) -> (B, N, N)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True).clamp_min(1e-30)  # a fully masked row stays zero
        rollout = mixed @ rollout  # (interp.3): later layers multiply from the left
    return rollout.to(patterns.dtype)
