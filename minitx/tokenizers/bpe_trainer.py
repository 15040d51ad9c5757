"""Learning byte-level BPE merges: merge the most frequent adjacent pair, again and again (docs/tokenizer.md).

Every distinct pre-token ("word") starts as its bytes. Each step takes the adjacent pair (a, b) seen most often,
counting each word as many times as it occurs (ties: the smaller pair of byte strings, compared as (a, b)), and
joins it into one symbol a + b in every word that holds it, left to right, so "aaa" with (a, a) becomes
(aa, a). Two symbols with the same bytes are the same symbol.

Two implementations, the same merges on every input (tests/test_bpe.py holds them equal on Shakespeare and
on Hypothesis-drawn word counts):

- `learn_merges_reference`: the readable one. Counts live in a dict; each step scans every live pair for the
  best one: O(pairs) per merge, ~25 s for 3,840 merges on tiny Shakespeare.
- `learn_merges`: the standard fast algorithm (minitx.tokenizers.pair_merges, shared with the WordPiece
  trainer): symbols are ints, pair counts over word types are kept incrementally, an index maps each pair to
  the words that hold it, and a heap with lazy invalidation gives the best pair, so a merge touches only its
  words: ~0.5 s for the same 3,840 merges.
"""

from __future__ import annotations

import collections

from minitx.tokenizers.pair_merges import merge_pairs
from minitx.tokenizers.progress import merge_progress

__all__ = ["learn_merges", "learn_merges_reference", "merge_pair"]

Pair = tuple[bytes, bytes]


def merge_pair(word: tuple[bytes, ...], pair: Pair) -> tuple[bytes, ...]:
    """`word` with every occurrence of `pair` joined, left to right (GPT-2's bpe() step)."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges_reference(word_counts: dict[bytes, int], n_merges: int) -> list[Pair]:
    """The readable trainer: up to `n_merges` merges, each the most frequent adjacent pair (ties: the smaller
    pair of byte strings), found by scanning every pair; only the words that hold it are rewritten."""
    words = {tuple(bytes([b]) for b in w): n for w, n in word_counts.items() if w}
    counts: collections.Counter = collections.Counter()
    where: dict[Pair, set] = collections.defaultdict(set)
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += n
            where[pair].add(word)
    merges = []
    for _ in range(n_merges):
        live = [(p, n) for p, n in counts.items() if n > 0]
        if not live:
            break
        pair = min(live, key=lambda item: (-item[1], item[0]))[0]  # most frequent; ties: smallest bytes
        merges.append(pair)
        for word in list(where.pop(pair, ())):
            if word not in words:
                continue
            n = words.pop(word)
            new = merge_pair(word, pair)
            words[new] = words.get(new, 0) + n
            for p in zip(word, word[1:]):
                counts[p] -= n
            for p in zip(new, new[1:]):
                counts[p] += n
                where[p].add(new)
        counts.pop(pair, None)
    return merges


def learn_merges(word_counts: dict[bytes, int], n_merges: int, progress: bool | None = None) -> list[Pair]:
    """Up to `n_merges` merges, the same as `learn_merges_reference`, by the fast algorithm
    (minitx.tokenizers.pair_merges.merge_pairs: incremental pair counts, a lazily invalidated heap).

    progress: True reports every merge run (a tqdm bar on a terminal, plain lines on stderr otherwise), False
    never, None only once training has run a few seconds (long training; short runs stay silent).
    """
    report = merge_progress(n_merges, "BPE merges", progress)
    symbols = [bytes([b]) for b in range(256)]  # a byte's id is its value
    words = [list(w) for w in word_counts if w]
    freqs = [n for w, n in word_counts.items() if w]
    merges: list[Pair] = []
    if n_merges > 0:
        for a, b, _ in merge_pairs(words, freqs, symbols, bytes.__add__):
            merges.append((symbols[a], symbols[b]))
            report(len(merges))
            if len(merges) == n_merges:
                break
    report(None)
    return merges
