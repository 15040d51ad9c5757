"""Data for sequence-to-sequence runs: a character vocabulary with four specials, parallel text read from two
line-aligned files or one TSV file, and the padded batches a Transformer trains on (teacher forcing, tf.6)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from minitx.functional import IGNORE_INDEX
from minitx.models.transformer import shift_tokens_right

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = range(4)


class CharVocab:
    """Ids 0-3 are <pad>, <s> (the decoder's start), </s> (end), <unk>; then one id per character, sorted."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars: expected distinct single characters")
        self.tokens = list(SPECIALS) + chars
        self._ids = {c: i for i, c in enumerate(self.tokens) if i >= len(SPECIALS)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharVocab":
        return cls(sorted(set("".join(texts))))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, eos: bool = True) -> list[int]:
        """Character ids (an unseen character is <unk>), then </s>."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return [self._ids.get(c, UNK) for c in text] + ([EOS] if eos else [])

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The characters up to the first </s>; <pad> and <s> are skipped, <unk> shown as '?'."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.tokens[i])
            elif i == UNK:
                out.append("?")
        return "".join(out)

    def state(self) -> dict:
        return {"type": "char-seq2seq", "chars": self.tokens[len(SPECIALS):]}

    @classmethod
    def from_state(cls, state: dict) -> "CharVocab":
        if not isinstance(state, dict) or state.get("type") != "char-seq2seq":
            raise ValueError(f"tokenizer: expected a char-seq2seq state, got {state!r:.80}")
        return cls(state["chars"])


def _lines(path: str | Path, argument: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{argument}: no such file {str(path)!r}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{argument}: {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_parallel(source_file: str | Path | None = None, target_file: str | Path | None = None,
                  tsv: str | Path | None = None) -> list[tuple[str, str]]:
    """(source, target) pairs from two line-aligned files, or from one TSV file (source TAB target per line).
    Blank lines are skipped; a count mismatch or a TSV line without exactly one tab is a ValueError naming
    the file and line."""
    if tsv is not None:
        if source_file is not None or target_file is not None:
            raise ValueError("tsv: give either a TSV file or source and target files, not both")
        pairs = []
        for number, line in enumerate(_lines(tsv, "tsv"), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"tsv: {str(tsv)!r} line {number}: expected 'source<TAB>target', got "
                                 f"{len(parts) - 1} tabs")
            pairs.append((parts[0].strip(), parts[1].strip()))
    else:
        if source_file is None or target_file is None:
            raise ValueError("source_file, target_file: expected both files (or a tsv file)")
        sources, targets = _lines(source_file, "source_file"), _lines(target_file, "target_file")
        if len(sources) != len(targets):
            raise ValueError(f"target_file: expected as many lines as source_file ({len(sources)}), "
                             f"got {len(targets)}")
        pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets) if s.strip() or t.strip()]
    if not pairs:
        raise ValueError("parallel text: expected at least one pair, got none")
    return pairs


def pad(rows: list[list[int]], value: int = PAD) -> torch.Tensor:
    """Right-pad lists of ids to one (B, N) long tensor."""
    n = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (n - len(r)) for r in rows], dtype=torch.long)


def encode_sources(vocab: CharVocab, sources: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """input_ids (B, S) and attention_mask (B, S) for source texts, each cut to max_length ids (with </s>)."""
    rows = [vocab.encode(s)[:max_length] for s in sources]
    return {"input_ids": pad(rows), "attention_mask": pad([[1] * len(r) for r in rows], 0)}


def seq2seq_batch(pairs: Sequence[tuple[str, str]], vocab: CharVocab, max_length: int) -> dict[str, torch.Tensor]:
    """Padded source ids and mask, labels (target ids + </s>, padding -100) and decoder_input_ids (tf.6)."""
    batch = encode_sources(vocab, [s for s, _ in pairs], max_length)
    labels = pad([vocab.encode(t)[:max_length - 1] for _, t in pairs], IGNORE_INDEX)  # room for <s>
    batch["labels"] = labels
    batch["decoder_input_ids"] = shift_tokens_right(labels, BOS, PAD)
    return batch
