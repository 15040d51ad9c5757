"""Tokenizer training against Hugging Face `tokenizers`: `python benchmarks/tokenizer_training.py [--rounds N]`.

What it compares, on the built-in tiny Shakespeare (1.1 MB), each side doing all its own work (pre-tokenizing
the text, counting words, learning merges), nothing cached between calls:

- byte-level BPE, vocab 512 and 4,096: `ByteBPETokenizer.train([text], V)` against
  `tokenizers.ByteLevelBPETokenizer().train_from_iterator([text], V, min_frequency=1)` (minitx has no minimum);
- WordPiece, vocab 1,000 and 4,000: `WordPieceTokenizer.train(lines, V, min_frequency=2)` against
  `tokenizers.BertWordPieceTokenizer().train_from_iterator(lines, V, min_frequency=2)` (lowercase, BERT's
  normaliser), on the text's non-empty lines.

How: one process, one thread each (TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1, set before
`tokenizers` is imported, keep its work on the calling thread; each record carries process CPU time too, and
`hidden_work` says whether it ever exceeded the thread's by over 5%), thread CPU time per call, one warm-up
round, then `--rounds` rounds in which the two sides alternate who goes first. The ratio is minitx / tokenizers
within each round; the table gives its median, quartiles and range. The outputs are compared too: BPE merges
shared and tokens per character on the text; WordPiece vocabulary shared and pieces per word.
`--reference` also times the readable BPE trainer (`learn_merges_reference`, the pre-#20 algorithm) once.

Writes results/tokenizer_training.{json,md,png}. Run it under `flock /tmp/minitx-timing.lock` on a shared
machine; the JSON records the load average at the start and the end.
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import gc  # noqa: E402
import inspect  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import tokenizers  # noqa: E402

from minitx.bench.report import environment, write_json  # noqa: E402
from minitx.bench.timing import percentile  # noqa: E402
from minitx.recipes.lm.recipe import shakespeare_text  # noqa: E402
from minitx.tokenizers.bpe import ByteBPETokenizer, pre_tokenize_bytes  # noqa: E402
from minitx.tokenizers.pretokenize import pre_tokenize  # noqa: E402
from minitx.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402

try:
    from minitx.tokenizers.bpe_trainer import learn_merges_reference
except ImportError:  # a checkout from before #20 (PYTHONPATH=old-checkout): its trainers are the "before"
    learn_merges_reference = None
# progress=False where the trainers have it (since #20), so the same script also times a checkout from before
QUIET = {"progress": False} if "progress" in inspect.signature(ByteBPETokenizer.train).parameters else {}

RESULTS = Path(__file__).resolve().parent / "results"
# (kind, vocab) -> (floor, goal) of issue #20, as minitx / tokenizers time
WORKLOADS = {("bpe", 512): (None, None), ("bpe", 4096): (3.0, 1.5),
             ("wordpiece", 1000): (1.5, 1.0), ("wordpiece", 4000): (1.5, 1.0)}
# the "before" (the trainers this script replaced), measured the same way before #20
BEFORE = {("bpe", 512): 2.6, ("bpe", 4096): 52.0, ("wordpiece", 1000): 1.5, ("wordpiece", 4000): 1.7}


def _ours(kind: str, vocab: int, text: str, lines: list[str]):
    if kind == "bpe":
        return ByteBPETokenizer.train([text], vocab, **QUIET)
    return WordPieceTokenizer.train(lines, vocab, min_frequency=2, **QUIET)


def _theirs(kind: str, vocab: int, text: str, lines: list[str]):
    if kind == "bpe":
        tok = tokenizers.ByteLevelBPETokenizer()
        tok.train_from_iterator([text], vocab_size=vocab, min_frequency=1, show_progress=False, special_tokens=[])
    else:
        tok = tokenizers.BertWordPieceTokenizer()
        tok.train_from_iterator(lines, vocab_size=vocab, min_frequency=2, show_progress=False)
    return tok


def _timed(fn) -> tuple[float, float, object]:
    gc.collect()
    t, p = time.thread_time(), time.process_time()
    out = fn()
    return time.thread_time() - t, time.process_time() - p, out


def _spread(values: list[float]) -> dict:
    s = sorted(values)
    return {"median": percentile(s, 0.5), "p25": percentile(s, 0.25), "p75": percentile(s, 0.75),
            "min": s[0], "max": s[-1], "n": len(s)}


def _outputs(kind: str, ours, theirs, text: str, lines: list[str]) -> dict:
    """How alike the two results are (computed once, outside the timing)."""
    if kind == "bpe":
        learned = ours.state()["tokens"][256:]  # GPT-2's byte characters, as `tokenizers` writes them
        vocab_theirs = set(theirs.get_vocab())
        return {"shared_tokens": sum(1 for t in learned if t in vocab_theirs) / max(1, len(learned)),
                "tokens_per_char_minitx": len(ours.encode(text)) / len(text),
                "tokens_per_char_tokenizers": len(theirs.encode(text).ids) / len(text)}
    words = [w for line in lines for w in pre_tokenize(line)]
    ppw_ours = sum(len(ours.tokenize_word(w)) for w in words) / len(words)
    ppw_theirs = sum(len(e.tokens) for e in theirs.encode_batch(lines, add_special_tokens=False)) / len(words)
    vocab_theirs = set(theirs.get_vocab())
    return {"shared_tokens": sum(1 for t in ours.vocab if t in vocab_theirs) / len(ours.vocab),
            "pieces_per_word_minitx": ppw_ours, "pieces_per_word_tokenizers": ppw_theirs}


def run(rounds: int, reference: bool, progress=print) -> dict:
    text = shakespeare_text()
    lines = [line for line in text.splitlines() if line.strip()]
    env = environment("cpu")
    env.update(tokenizers=tokenizers.__version__, tokenizers_parallelism=os.environ["TOKENIZERS_PARALLELISM"],
               rayon_num_threads=os.environ["RAYON_NUM_THREADS"])
    samples = {w: {"minitx": [], "tokenizers": [], "ratio": [], "hidden": []} for w in WORKLOADS}
    outputs = {}
    for r in range(rounds + 1):  # round 0 warms up and is not recorded
        for w in WORKLOADS:
            sides = ("minitx", "tokenizers") if r % 2 == 0 else ("tokenizers", "minitx")
            got = {}
            for side in sides:
                fn = _ours if side == "minitx" else _theirs
                got[side] = _timed(lambda: fn(w[0], w[1], text, lines))
            if r == 0:
                outputs[w] = _outputs(w[0], got["minitx"][2], got["tokenizers"][2], text, lines)
                continue
            rec = samples[w]
            for side in ("minitx", "tokenizers"):
                rec[side].append(got[side][0])
                rec["hidden"].append(got[side][1] / max(got[side][0], 1e-9))
            rec["ratio"].append(got["minitx"][0] / got["tokenizers"][0])
            progress(f"round {r}/{rounds} {w[0]} {w[1]}: minitx {got['minitx'][0]:.3f} s, tokenizers "
                     f"{got['tokenizers'][0]:.3f} s, ratio {rec['ratio'][-1]:.2f}")
    records = []
    for (kind, vocab), rec in samples.items():
        floor, goal = WORKLOADS[kind, vocab]
        ratio = _spread(rec["ratio"])
        records.append({"kind": kind, "vocab_size": vocab, "minitx_s": _spread(rec["minitx"]),
                        "tokenizers_s": _spread(rec["tokenizers"]), "ratio": ratio, "floor": floor, "goal": goal,
                        "before": BEFORE[kind, vocab],
                        "meets_floor": None if floor is None else ratio["median"] <= floor,
                        "hidden_work": max(rec["hidden"]) > 1.05, **outputs[kind, vocab]})
    if reference and learn_merges_reference is not None:
        counts = collections.Counter(pre_tokenize_bytes(text))
        for rec in records:
            if rec["kind"] == "bpe":
                seconds = _timed(lambda: learn_merges_reference(counts, rec["vocab_size"] - 256))[0]
                rec["reference_trainer_s"] = seconds
                progress(f"reference BPE trainer, vocab {rec['vocab_size']}: {seconds:.2f} s (merges only)")
    env["load_average_1min_end"] = os.getloadavg()[0]
    env["minitx_trainers"] = "since #20" if QUIET else "before #20"
    return {"schema": "minitx.bench.tokenizer_training/1", "env": env, "rounds": rounds, "clock": "thread",
            "records": records}


def table(doc: dict) -> str:
    env = doc["env"]
    out = [f"Tokenizer training on tiny Shakespeare, minitx ({env.get('minitx_trainers', 'since #20')} trainers, "
           f"commit {str(env.get('git_commit'))[:7]}) against `tokenizers` {env['tokenizers']}: thread CPU "
           f"time, one thread each, {doc['rounds']} alternated rounds in one process; ratio = minitx / tokenizers "
           f"per round, median [p25, p75] (min-max). Load average {env['load_average_1min']:.1f} at the start, "
           f"{env['load_average_1min_end']:.1f} at the end ({env['cpu_count']} CPUs: a shared machine).", "",
           "| trainer | vocab | minitx (s) | tokenizers (s) | ratio | floor / goal | issue's before | output alike |",
           "|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        q = r["ratio"]
        ratio = f"**{q['median']:.2f}x** [{q['p25']:.2f}, {q['p75']:.2f}] ({q['min']:.2f}-{q['max']:.2f})"
        bound = "-" if r["floor"] is None else f"<= {r['floor']}x / {r['goal']}x"
        if r["kind"] == "bpe":
            alike = (f"{100 * r['shared_tokens']:.0f}% of learned tokens shared; tokens/char "
                     f"{r['tokens_per_char_minitx']:.3f} vs {r['tokens_per_char_tokenizers']:.3f}")
        else:
            alike = (f"{100 * r['shared_tokens']:.0f}% of vocab shared; pieces/word {r['pieces_per_word_minitx']:.3f}"
                     f" vs {r['pieces_per_word_tokenizers']:.3f}")
        out.append(f"| {r['kind']} | {r['vocab_size']:,} | {r['minitx_s']['median']:.3f} | "
                   f"{r['tokenizers_s']['median']:.3f} | {ratio} | {bound} | {r['before']}x | {alike} |")
    refs = [r for r in doc["records"] if "reference_trainer_s" in r]
    if refs:
        out += ["", "The readable BPE trainer (`learn_merges_reference`, the algorithm before #20), merges only, "
                "one run: " + ", ".join(f"vocab {r['vocab_size']:,}: {r['reference_trainer_s']:.2f} s" for r in refs) + "."]
    if any(r["hidden_work"] for r in doc["records"]):
        out += ["", "Warning: some call used more process than thread CPU time (work on other threads)."]
    return "\n".join(out) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = doc["records"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(recs))
    med = [r["ratio"]["median"] for r in recs]
    err = [[m - r["ratio"]["p25"] for m, r in zip(med, recs)], [r["ratio"]["p75"] - m for m, r in zip(med, recs)]]
    ax.bar(xs, med, yerr=err, capsize=4, color="tab:blue", label="minitx / tokenizers (median, IQR)")
    for x, r in zip(xs, recs):
        if r["floor"] is not None:
            ax.hlines(r["floor"], x - 0.4, x + 0.4, colors="tab:red", label="floor" if x == 1 else None)
            ax.hlines(r["goal"], x - 0.4, x + 0.4, colors="tab:green", linestyles="dashed",
                      label="goal" if x == 1 else None)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{r['kind']}\n{r['vocab_size']:,}" for r in recs])
    ax.set_ylabel("time ratio (lower is faster)")
    ax.set_title("Tokenizer training on tiny Shakespeare, one thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/tokenizer_training.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (after one warm-up round)")
    parser.add_argument("--reference", action="store_true", help="also time the readable BPE trainer once")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the .json, .md and .png go")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: expected at least 1, got {args.rounds}")
    doc = run(args.rounds, args.reference)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(doc, args.out_dir / "tokenizer_training.json")
    (args.out_dir / "tokenizer_training.md").write_text(table(doc))
    plot(doc, args.out_dir / "tokenizer_training.png")
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
