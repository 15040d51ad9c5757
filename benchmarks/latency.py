"""Latency where people run minitx: `python benchmarks/latency.py [flags]` (same flags as `minitx bench latency`).

Without flags it runs every row of issue 20 on one thread, thread-CPU clock, minitx and Hugging Face alternated
round by round in one process after a gate (logits within 1e-4, generated ids equal), 10 rounds:

- BERT fill-mask forward, batch 1, N 32, `torch.no_grad()`, eval mode, widths 64 and 128 (2 layers, heads 2 / 4,
  d_ff 4 C, vocab 1000) against `transformers.BertForMaskedLM` (its default attention, sdpa);
- GPT cached greedy decoding (`generate(model, ids, new, temperature=0)`) against `GPT2LMHeadModel.generate(
  do_sample=False, use_cache=True)` at nanoGPT size (prompt 8 + 48 new) and GPT-2 small's shape (prompt 8 +
  16 new); uncached (`use_cache=False` on both sides) at nanoGPT size.

minitx's models are built as a user gets them (`BertConfig(...)` / `GPTConfig(...)`, default backend, recorded
per row), with op counts per call and this CPU's matmul peak. Writes results/cpu_latency.{json,md,png} unless
--out/--table/--plot say otherwise, and (without --out) regenerates the README's rows between
`<!-- cpu_latency -->` and `<!-- /cpu_latency -->`. Run it under `flock /tmp/minitx-timing.lock` on a shared machine.
"""

import sys
from pathlib import Path

from minitx.bench import bench_main
from minitx.bench.sidebyside_report import update_readme

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    defaults = []
    for flag, suffix in (("--out", "json"), ("--table", "md"), ("--plot", "png")):
        if flag not in argv:
            defaults += [flag, str(RESULTS / f"cpu_latency.{suffix}")]
    code = bench_main(["latency", *argv, *defaults], prog="benchmarks/latency.py")
    if code == 0 and "--out" not in argv and update_readme(README, "cpu_latency", RESULTS / "cpu_latency.json"):
        print(f"README: {README} (the cpu_latency rows)")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
