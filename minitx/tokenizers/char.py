"""A character-level tokenizer, as nanoGPT's shakespeare_char: one id per distinct character, sorted.

Same conventions as `minitx.tokenizers.wordpiece`: `train`, `encode`, `decode`, `save` / `load` (JSON), `vocab_size`,
and a ValueError naming the argument for anything it cannot represent. There are no special tokens: a
character LM needs none, and an unknown character is an error, not a silent [UNK].
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from minitx.tokenizers.files import checked_ids, JsonStateFile

__all__ = ["CharTokenizer"]


class CharTokenizer(JsonStateFile):
    """`chars[i]` is the character with id i."""

    file_kind = "character tokenizer JSON file"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError(f"chars: expected a non-empty list of single characters, got {chars[:10]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars: expected distinct characters, got duplicates")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @classmethod
    def train(cls, texts: str | Iterable[str]) -> "CharTokenizer":
        """The sorted set of characters in `texts` (a str, or an iterable of str)."""
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts: expected str items, got {type(text).__name__}")
            seen.update(text)
        if not seen:
            raise ValueError("texts: expected at least one character, got none")
        return cls(sorted(seen))

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(f"text: character {err.args[0]!r} is not in the vocabulary of "
                             f"{self.vocab_size} characters") from None

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        out = [self.chars[i] for i in checked_ids(ids, self.vocab_size)]
        return "".join(out)

    def state(self) -> dict:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        if not isinstance(state, dict) or state.get("type") != "char" or not isinstance(state.get("chars"), list):
            raise ValueError(f"state: expected {{'type': 'char', 'chars': [...]}}, got keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        return cls(state["chars"])

