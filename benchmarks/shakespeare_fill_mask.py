"""Fill-mask on held-out Shakespeare, chosen by a rule, not by hand: `python benchmarks/shakespeare_fill_mask.py RUN`.

RUN is a `minitx pretrain --corpus shakespeare` run directory. The lines are the held-out split's (the same
hashed passages the run evaluated on), in file order; every line of at least --min-words words is taken,
until --n lines; in each, the masked word is the one at position len(words) // 2 (punctuation skipped
rightwards), replaced by one literal [MASK] (a word of several pieces is still one mask, so the model must
propose the whole word as one token). Prints a markdown table and writes it to --out, with the share of
masks whose top-1 is the original word and whose top-5 holds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minitx.data.corpora import iter_corpus_lines
from minitx.data.text import split_lines
from minitx.recipes.pretrain.fill_mask import MASK, fill_mask, load_pretrained


def masked_lines(n: int, min_words: int) -> list[tuple[str, str]]:
    out = []
    for line in split_lines(iter_corpus_lines("shakespeare"), "validation"):
        words = line.split()
        if len(words) < min_words:
            continue
        i = len(words) // 2
        while i < len(words) and not words[i].isalpha():
            i += 1
        if i == len(words):
            continue
        out.append((" ".join(words[:i] + [MASK] + words[i + 1:]), words[i]))
        if len(out) == n:
            break
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/shakespeare_fill_mask.py", description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--min-words", type=int, default=7)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    model, tok = load_pretrained(args.run)
    rows = ["| held-out line (one word masked) | original | top 3 (probability) |", "|---|---|---|"]
    top1 = top5 = 0
    for text, word in masked_lines(args.n, args.min_words):
        preds = fill_mask(model, tok, text, top_k=5)[0]
        truth = " ".join(tok.normalize(word).split())
        top1 += preds[0][0] == truth
        top5 += truth in [t for t, _ in preds]
        best = ", ".join(f"`{t}` {prob:.0%}" for t, prob in preds[:3])
        rows.append(f"| {text.replace('|', '/')} | `{word}` | {best} |")
    n = len(rows) - 2
    summary = f"\n{n} masks: top-1 is the original word in {top1} ({top1 / n:.0%}), top-5 holds it in {top5} " \
              f"({top5 / n:.0%}).\n"
    table = "\n".join(rows) + "\n" + summary
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
