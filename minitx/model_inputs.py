"""What the models refuse before any lookup: ids out of range, wrong dtypes or shapes, bad labels.

Each check raises TypeError/ValueError naming the argument and costs one min/max per tensor, so an embedding
lookup never fails deep inside torch (`IndexError: index out of range in self`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from minitx.model import BertConfig

IGNORE_INDEX = -100  # label of positions that carry no loss (as in PyTorch's cross_entropy and HF)

__all__ = ["IGNORE_INDEX", "check_ids", "check_inputs", "check_labels", "check_model_config"]


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


def check_inputs(config: "BertConfig", input_ids, attention_mask=None, token_type_ids=None) -> None:
    """Refuse model inputs that would fail deep inside torch (an embedding lookup out of range) or be misread:
    TypeError/ValueError naming the argument. Cheap: one min/max per tensor."""
    check_ids("input_ids", input_ids, None, 0, config.vocab_size)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape (B, N), got {tuple(input_ids.shape)}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask: expected a torch.Tensor (B, N), got {type(attention_mask).__name__}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (1 = real token), "
                             f"got {tuple(attention_mask.shape)}")
    if token_type_ids is not None:
        check_ids("token_type_ids", token_type_ids, input_ids.shape, 0, config.type_vocab_size)


def check_labels(config: "BertConfig", input_ids, labels, next_sentence_label) -> None:
    """MLM labels: the shape of input_ids, ids in [0, V) or IGNORE_INDEX; next-sentence labels 0/1, one per row."""
    if labels is None and next_sentence_label is None:
        return
    check_inputs(config, input_ids)
    if labels is not None:
        check_ids("labels", labels, input_ids.shape, 0, config.vocab_size, allowed=(IGNORE_INDEX,))
    if next_sentence_label is not None:
        check_ids("next_sentence_label", next_sentence_label, input_ids.shape[:1], 0, 2)


def check_model_config(config, sizes: tuple[str, ...]) -> None:
    """The checks every model config shares: `sizes` positive ints, d_model a multiple of n_heads, the two
    dropout rates probabilities in [0, 1); ValueError naming the field."""
    for name in sizes:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if config.d_model % config.n_heads:
        raise ValueError(f"d_model: expected a multiple of n_heads={config.n_heads}, got {config.d_model}")
    for name in ("dropout", "attention_dropout"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
