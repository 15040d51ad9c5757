"""Saving and loading a tokenizer as one JSON file (its `state()` dict, written as UTF-8), and checking ids.

Shared by the decoder's tokenizers (`CharTokenizer`, `ByteBPETokenizer`): each defines `state()`, `from_state`
and `file_kind` (the words an error uses for the file), and inherits `save` / `load` from `JsonStateFile`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch


class JsonStateFile:
    """`save(path)` / `load(path)` on top of `state()` / `from_state(state)`; a bad file is a ValueError naming it."""

    file_kind = "tokenizer JSON file"

    def state(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Any:
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"path: {str(path)!r} is not a valid {cls.file_kind} ({e})") from None
        try:
            return cls.from_state(state)
        except ValueError as e:
            raise ValueError(f"path: {str(path)!r}: {e}") from None


def checked_ids(ids: Iterable[int] | torch.Tensor, vocab_size: int) -> list[int]:
    """`ids` as a list of ints, each checked to be in [0, vocab_size): what a decoder may look up."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(f"ids: expected ints in [0, {vocab_size}), got {i!r}")
    return ids
