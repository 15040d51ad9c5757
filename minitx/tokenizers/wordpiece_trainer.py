"""Learning a WordPiece vocabulary: merge adjacent pieces, most frequent pair first (docs/tokenizer.md).

Words start as characters, every non-initial one with the `##` continuation prefix ("the" -> t ##h ##e). Each
step merges one adjacent pair (a, b) into a new piece ("t" + "##h" -> "th", "##h" + "##e" -> "##he"), in every
word that holds it, until the vocabulary is full or no pair is seen `min_frequency` times. Which pair:

- "frequency" (the default, as the `tokenizers` WordPiece trainer, which is BPE with `##` prefixes): the pair
  seen most often, count(ab). Common words end up whole: `the`, `and`, `of` are one token on English.
- "likelihood" (WordPiece as described by Schuster & Nakajima / in the BERT era): the pair maximizing
  count(ab) / (count(a) count(b)). It rewards pairs of *rare* pieces that always occur together, so on real
  text the budget goes to rare digit strings and names first; kept for the comparison in lesson 05.

The frequency trainer runs the fast pair-merge loop it shares with the BPE trainer (minitx.tokenizers.pair_merges):
pair counts kept incrementally over word types, an index from each pair to the words that hold it and a heap
with lazy invalidation, so a merge costs only the words it touches.
The likelihood trainer rescans all pairs per merge (its scores change whenever a piece count changes).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from minitx.tokenizers.pair_merges import merge_pairs
from minitx.tokenizers.progress import merge_progress

__all__ = ["learn_vocabulary", "CRITERIA"]

CRITERIA = ("frequency", "likelihood")
Pair = tuple[str, str]


def _pairs(symbols: list[str]) -> list[Pair]:
    return list(zip(symbols, symbols[1:]))


def _merge(symbols: list[str], pair: Pair) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(_join(*pair))
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocabulary(word_counts: dict[str, int], budget: int, min_frequency: int = 2,
                     criterion: str = "frequency", progress: bool | None = None) -> list[str]:
    """Up to `budget` tokens: the characters seen (word-initial, or `##` continuation; the most frequent ones
    if there are more than `budget`), then one new piece per merge, in merge order.

    Ties go to the lexicographically smallest pair (frequency) or largest (likelihood, as before), so the
    result depends only on the counts, never on the order words came in. progress: None reports only a long
    training (a tqdm bar on a terminal, plain lines on stderr otherwise), True always, False never.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
    words = sorted(word_counts)
    counts = [word_counts[w] for w in words]
    symbol_counts: Counter = Counter()
    for w, c in zip(words, counts):
        symbol_counts[w[0]] += c
        for ch in w[1:]:
            symbol_counts["##" + ch] += c
    tokens = sorted(symbol_counts, key=lambda s: (-symbol_counts[s], s))[:budget]
    tokens.sort()
    if criterion == "frequency":
        _by_frequency(words, counts, tokens, budget, min_frequency, progress)
    else:
        _by_likelihood([_split(w) for w in words], counts, tokens, budget, min_frequency)
    return tokens


def _split(word: str) -> list[str]:
    return [word[0]] + ["##" + c for c in word[1:]]


def _join(a: str, b: str) -> str:
    return a + b[2:]  # "ab" + "##c" -> "abc"; "##ab" + "##c" -> "##abc"


def _by_frequency(words: list[str], counts: list[int], tokens: list[str], budget: int, min_frequency: int,
                  progress: bool | None) -> None:
    """Merges by minitx.tokenizers.pair_merges.merge_pairs (incremental counts, a lazily invalidated heap)."""
    if len(tokens) >= budget:
        return
    symbols: list[str] = []
    ids: dict[str, int] = {}

    def symbol_id(s: str) -> int:
        if s not in ids:
            ids[s] = len(symbols)
            symbols.append(s)
        return ids[s]

    splits = [[symbol_id(s) for s in _split(w)] for w in words]
    known = set(tokens)
    report = merge_progress(budget - len(tokens), "WordPiece merges", progress)
    start = len(tokens)
    for _, _, c in merge_pairs(splits, counts, symbols, _join, min_frequency):
        piece = symbols[c]
        if piece not in known:
            known.add(piece)
            tokens.append(piece)
            report(len(tokens) - start)
            if len(tokens) >= budget:
                break
    report(None)


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
