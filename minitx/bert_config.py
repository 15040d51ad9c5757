"""`BertConfig`: every knob of the BERT-style encoder (minitx.model), flat, one CLI flag per field.

Its own module so that recipes, checkpoints and the Hugging Face converters can read and check a config
without building a model; `minitx.model` re-exports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from minitx.attention import available_backends
from minitx.model_inputs import check_model_config

__all__ = ["BertConfig"]


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class BertConfig:
    """A flat model config; every field maps one to one onto a CLI flag."""

    vocab_size: int = 1000
    d_model: int = field(default=128, metadata=_help("model width C"))
    n_layers: int = field(default=2, metadata=_help("encoder blocks"))
    n_heads: int = field(default=4, metadata=_help("attention heads H (d_model divisible by it)"))
    d_ff: int = field(default=512, metadata=_help("feed-forward width"))
    max_position: int = field(default=128, metadata=_help("longest sequence (learned positions)"))
    type_vocab_size: int = field(default=2, metadata=_help("segment ids (sentence A/B)"))
    dropout: float = field(default=0.1, metadata=_help("dropout on embeddings and residual branches"))
    attention_dropout: float = field(default=0.1, metadata=_help("dropout on attention weights"))
    layer_norm_eps: float = field(default=1e-12, metadata=_help("LayerNorm epsilon (BERT: 1e-12)"))
    norm_first: bool = field(default=False, metadata=_help("pre-LN blocks instead of BERT's post-LN"))
    attention_backend: str = field(default="math", metadata=_help("attention backend: math, sdpa or flash"))
    pad_token_id: int = 0
    initializer_range: float = 0.02
    sparse_prediction: bool = field(default=True, metadata=_help(
        "with labels, run the MLM head only at labelled positions (logits (K, V)); full logits without labels"))
    sparse_last_block: bool = field(default=True, metadata=_help(
        "with labels and sparse_prediction, the last block computes its outputs only at labelled positions "
        "(mlm.8); all positions stay keys and values"))

    def __post_init__(self) -> None:
        check_model_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_position",
                                  "type_vocab_size"))
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        for name in ("norm_first", "sparse_prediction", "sparse_last_block"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ValueError(f"pad_token_id: expected an int in [0, vocab_size={self.vocab_size}), got {pad!r}")
        if self.attention_backend not in available_backends():
            raise ValueError(f"attention_backend: expected one of {available_backends()}, "
                             f"got {self.attention_backend!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**values)
