"""What the models refuse before any lookup: ids out of range, wrong dtypes or shapes, bad labels.

Each check raises TypeError/ValueError naming the argument and costs one min/max per tensor, so an embedding
lookup never fails deep inside torch (`IndexError: index out of range in self`).
"""

from __future__ import annotations

from typing import Optional

import torch

from minitx.attention.backends import check_backend
from minitx.checks import check_probability


def check_ids(name: str, ids, shape: Optional[tuple], low: int, high: int, allowed: tuple[int, ...] = ()) -> None:
    """`ids` an integer tensor (of `shape`, if given) with values in [low, high) or in `allowed`: one min/max."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of integer ids, got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name}: expected an integer tensor (torch.long), got dtype {ids.dtype}")
    if shape is not None and tuple(ids.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(ids.shape)}")
    if ids.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(ids))
    if lo >= low and hi < high:
        return
    bad = ids[((ids < low) | (ids >= high)) & ~torch.isin(ids, torch.tensor(allowed, dtype=ids.dtype,
                                                                            device=ids.device))]
    if bad.numel():
        extra = f" or {', '.join(map(str, allowed))}" if allowed else ""
        raise ValueError(f"{name}: expected ids in [{low}, {high}){extra}, got {int(bad[0])} "
                         f"({bad.numel()} out of range; min {lo}, max {hi})")


def check_model_config(config, sizes: tuple[str, ...]) -> None:
    """The checks every model config shares: `sizes` positive ints, d_model a multiple of n_heads, the two
    dropout rates probabilities in [0, 1), the attention backend registered; ValueError naming the field."""
    for name in sizes:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if config.d_model % config.n_heads:
        raise ValueError(f"d_model: expected a multiple of n_heads={config.n_heads}, got {config.d_model}")
    for name in ("dropout", "attention_dropout"):
        check_probability(name, getattr(config, name))
    check_backend(config.attention_backend, "attention_backend")


def key_padding_mask(attention_mask, shape: tuple) -> Optional[torch.Tensor]:
    """The model's `attention_mask` (Hugging Face's: 1/True = real token, 0 = padding), checked against `shape`
    (B, M) and turned into the bool `key_padding_mask` every block, attention module and backend takes: once
    per forward, at the model's door. None when every token is real."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask: expected a torch.Tensor (B, N), got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask: expected shape {tuple(shape)} (1 = real token), "
                         f"got {tuple(attention_mask.shape)}")
    mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
    # No padding at all (a single sentence, an unpadded batch): no mask, so no layer builds or applies one and
    # the backends take their mask-free path (as Hugging Face drops an all-ones mask).
    return None if bool(mask.all()) else mask
