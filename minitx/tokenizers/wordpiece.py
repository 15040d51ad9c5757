"""A WordPiece tokenizer, trained from scratch, as BERT uses it.

Text -> normalized text (BERT's BasicTokenizer: control characters dropped, CJK ideographs and punctuation split
off, optional lowercasing with accent stripping: minitx.tokenizers.pretokenize) -> words -> pieces, greedy longest-match-first,
continuation pieces prefixed with `##`; a word with no complete segmentation (or longer than
`max_input_chars_per_word`) is [UNK]. Training (minitx.tokenizers.wordpiece_trainer) grows the vocabulary from single
characters by merging the most frequent adjacent pair, as the `tokenizers` WordPiece trainer does.
The special tokens are found by name, anywhere in the vocabulary, so a Hugging Face `vocab.txt` ([PAD] = 0,
[UNK] = 100, [CLS] = 101, ... in bert-base) loads as it is. Guide: docs/tokenizer.md.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from minitx.tokenizers.pretokenize import iter_words, pre_tokenize
from minitx.tokenizers.wordpiece_trainer import CRITERIA, learn_vocabulary

__all__ = ["WordPieceTokenizer", "Encoding", "SPECIAL_TOKENS", "truncated_lengths"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # a trained vocabulary puts them at ids 0..4
FORMAT_VERSION = 1
_WORD_CACHE_SIZE = 200_000  # words whose pieces are remembered (a corpus repeats its words)


def truncated_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Segment lengths after BERT's longest-first truncation (truncate_seq_pair: while too long, drop a token
    from the longer segment, from A on a tie), in closed form: any length costs O(1)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a >= len_b and budget - len_b >= len_b:
        return budget - len_b, len_b
    if len_a < len_b and budget - len_a >= len_a:
        return len_a, budget - len_a
    return budget // 2, budget - budget // 2


@dataclass
class Encoding:
    """One encoded input. word_ids[i] is the index of the word token i came from (None for special tokens);
    in a pair, the second segment's words are numbered from 0 again and have type id 1."""
    ids: list[int]
    type_ids: list[int]
    special_tokens_mask: list[int]
    word_ids: list[int | None]
    tokens: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class WordPieceTokenizer:
    """vocab: tokens in id order; it must hold the five SPECIAL_TOKENS (anywhere: ids are looked up by name).
    lowercase=False is the cased mode (no lowercasing, accents kept), as BERT's cased checkpoints."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, max_input_chars_per_word: int = 100):
        vocab = list(vocab)
        if len(set(vocab)) != len(vocab) or not all(isinstance(t, str) and t for t in vocab):
            raise ValueError("vocab: expected unique non-empty strings")
        missing = [t for t in SPECIAL_TOKENS if t not in set(vocab)]
        if missing:
            raise ValueError(f"vocab: expected to hold the special tokens {list(SPECIAL_TOKENS)}, "
                             f"missing {missing}")
        if type(max_input_chars_per_word) is not int or max_input_chars_per_word < 1:  # bool is refused too
            raise ValueError(f"max_input_chars_per_word: expected a positive int, got {max_input_chars_per_word!r}")
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase: expected a bool, got {type(lowercase).__name__}")
        self.vocab = vocab
        self.token_to_id = {t: i for i, t in enumerate(vocab)}
        self.lowercase = lowercase
        self.max_input_chars_per_word = max_input_chars_per_word
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.token_to_id[t]
                                                                            for t in SPECIAL_TOKENS)
        self.special_ids = sorted(self.token_to_id[t] for t in SPECIAL_TOKENS)
        self._longest = max(len(t) for t in vocab)  # no piece is longer: bounds the greedy search
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # -- training and loading ------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True,
              max_input_chars_per_word: int = 100, criterion: str = "frequency",
              progress: bool | None = None) -> "WordPieceTokenizer":
        """Learn a vocabulary (minitx.tokenizers.wordpiece_trainer): the specials, every character seen, then merges of
        the most frequent adjacent pair (criterion="likelihood": the old WordPiece score) seen at least
        `min_frequency` times, until `vocab_size` tokens or no pair is left. progress: None reports only a long
        training (a tqdm bar on a terminal, plain lines on stderr otherwise), True always, False never."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
            what = "a single " if isinstance(texts, (str, bytes)) else ""
            raise TypeError(f"texts: expected an iterable of strings (lines), got {what}{type(texts).__name__}")
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size: expected an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency: expected a positive int, got {min_frequency!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
        word_counts: Counter = Counter()
        lines = iter(texts)
        while chunk := list(islice(lines, 4096)):
            for t in chunk:
                if not isinstance(t, str):
                    raise TypeError(f"texts: expected str items (lines), got {type(t).__name__}")
            # Lines joined by a newline give the same words as one by one (a newline is white space, and neither
            # NFC, lowercasing nor accent stripping looks across it), in one pass per chunk instead of per line.
            word_counts.update(w for w in pre_tokenize("\n".join(chunk), lowercase)
                               if len(w) <= max_input_chars_per_word)
        tokens = learn_vocabulary(word_counts, vocab_size - len(SPECIAL_TOKENS), min_frequency, criterion,
                                  progress)
        return cls(list(SPECIAL_TOKENS) + [t for t in tokens if t not in SPECIAL_TOKENS], lowercase,
                   max_input_chars_per_word)

    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True,
                        max_input_chars_per_word: int = 100) -> "WordPieceTokenizer":
        """A Hugging Face `vocab.txt` (one token per line, line i = id i), e.g. bert-base-uncased's; pass
        lowercase=False for a cased model (tokenizer_config.json's do_lower_case)."""
        path = _readable_file(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"path: {str(path)!r} is not a UTF-8 vocab.txt ({e})") from None
        vocab = [line.rstrip("\r") for line in text.split("\n")]
        if vocab and vocab[-1] == "":
            vocab.pop()  # the newline after the last token
        try:
            return cls(vocab, lowercase, max_input_chars_per_word)
        except (TypeError, ValueError) as e:
            raise ValueError(f"path: {str(path)!r}: malformed vocab.txt ({e})") from None

    def save_vocab_file(self, path: str | Path) -> None:
        """Write `vocab.txt` as Hugging Face's BertTokenizer reads it (one token per line, in id order)."""
        Path(path).write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")

    # -- encoding ------------------------------------------------------------------------------------------
    def tokenize_word(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one word, or ["[UNK]"] if it cannot be covered."""
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        pieces, start = [], 0
        while start < len(word):
            end = min(len(word), start + self._longest)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    break
                end -= 1
            if end == start:
                pieces = ["[UNK]"]
                break
            pieces.append(piece)
            start = end
        if len(self._cache) >= _WORD_CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = pieces
        return pieces

    def _iter_segment(self, text: str | Sequence[str]) -> Iterator[tuple[str, int]]:
        """(token, word id) of one segment, lazily; a list of strings is taken as already split into words."""
        if isinstance(text, str):
            groups: Iterable = ((i, (w,)) for i, w in enumerate(iter_words(text, self.lowercase)))
        elif isinstance(text, (list, tuple)) and all(isinstance(w, str) for w in text):
            groups = ((i, iter_words(w, self.lowercase)) for i, w in enumerate(text))  # word i may split
        else:
            raise TypeError(f"text: expected str or list[str], got {type(text).__name__}")
        for i, words in groups:
            for w in words:
                for piece in self.tokenize_word(w):
                    yield piece, i

    def _segment(self, text: str | Sequence[str], limit: int | None = None) -> tuple[list[str], list[int]]:
        """Tokens and word ids of one segment; with `limit`, only the first `limit` (the rest is never made)."""
        pairs = list(islice(self._iter_segment(text), limit))
        return [t for t, _ in pairs], [w for _, w in pairs]

    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None,
               max_length: int | None = None) -> Encoding:
        """[CLS] A [SEP] (B [SEP]); truncation removes tokens from the end of the longer segment first.

        With max_length, a segment is tokenized only as far as it can be kept, so a 1 MB line costs what its
        first max_length tokens cost."""
        n_special = 3 if pair is not None else 2
        limit = None
        if max_length is not None:
            if type(max_length) is not int or max_length < n_special:
                raise ValueError(f"max_length: expected an int >= {n_special}, got {max_length!r}")
            limit = max_length - n_special + 1  # one past the budget tells "longer than the budget" apart
        a, a_words = self._segment(text, limit)
        b, b_words = self._segment(pair, limit) if pair is not None else ([], [])
        if max_length is not None:
            keep_a, keep_b = truncated_lengths(len(a), len(b), max_length - n_special)
            a, a_words, b, b_words = a[:keep_a], a_words[:keep_a], b[:keep_b], b_words[:keep_b]
        tokens = ["[CLS]"] + a + ["[SEP]"]
        word_ids: list[int | None] = [None] + a_words + [None]
        type_ids = [0] * len(tokens)
        if pair is not None:
            tokens += b + ["[SEP]"]
            word_ids += b_words + [None]
            type_ids += [1] * (len(b) + 1)
        special = [int(w is None) for w in word_ids]
        return Encoding([self.token_to_id[t] for t in tokens], type_ids, special, word_ids, tokens)

    def encode_batch(self, texts: Sequence[str | Sequence[str]], pairs: Sequence | None = None,
                     max_length: int | None = None, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Encode and pad to the longest (or `pad_to`): input_ids, attention_mask, token_type_ids,
        special_tokens_mask (1 on specials and padding), word_ids (-1 on specials and padding); all (B, N)."""
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"pairs: expected {len(texts)} items to match texts, got {len(pairs)}")
        encodings = [self.encode(t, pairs[i] if pairs is not None else None, max_length)
                     for i, t in enumerate(texts)]
        return self.collate(encodings, pad_to)

    def collate(self, encodings: Sequence[Encoding], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Pad encodings into a batch of (B, N) tensors (see encode_batch)."""
        n = max([len(e) for e in encodings] + [0])
        if pad_to is not None:
            if pad_to < n:
                raise ValueError(f"pad_to: expected >= the longest encoding ({n}), got {pad_to}")
            n = pad_to
        batch = {k: torch.zeros(len(encodings), n, dtype=torch.long) for k in
                 ("input_ids", "attention_mask", "token_type_ids")}
        batch["special_tokens_mask"] = torch.ones(len(encodings), n, dtype=torch.long)
        batch["word_ids"] = torch.full((len(encodings), n), -1, dtype=torch.long)
        batch["input_ids"].fill_(self.pad_id)
        for i, e in enumerate(encodings):
            m = len(e)
            batch["input_ids"][i, :m] = torch.tensor(e.ids)
            batch["attention_mask"][i, :m] = 1
            batch["token_type_ids"][i, :m] = torch.tensor(e.type_ids)
            batch["special_tokens_mask"][i, :m] = torch.tensor(e.special_tokens_mask)
            batch["word_ids"][i, :m] = torch.tensor([-1 if w is None else w for w in e.word_ids])
        return batch

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Tokens joined by spaces, `##` pieces glued to the piece before them."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out: list[str] = []
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: expected ints in [0, {self.vocab_size}), got {i!r}")
            if skip_special_tokens and i in self.special_ids and i != self.unk_id:
                continue
            token = self.vocab[i]
            if token.startswith("##") and out:
                out[-1] += token[2:]
            else:
                out.append(token)
        return " ".join(out)

    def normalize(self, text: str) -> str:
        """What decode(encode(text)) gives back when no word became [UNK]: the words, joined by spaces."""
        return " ".join(pre_tokenize(text, self.lowercase))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        state = {"type": "wordpiece", "version": FORMAT_VERSION, "lowercase": self.lowercase,
                 "max_input_chars_per_word": self.max_input_chars_per_word, "vocab": self.vocab}
        Path(path).write_text(json.dumps(state, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "WordPieceTokenizer":
        """A tokenizer.json written by `save` (any minitx version so far); a malformed file raises ValueError."""
        path = _readable_file(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"path: {str(path)!r} is not a valid tokenizer JSON file "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
        expected = {"type": "wordpiece", "version": FORMAT_VERSION}
        if not isinstance(state, dict) or any(state.get(k) != v for k, v in expected.items()):
            got = {k: state.get(k) for k in expected} if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"path: {str(path)!r}: expected a tokenizer file with {expected}, got {got}")
        for key, kind in (("vocab", list), ("lowercase", bool), ("max_input_chars_per_word", int)):
            if type(state.get(key)) is not kind:  # exact: JSON true is not an int here
                raise ValueError(f"path: {str(path)!r}: field {key!r} should be a {kind.__name__}, "
                                 f"got {type(state.get(key)).__name__}")
        try:
            return cls(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"path: {str(path)!r}: malformed tokenizer ({e})") from None


def _readable_file(path: str | Path) -> Path:
    """`path` as a Path if it names an existing regular file, else a ValueError saying what it is instead."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected a tokenizer file, got the directory {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"path: expected an existing tokenizer file, got {str(path)!r} (no such file)")
    return path
