"""Byte-level BPE, GPT-2's scheme: trained from scratch, or loaded from a GPT-2 `vocab.json` + `merges.txt`.

Text is split into pre-tokens (a word with its leading space, a run of digits or of punctuation, white
space), each pre-token is taken as its UTF-8 bytes, and learned merges join adjacent pieces, lowest rank
first, exactly as GPT-2's `bpe()`. Every string encodes (there are 256 byte tokens, no unknown token), and
`decode(encode(text)) == text` for every text.

GPT-2's files write each byte as a printable character (`bytes_to_unicode`); this module reads and writes
that form, so its files load in `transformers.GPT2Tokenizer` and GPT-2's load here. Same conventions as
`minitx.tokenizers.wordpiece`: `train`, `encode`, `decode`, `save` / `load`, `vocab_size`, ValueError naming the argument.

GPT-2 pre-tokenizes with the `regex` module's Unicode classes (\\p{L}, \\p{N}); the standard library's `re`
has none, so letters are `[^\\W\\d_]` and numbers `\\d` here. They agree on letters and decimal digits of
every script; they differ only on rare numerals (e.g. Roman-numeral code points), which `re` counts as
punctuation.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

from minitx.tokenizers.bpe_trainer import learn_merges, merge_pair
from minitx.tokenizers.files import checked_ids, JsonStateFile

__all__ = ["ByteBPETokenizer", "bytes_to_unicode", "pre_tokenize_bytes"]

_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to themselves, the
    other 68 to code points 256 and up (so a vocab file never holds white space or control characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_CHAR = bytes_to_unicode()
_CHAR_BYTE = {c: b for b, c in _BYTE_CHAR.items()}


def pre_tokenize_bytes(text: str) -> list[bytes]:
    """GPT-2's pre-tokens of `text`, each as UTF-8 bytes (merges never cross them)."""
    return [piece.encode("utf-8") for piece in _PATTERN.findall(text)]


def _to_str(token: bytes) -> str:
    return "".join(_BYTE_CHAR[b] for b in token)


def _to_bytes(token: str, where: str) -> bytes:
    if not isinstance(token, str):
        raise TypeError(f"{where}: expected each token as a str, got {type(token).__name__} {token!r}")
    try:
        return bytes(_CHAR_BYTE[c] for c in token)
    except KeyError as err:
        raise ValueError(f"{where}: token {token!r} holds {err.args[0]!r}, not a GPT-2 byte character") from None


class ByteBPETokenizer(JsonStateFile):
    """`tokens[i]` is the byte string of id i; `merges` in rank order. Every single byte has an id."""

    file_kind = "BPE tokenizer JSON file"

    def __init__(self, tokens: Sequence[bytes], merges: Sequence[tuple[bytes, bytes]]):
        tokens = [bytes(t) for t in tokens]
        self.ids = {t: i for i, t in enumerate(tokens)}
        if len(self.ids) != len(tokens):
            raise ValueError("tokens: expected distinct byte strings, got duplicates")
        missing = [b for b in range(256) if bytes([b]) not in self.ids]
        if missing:
            raise ValueError(f"tokens: expected all 256 single bytes, {len(missing)} are missing")
        for a, b in merges:
            if a + b not in self.ids:
                raise ValueError(f"merges: merge {a!r} + {b!r} makes a token not in the vocabulary")
        self.tokens, self.merges = tokens, [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self._cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool | None = None) -> "ByteBPETokenizer":
        """256 byte tokens, then vocab_size - 256 merges learned from `texts` (fewer if the text runs out) by
        minitx.tokenizers.bpe_trainer.learn_merges. progress: None reports only a long training (a tqdm bar on
        a terminal, plain lines on stderr otherwise), True always, False never."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(f"vocab_size: expected an int >= 256 (the byte tokens), got {vocab_size!r}")
        if isinstance(texts, str):
            raise TypeError("texts: expected an iterable of str, got a single str (wrap it in a list)")
        counts: collections.Counter = collections.Counter()
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts: expected str items, got {type(text).__name__}")
            counts.update(pre_tokenize_bytes(text))
        merges = learn_merges(counts, vocab_size - 256, progress)
        return cls([bytes([b]) for b in range(256)] + [a + b for a, b in merges], merges)

    def _bpe(self, piece: bytes) -> list[int]:
        """GPT-2's bpe(): merge the lowest-ranked adjacent pair until no pair has a rank."""
        if piece in self._cache:
            return self._cache[piece]
        word = tuple(bytes([b]) for b in piece)
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            word = merge_pair(word, pair)
        ids = [self.ids[t] for t in word]
        if len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return [i for piece in pre_tokenize_bytes(text) for i in self._bpe(piece)]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of `ids`; a cut through a multi-byte character shows as U+FFFD."""
        out = [self.tokens[i] for i in checked_ids(ids, self.vocab_size)]
        return b"".join(out).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files
    def state(self) -> dict:
        return {"type": "bpe", "tokens": [_to_str(t) for t in self.tokens],
                "merges": [f"{_to_str(a)} {_to_str(b)}" for a, b in self.merges]}

    @classmethod
    def from_state(cls, state: dict) -> "ByteBPETokenizer":
        if not isinstance(state, dict) or state.get("type") != "bpe" or not isinstance(state.get("tokens"), list) \
                or not isinstance(state.get("merges"), list):
            raise ValueError("state: expected {'type': 'bpe', 'tokens': [...], 'merges': [...]}")
        tokens = [_to_bytes(t, "tokens") for t in state["tokens"]]
        return cls(tokens, [_split_merge(m, "merges") for m in state["merges"]])


    @classmethod
    def from_gpt2_files(cls, vocab_json: str | Path, merges_txt: str | Path) -> "ByteBPETokenizer":
        """GPT-2's `vocab.json` (token -> id) and `merges.txt` (a `#version` line, then "a b" per merge)."""
        try:
            vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
            lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"vocab_json, merges_txt: could not read GPT-2 tokenizer files ({e})") from None
        if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"vocab_json: expected a JSON object token -> id with ids 0..n-1, in {vocab_json}")
        tokens = [b""] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = _to_bytes(token, "vocab_json")
        merges = [_split_merge(line, "merges_txt") for line in lines if line and not line.startswith("#version")]
        return cls(tokens, merges)

    def save_gpt2_files(self, directory: str | Path) -> tuple[Path, Path]:
        """Write vocab.json and merges.txt as GPT-2 does (transformers.GPT2Tokenizer reads them)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {_to_str(t): i for i, t in enumerate(self.tokens)}
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_path.write_text("#version: 0.2\n" + "".join(f"{_to_str(a)} {_to_str(b)}\n" for a, b in self.merges),
                               encoding="utf-8")
        return vocab_path, merges_path


def _split_merge(line: str, where: str) -> tuple[bytes, bytes]:
    if not isinstance(line, str):
        raise TypeError(f"{where}: expected each merge as a str 'a b', got {type(line).__name__} {line!r}")
    parts = line.split(" ")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{where}: expected a merge 'a b', got {line!r}")
    return _to_bytes(parts[0], where), _to_bytes(parts[1], where)
