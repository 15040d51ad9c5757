"""Learning a WordPiece vocabulary: merge adjacent pieces, most frequent pair first (docs/tokenizer.md).

Words start as characters, every non-initial one with the `##` continuation prefix ("the" -> t ##h ##e). Each
step merges one adjacent pair (a, b) into a new piece ("t" + "##h" -> "th", "##h" + "##e" -> "##he"), in every
word that holds it, until the vocabulary is full or no pair is seen `min_frequency` times. Which pair:

- "frequency" (the default, as the `tokenizers` WordPiece trainer, which is BPE with `##` prefixes): the pair
  seen most often, count(ab). Common words end up whole: `the`, `and`, `of` are one token on English.
- "likelihood" (WordPiece as described by Schuster & Nakajima / in the BERT era): the pair maximizing
  count(ab) / (count(a) count(b)). It rewards pairs of *rare* pieces that always occur together, so on real
  text the budget goes to rare digit strings and names first; kept for the comparison in lesson 05.

The frequency trainer keeps pair counts incrementally, with an index from each pair to the words that hold it
and a heap of counts with lazy deletion, so a merge costs only the words it touches: seconds on a few MB.
The likelihood trainer rescans all pairs per merge (its scores change whenever a piece count changes).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

__all__ = ["learn_vocabulary", "CRITERIA"]

CRITERIA = ("frequency", "likelihood")
Pair = tuple[str, str]


def _pairs(symbols: list[str]) -> list[Pair]:
    return list(zip(symbols, symbols[1:]))


def _merge(symbols: list[str], pair: Pair) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1][2:])  # "ab" + "##c" -> "abc"; "##ab" + "##c" -> "##abc"
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocabulary(word_counts: dict[str, int], budget: int, min_frequency: int = 2,
                     criterion: str = "frequency") -> list[str]:
    """Up to `budget` tokens: the characters seen (word-initial, or `##` continuation; the most frequent ones
    if there are more than `budget`), then one new piece per merge, in merge order.

    Ties go to the lexicographically smallest pair (frequency) or largest (likelihood, as before), so the
    result depends only on the counts, never on the order words came in.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
    words = sorted(word_counts)
    splits = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    counts = [word_counts[w] for w in words]
    symbol_counts: Counter = Counter()
    for symbols, c in zip(splits, counts):
        for s in symbols:
            symbol_counts[s] += c
    tokens = sorted(symbol_counts, key=lambda s: (-symbol_counts[s], s))[:budget]
    tokens.sort()
    learn = _by_frequency if criterion == "frequency" else _by_likelihood
    learn(splits, counts, tokens, budget, min_frequency)
    return tokens


def _by_frequency(splits: list[list[str]], counts: list[int], tokens: list[str], budget: int,
                  min_frequency: int) -> None:
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for i, symbols in enumerate(splits):
        for p in _pairs(symbols):
            pair_counts[p] += counts[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    known = set(tokens)
    while len(tokens) < budget and heap:
        neg, best = heapq.heappop(heap)
        if pair_counts.get(best) != -neg:
            continue  # stale: the pair's count changed since this entry; a fresh entry is in the heap
        if -neg < min_frequency:
            break
        changed: dict[Pair, int] = defaultdict(int)
        for i in where.pop(best):
            old = splits[i]
            new = _merge(old, best)
            if len(new) == len(old):
                continue  # the index is a superset: this word lost the pair to an earlier merge
            for p in _pairs(old):
                changed[p] -= counts[i]
            for p in _pairs(new):
                changed[p] += counts[i]
                where[p].add(i)
            splits[i] = new
        for p, delta in changed.items():
            if delta:
                pair_counts[p] += delta
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
        piece = best[0] + best[1][2:]
        if piece not in known:
            known.add(piece)
            tokens.append(piece)


def _by_likelihood(splits: list[list[str]], counts: list[int], tokens: list[str], budget: int,
                   min_frequency: int) -> None:
    token_counts: Counter = Counter()
    pair_counts: Counter = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)

    def account(i: int, sign: int) -> None:
        for s in splits[i]:
            token_counts[s] += sign * counts[i]
        for p in _pairs(splits[i]):
            pair_counts[p] += sign * counts[i]
            if sign > 0:
                where[p].add(i)
            elif pair_counts[p] <= 0:
                del pair_counts[p]

    for i in range(len(splits)):
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
