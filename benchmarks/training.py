"""Training throughput: `python benchmarks/training.py [flags]` (same flags as `minitx bench training`).

Without flags on a CPU it runs the two committed comparisons, one thread, thread-CPU clock, rounds alternated
in one process (so both sides share the allocator and its settings), each at widths 256 and 768 (4 layers,
batch 16 x 128, vocab 4096, d_ff = 4 C):

- like-for-like: `minitx:math:full-head` (the MLM head at every position, as transformers computes it)
  against `hf:sdpa` (transformers' default attention) -- what the hand-written kernels are worth;
- recipe: `minitx:math` (minitx's default training step: the head only at labelled positions) against the
  same `hf:sdpa` step with `labels=` -- what a user of each library gets.

Both sit in one run per width, so they are measured in the same rounds: results/cpu_training.{json,md,png}
(width 256) and results/cpu_training_d768.{json,md,png}. Run it under `flock /tmp/minitx-timing.lock` on a
shared machine. On a GPU without flags it times BERT-base (see `minitx bench training --help`) and writes
results/gpu_training.*. Explicit --out/--table/--plot override the defaults.
"""

import sys
from pathlib import Path

import torch

from minitx.bench import bench_main

RESULTS = Path(__file__).resolve().parent / "results"
CPU_RUNS = {"cpu_training": ["--d-model", "256", "--heads", "4", "--d-ff", "1024"],
            "cpu_training_d768": ["--d-model", "768", "--heads", "12", "--d-ff", "3072", "--repeats", "6"]}
CPU_COMMON = ["--layers", "4", "--seq-len", "128", "--batch-size", "16", "--vocab-size", "4096", "--threads", "1",
              "--cpu-clock", "thread", "--impls", "minitx:math", "minitx:math:full-head", "hf:sdpa"]


def _run(stem: str, argv: list[str]) -> int:
    defaults = []
    for flag, suffix in (("--out", "json"), ("--table", "md"), ("--plot", "png")):
        if flag not in argv:
            defaults += [flag, str(RESULTS / f"{stem}.{suffix}")]
    return bench_main(["training", *argv, *defaults], prog="benchmarks/training.py")


def main(argv: list[str]) -> int:
    on_gpu = torch.cuda.is_available()
    if "--device" in argv:
        on_gpu = argv[argv.index("--device") + 1].startswith("cuda")
    if on_gpu or argv:
        return _run("gpu_training" if on_gpu else "cpu_training", argv)
    return max(_run(stem, [*CPU_COMMON, *flags]) for stem, flags in CPU_RUNS.items())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
