"""Exact match and corpus BLEU (Papineni et al. 2002) with sacreBLEU's default "13a" tokenization, so the
numbers are comparable with `sacrebleu.corpus_bleu(hyps, [refs]).score` (tests/test_seq2seq.py checks it).

BLEU = BP * exp(mean_n log p_n), n = 1..4, where p_n is the clipped n-gram precision over the whole corpus
and BP = min(1, exp(1 - r / c)) the brevity penalty (r, c: reference and hypothesis lengths in tokens).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_13A = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # symbols
        (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless after a digit
        (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... unless before a digit
        (re.compile(r"([0-9])(-)"), r"\1 \2 ")]  # a dash after a digit


def tokenize_13a(line: str) -> list[str]:
    """mteval-v13a's tokenization, as sacreBLEU's default."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A:
        line = pattern.sub(replacement, line)
    return line.split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU in percent (0-100) of hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"references: expected {len(hypotheses)} (one per hypothesis), got {len(references)}")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokenize_13a(hyp), tokenize_13a(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share of hypotheses equal to their reference, in percent."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"references: expected {len(hypotheses)} (one per hypothesis, at least one), "
                         f"got {len(references)}")
    return 100.0 * sum(h == r for h, r in zip(hypotheses, references)) / len(references)
