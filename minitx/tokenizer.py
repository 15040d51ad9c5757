"""A WordPiece tokenizer, trained from scratch, as BERT uses it.

Text -> normalized text (optional lowercasing and accent stripping) -> words (split on whitespace, every
punctuation mark and CJK character its own word: minitx.pretokenize) -> pieces, greedy longest-match-first,
continuation pieces prefixed with `##`; a word with no complete segmentation (or longer than
`max_input_chars_per_word`) is [UNK].
Training grows the vocabulary from single characters by merging the adjacent pair with the best score
count(ab) / (count(a) count(b)) (the WordPiece likelihood criterion), until `vocab_size` is reached.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from minitx.pretokenize import pre_tokenize

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, in this order
FORMAT_VERSION = 1


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
    """vocab: tokens in id order; the first five must be SPECIAL_TOKENS."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, max_input_chars_per_word: int = 100):
        vocab = list(vocab)
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab: expected to start with {list(SPECIAL_TOKENS)}, got {vocab[:5]}")
        if len(set(vocab)) != len(vocab) or not all(isinstance(t, str) and t for t in vocab):
            raise ValueError("vocab: expected unique non-empty strings")
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word: expected a positive int, got {max_input_chars_per_word!r}")
        self.vocab = vocab
        self.token_to_id = {t: i for i, t in enumerate(vocab)}
        self.lowercase = bool(lowercase)
        self.max_input_chars_per_word = max_input_chars_per_word
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_TOKENS))
        self.special_ids = list(range(len(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # -- training ------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True,
              max_input_chars_per_word: int = 100) -> "WordPieceTokenizer":
        """Learn a vocabulary: all characters seen, then best-scoring merges (pairs seen >= min_frequency)."""
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size: expected an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency: expected a positive int, got {min_frequency!r}")
        word_counts = Counter(w for t in texts for w in pre_tokenize(t, lowercase)
                              if len(w) <= max_input_chars_per_word)
        tokens = learn_vocabulary(word_counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
        return cls(list(SPECIAL_TOKENS) + tokens, lowercase, max_input_chars_per_word)

    # -- encoding ------------------------------------------------------------------------------------------
    def tokenize_word(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one word, or ["[UNK]"] if it cannot be covered."""
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def _segment(self, text: str | Sequence[str]) -> tuple[list[str], list[int]]:
        """Tokens and word ids of one segment; a list of strings is taken as already split into words."""
        if isinstance(text, str):
            words = pre_tokenize(text, self.lowercase)
            groups = [[w] for w in words]
        elif isinstance(text, (list, tuple)) and all(isinstance(w, str) for w in text):
            groups = [pre_tokenize(w, self.lowercase) for w in text]  # word i may split further; ids stay i
        else:
            raise TypeError(f"text: expected str or list[str], got {type(text).__name__}")
        tokens, word_ids = [], []
        for i, group in enumerate(groups):
            for w in group:
                pieces = self.tokenize_word(w)
                tokens += pieces
                word_ids += [i] * len(pieces)
        return tokens, word_ids

    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None,
               max_length: int | None = None) -> Encoding:
        """[CLS] A [SEP] (B [SEP]); truncation removes tokens from the end of the longer segment first."""
        a, a_words = self._segment(text)
        b, b_words = self._segment(pair) if pair is not None else ([], [])
        n_special = 3 if pair is not None else 2
        if max_length is not None:
            if not isinstance(max_length, int) or max_length < n_special:
                raise ValueError(f"max_length: expected an int >= {n_special}, got {max_length!r}")
            while len(a) + len(b) + n_special > max_length:  # longest-first, as BERT's truncate_seq_pair
                if len(a) >= len(b):
                    a, a_words = a[:-1], a_words[:-1]
                else:
                    b, b_words = b[:-1], b_words[:-1]
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
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"path: {str(path)!r} is not a valid tokenizer JSON file ({e})") from None
        expected = {"type": "wordpiece", "version": FORMAT_VERSION}
        if not isinstance(state, dict) or any(state.get(k) != v for k, v in expected.items()):
            got = {k: state.get(k) for k in expected} if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"path: {str(path)!r}: expected a tokenizer file with {expected}, got {got}")
        for key, kind in (("vocab", list), ("lowercase", bool), ("max_input_chars_per_word", int)):
            if not isinstance(state.get(key), kind):
                raise ValueError(f"path: {str(path)!r}: field {key!r} should be a {kind.__name__}, "
                                 f"got {type(state.get(key)).__name__}")
        try:
            return cls(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"path: {str(path)!r}: malformed tokenizer ({e})") from None


# ---------------------------------------------------------------------------------------------------------------
# Training: the WordPiece merge loop

def _pairs(symbols: list[str]) -> list[tuple[str, str]]:
    return list(zip(symbols, symbols[1:]))


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(pair[0] + pair[1][2:])  # "ab" + "##c" -> "abc"; "##ab" + "##c" -> "##abc"
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocabulary(word_counts: dict[str, int], budget: int, min_frequency: int = 2) -> list[str]:
    """Up to `budget` tokens: every character (word-initial, or `##` continuation) seen, then merges.

    Each step merges the adjacent pair (a, b) maximizing count(ab) / (count(a) count(b)) among pairs seen at
    least `min_frequency` times (ties: the lexicographically largest pair), updating counts only for the
    words that contain it. A word that is one token needs no more merges, so training stops early once every
    word is whole.
    """
    words = sorted(word_counts)  # sorted: the result never depends on the iteration order of the input
    splits = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    counts = [word_counts[w] for w in words]
    tokens = sorted({s for symbols in splits for s in symbols})[:budget]
    token_counts: Counter = Counter()
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def account(i: int, sign: int) -> None:
        for s in splits[i]:
            token_counts[s] += sign * counts[i]
        for p in _pairs(splits[i]):
            pair_counts[p] += sign * counts[i]
            if sign > 0:
                where[p].add(i)
            elif pair_counts[p] <= 0:
                del pair_counts[p]

    for i in range(len(words)):
        account(i, +1)
    known = set(tokens)
    while len(tokens) < budget:
        candidates = [p for p, c in pair_counts.items() if c >= min_frequency]
        if not candidates:
            break
        best = max(candidates, key=lambda p: (pair_counts[p] / (token_counts[p[0]] * token_counts[p[1]]), p))
        for i in sorted(where.pop(best)):
            if best in _pairs(splits[i]):
                account(i, -1)
                splits[i] = _merge(splits[i], best)
                account(i, +1)
        new = best[0] + best[1][2:]
        if new not in known:
            known.add(new)
            tokens.append(new)
    return tokens
