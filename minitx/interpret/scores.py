"""Standard head scores on repeated random tokens (Olsson et al., 2022): a sequence of T random tokens followed
by the same T again. A previous-token head attends from i to i - 1 (interp.12); an induction head attends from a
token in the repeat to the token *after* its previous occurrence, i - T + 1 (interp.13), and so lets the model
predict the repeat: the loss on the second half falls far below the first (interp.14)."""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F


def repeated_tokens(vocab_size: int, length: int, batch: int = 8, seed: int = 0) -> torch.Tensor:
    """(batch, 2 * length) ids: `length` uniform random tokens, then the same tokens again."""
    for name, value in (("vocab_size", vocab_size), ("length", length), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    first = torch.randint(vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    return torch.cat([first, first], dim=1)


def _check(patterns: torch.Tensor) -> None:
    if not isinstance(patterns, torch.Tensor) or patterns.dim() != 5:
        raise ValueError(f"patterns: expected (L, B, H, N, M), got "
                         f"{tuple(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__}")


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """(L, B, H, N, N) -> (L, H): the mean attention from query i to key i - 1, over i >= 1 (interp.12)."""
    _check(patterns)
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, 3))  # (L, B, H, N - 1) -> (L, H)


def induction_scores(patterns: torch.Tensor, length: int) -> torch.Tensor:
    """(L, B, H, 2T, 2T) on `repeated_tokens(..., length=T)` -> (L, H): the mean attention from query i of the
    repeat (i >= T) to key i - T + 1, the token that followed this one last time (interp.13)."""
    _check(patterns)
    if patterns.shape[-1] != 2 * length:
        raise ValueError(f"length: expected half the sequence length {patterns.shape[-1] // 2}, got {length!r}")
    offset = -(length - 1)  # key j = i - (T - 1)
    diag = patterns.diagonal(offset=offset, dim1=-2, dim2=-1)  # (L, B, H, T + 1): queries i = T - 1 .. 2T - 1
    return diag[..., 1:].mean(dim=(1, 3))  # queries of the repeat only: i >= T


def repeat_losses(logits: torch.Tensor, ids: torch.Tensor, length: int) -> tuple[float, float]:
    """(loss on the first half, loss on the second half) of next-token prediction on repeated tokens (interp.14);
    the first half's first token has no target inside the sequence and is left out with it."""
    if logits.shape[:2] != ids.shape or ids.shape[1] != 2 * length:
        raise ValueError(f"logits, ids: expected (B, 2T, V) and (B, 2T) with T = {length}, got "
                         f"{tuple(logits.shape)} and {tuple(ids.shape)}")
    losses = torch_F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    losses = losses.view(ids.shape[0], -1)  # (B, 2T - 1): position i predicts token i + 1
    return float(losses[:, :length - 1].mean()), float(losses[:, length:].mean())
