"""Real text for MLM: a held-out split, packing into fixed-length blocks, and seeded shuffling of a stream.

Everything here is a lazy iterator over lines, so a corpus of any size is never held in memory whole
(docs/data.md, "Real text"):

- split: the non-empty lines are cut into passages of PASSAGE_LINES consecutive lines; a passage is held out
  when a hash of its number falls in the first HELD_OUT_PERCENT buckets, and passage 1 (lines 16-31) always
  is, so that even a small file has a held-out set. The held-out text is spread over the
  whole corpus (a sorted file does not put all of it at the end) and is whole passages, so it is read in
  context, as the training text is. A separate eval file (`--eval-text`) replaces the split.
- packing (the default, as Hugging Face's `group_texts`): the lines' WordPiece tokens are concatenated and cut
  into blocks of max_length - 2 tokens, each block framed [CLS] ... [SEP]; no token is dropped, and every
  block is full (the stream's last partial block is dropped, as group_texts does). Per-line mode instead makes
  one example per line, truncated at max_length (the rest of a long line is lost).
- shuffling: a seeded shuffle buffer, as in streaming datasets: a block leaves the buffer at a random slot.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from typing import Iterable, Iterator, TypeVar

from minitx.seeding import seed_for
from minitx.tokenizers.wordpiece import Encoding, WordPieceTokenizer

__all__ = ["PASSAGE_LINES", "HELD_OUT_PERCENT", "passage_split", "split_lines", "pack_lines", "shuffled",
           "examples_stream", "epochs"]

PASSAGE_LINES = 16
HELD_OUT_PERCENT = 5
T = TypeVar("T")


def passage_split(line_number: int) -> str:
    """"validation" or "train" for the line at this position (0-based, among the non-empty lines)."""
    passage = line_number // PASSAGE_LINES
    if passage == 1:
        return "validation"
    digest = hashlib.blake2b(passage.to_bytes(8, "little"), digest_size=8, person=b"minitx-held").digest()
    return "validation" if int.from_bytes(digest, "big") % 100 < HELD_OUT_PERCENT else "train"


def split_lines(lines: Iterable[str], split: str) -> Iterator[str]:
    """The lines of one split ("train" or "validation") of a line stream, by passage_split."""
    if split not in ("train", "validation"):
        raise ValueError(f"split: expected 'train' or 'validation', got {split!r}")
    return (line for i, line in enumerate(lines) if passage_split(i) == split)


def pack_lines(lines: Iterable[str], tokenizer: WordPieceTokenizer, max_length: int) -> Iterator[Encoding]:
    """Full blocks of max_length tokens: [CLS], max_length - 2 tokens of the concatenated lines, [SEP].

    word_ids number the words of each block from 0 (a word cut by a block boundary counts in both blocks)."""
    if type(max_length) is not int or max_length < 3:
        raise ValueError(f"max_length: expected an int >= 3, got {max_length!r}")
    size = max_length - 2
    ids: list[int] = []
    words: list[int] = []
    next_word = 0  # running word number over the stream, so words of different lines never merge
    for line in lines:
        enc = tokenizer.encode(line)
        ids += enc.ids[1:-1]
        words += [w + next_word for w in enc.word_ids[1:-1]]
        next_word = words[-1] + 1 if words else next_word
        while len(ids) >= size:
            chunk, chunk_words = ids[:size], words[:size]
            del ids[:size], words[:size]
            first = chunk_words[0]
            yield _block(tokenizer, chunk, [w - first for w in chunk_words])


def _block(tokenizer: WordPieceTokenizer, ids: list[int], words: list[int]) -> Encoding:
    all_ids = [tokenizer.cls_id] + ids + [tokenizer.sep_id]
    return Encoding(all_ids, [0] * len(all_ids), [1] + [0] * len(ids) + [1], [None] + words + [None],
                    [tokenizer.vocab[i] for i in all_ids])


def shuffled(items: Iterable[T], buffer_size: int, seed: int) -> Iterator[T]:
    """The items in a seeded random order, holding at most `buffer_size` of them (1: the original order)."""
    if type(buffer_size) is not int or buffer_size < 1:
        raise ValueError(f"buffer_size: expected a positive int, got {buffer_size!r}")
    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def examples_stream(lines: Iterable[str], tokenizer: WordPieceTokenizer, max_length: int,
                    packing: bool = True) -> Iterator[Encoding | str]:
    """Packed blocks (Encodings) of the lines, or the lines themselves (per-line mode: encoded later, truncated
    at max_length)."""
    return pack_lines(lines, tokenizer, max_length) if packing else iter(lines)


def epochs(make_stream, seed: int, buffer_size: int) -> Iterator:
    """make_stream() replayed forever, each epoch shuffled with its own seed (seed, epoch)."""
    for epoch in itertools.count():
        yield from shuffled(make_stream(), buffer_size, seed_for(seed, epoch, 0x5EED))
