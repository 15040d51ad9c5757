"""Flat config dataclasses: fields that carry their CLI help, and the dict round trip every config shares.

A config field is `option(default, "help text")`: `minitx.cli` turns each field into one flag (`--d-model`),
its help and `choices` read from the field's metadata. Model configs (BertConfig, GPTConfig) and recipe configs
(TrainConfig and its children) are all built this way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound="FlatConfig")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with a default and the help text (and e.g. `choices`) its CLI flag shows."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


class FlatConfig:
    """Mixin for config dataclasses: `to_dict()` and a `from_dict()` that refuses unknown fields by name."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict) -> C:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**values)
