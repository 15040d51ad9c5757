"""Learning byte-level BPE merges: merge the most frequent adjacent pair, again and again (docs/tokenizer.md).

Every distinct pre-token ("word") starts as its bytes. Each step takes the adjacent pair (a, b) seen most often,
counting each word as many times as it occurs (ties: the smaller pair of byte strings, compared as (a, b)), and
joins it into one symbol a + b in every word that holds it, left to right, so "aaa" with (a, a) becomes
(aa, a). Two symbols with the same bytes are the same symbol.

Two implementations, the same merges on every input (tests/test_bpe.py holds them equal on Shakespeare and
on Hypothesis-drawn word counts):

- `learn_merges_reference`: the readable one. Counts live in a dict; each step scans every live pair for the
  best one: O(pairs) per merge, ~25 s for 3,840 merges on tiny Shakespeare.
- `learn_merges`: the standard fast algorithm. Symbols are ints, each word a list of ints; pair counts over
  word types are kept incrementally; an index maps each pair to the words that hold it (a superset: a word is
  not removed when it loses a pair, it is skipped when found unchanged); a heap of (-count, bytes a, bytes b)
  gives the best pair, and its entries are invalidated lazily: an entry whose count no longer equals the
  pair's count is dropped when popped, and a pair whose count grew gets a fresh entry. Invariant: every live
  pair has an entry whose count is >= its current count, so the first popped entry that is exact is the
  best pair by the same (count, bytes) order as the reference's scan. A merge touches only its words.
"""

from __future__ import annotations

import collections
import heapq

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
    """Up to `n_merges` merges, the same as `learn_merges_reference` (module docstring: the fast algorithm).

    progress: True reports every merge run (a tqdm bar on a terminal, plain lines on stderr otherwise), False
    never, None only once training has run a few seconds (long training; short runs stay silent).
    """
    symbols: list[bytes] = [bytes([b]) for b in range(256)]  # id -> bytes
    ids = {s: i for i, s in enumerate(symbols)}  # bytes -> id: equal bytes are one symbol, as in the reference
    words: list[list[int]] = []
    freqs: list[int] = []
    for w, n in word_counts.items():
        if w:
            words.append(list(w))  # a byte's id is its value
            freqs.append(n)
    counts: dict[tuple[int, int], int] = collections.defaultdict(int)
    where: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for i, (word, n) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += n
            where[pair].add(i)
    heap = [(-n, symbols[a], symbols[b], a, b) for (a, b), n in counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    report = merge_progress(n_merges, "BPE merges", progress)
    while len(merges) < n_merges and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        best = (a, b)
        n_best = counts.get(best, 0)
        if n_best != -neg:  # stale; the invariant's fresh entry (if the pair still lives) is lower in the heap
            if 0 < n_best < -neg:
                heapq.heappush(heap, (-n_best, symbols[a], symbols[b], a, b))
            continue
        merges.append((symbols[a], symbols[b]))
        report(len(merges))
        joined = symbols[a] + symbols[b]
        c = ids.get(joined)
        if c is None:
            c = ids[joined] = len(symbols)
            symbols.append(joined)
        delta: dict[tuple[int, int], int] = collections.defaultdict(int)
        for i in where.pop(best):
            word = words[i]
            new = _merge_ids(word, a, b, c)
            if new is None:
                continue  # the index is a superset: this word lost the pair to an earlier merge
            n = freqs[i]
            for p in zip(word, word[1:]):
                delta[p] -= n
            for p in zip(new, new[1:]):
                delta[p] += n
                if c in p:  # every other pair of the new word was a pair of the old one, already indexed
                    where[p].add(i)
            words[i] = new
        for p, d in delta.items():
            if d:
                n = counts[p] = counts[p] + d
                if d > 0:
                    heapq.heappush(heap, (-n, symbols[p[0]], symbols[p[1]], p[0], p[1]))
                elif n == 0:
                    del counts[p]
        counts.pop(best, None)
    report(None)
    return merges


def _merge_ids(word: list[int], a: int, b: int, c: int) -> list[int] | None:
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
