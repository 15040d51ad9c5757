"""The fast pair-merge loop both trainers run (BPE: minitx.tokenizers.bpe_trainer; WordPiece: wordpiece_trainer).

Words are lists of symbol ids, each word type counted `freqs[i]` times. Each step finds the adjacent pair seen
most often (ties: the smaller pair of symbol values, compared as (a, b)) and joins it, left to right, in every
word that holds it ("aaa" with (a, a) becomes (aa, a)); a join whose value already has an id reuses it, so equal
values are one symbol. The standard fast algorithm:

- pair counts over word types are kept incrementally: a merge subtracts the old word's pairs and adds the new
  word's, for the words that held the pair and only those;
- an index maps each pair to the words that hold it. It is a superset: a word that loses a pair stays listed
  and is skipped when found unchanged; it is added to a pair's list only for pairs holding the new symbol,
  since every other pair of a rewritten word was a pair of the word before;
- a heap of (-count, value a, value b) entries gives the best pair, invalidated lazily. Invariant: every pair
  with a positive count has an entry whose count is >= its count (a pair whose count grows gets a fresh
  entry; one whose count falls keeps its old, higher entry). So the first popped entry whose count is the
  pair's count is the best pair, in the same (count, values) order a scan of every pair would use; a stale
  entry is dropped when popped, re-pushed at the pair's current count if the pair still lives.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Callable, Iterator, TypeVar

__all__ = ["merge_pairs", "merge_ids"]

S = TypeVar("S", bytes, str)


def merge_ids(word: list[int], a: int, b: int, c: int) -> list[int] | None:
    """`word` with each (a, b) joined into c, left to right; None if it holds no (a, b)."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(c)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out if len(out) < n else None


def merge_pairs(words: list[list[int]], freqs: list[int], symbols: list[S], join: Callable[[S, S], S],
                min_count: int = 1) -> Iterator[tuple[int, int, int]]:
    """Yield (a, b, c) per merge, best pair first: the ids of the pair and of its join (`symbols[c]` =
    join(symbols[a], symbols[b]); `symbols` grows in place, `words` are rewritten in place). Stops when no
    pair is seen `min_count` times; the caller stops it earlier by leaving the loop (the last pair yielded
    is then not applied to `words`)."""
    ids = {s: i for i, s in enumerate(symbols)}
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        n = freqs[i]
        for pair in zip(word, word[1:]):
            counts[pair] += n
            where[pair].add(i)
    heap = [(-n, symbols[a], symbols[b], a, b) for (a, b), n in counts.items()]
    heapq.heapify(heap)
    while heap:
        neg, _, _, a, b = heapq.heappop(heap)
        best = (a, b)
        n_best = counts.get(best, 0)
        if n_best != -neg:  # stale (module docstring: the invariant)
            if 0 < n_best < -neg:
                heapq.heappush(heap, (-n_best, symbols[a], symbols[b], a, b))
            continue
        if n_best < min_count:
            return
        joined = join(symbols[a], symbols[b])
        c = ids.get(joined)
        if c is None:
            c = ids[joined] = len(symbols)
            symbols.append(joined)
        yield a, b, c
        grown = set()
        for i in where.pop(best):
            word = words[i]
            new = merge_ids(word, a, b, c)
            if new is None:
                continue  # the index is a superset: this word lost the pair to an earlier merge
            n = freqs[i]
            for p in zip(word, word[1:]):
                counts[p] -= n
            for p in zip(new, new[1:]):
                counts[p] += n
                if c in p:  # only a pair holding the new symbol can grow, or be new to this word
                    where[p].add(i)
                    grown.add(p)
            words[i] = new
        for p in grown:
            n = counts[p]
            if n > 0:
                heapq.heappush(heap, (-n, symbols[p[0]], symbols[p[1]], p[0], p[1]))
        counts.pop(best, None)
