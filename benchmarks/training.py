"""Training throughput: `python benchmarks/training.py [flags]` (same flags as `minitx bench training`).

Without flags on a CPU it runs every committed comparison, one thread, thread-CPU clock, rounds alternated
in one process (so both sides share the allocator and its settings):

- BERT MLM at widths 256 and 768 (4 layers, batch 16 x 128, vocab 4096, d_ff = 4 C), each at dropout 0.1
  (`cpu_training`, `cpu_training_d768`, as before) and dropout 0 (`..._dropout0`): like-for-like
  `minitx:sdpa:full-head` (the default backend, the MLM head at every position, as transformers computes it),
  the same on the readable `minitx:math:full-head`, and the recipe `minitx:sdpa` (minitx's default step: the
  head only at labelled positions), all against `hf:sdpa` (transformers' default attention);
- BERT MLM at the small sizes the lessons and `fill-mask` run at: widths 64 and 128 (2 layers, 2 / 4 heads,
  vocab 1000, d_ff 4 C), batch 16 x 64, dropout 0.1 and 0 (`cpu_training_d64*`, `cpu_training_d128*`);
- a GPT training step against `transformers.GPT2LMHeadModel` at nanoGPT's size (batch 12 x 64) and GPT-2
  small's shape (batch 1 x 64, ~1.5 s a step), dropout 0 (`cpu_training_gpt`, `minitx bench gpt-training`).

Every table carries op counts per step, MFU against the matmul peak measured in the same run, and the time
ratio to HF with its floor. `--runs NAME...` runs only the named committed runs; the GPT run regenerates the
README's rows between `<!-- cpu_training_gpt -->` and `<!-- /cpu_training_gpt -->`. Results:
results/<name>.{json,md,png}. Run it under `flock /tmp/minitx-timing.lock` on a shared machine. On a GPU without
flags it times BERT-base (see `minitx bench training --help`) and writes results/gpu_training.*. Explicit
--out/--table/--plot override the defaults.
"""

import sys
from pathlib import Path

import torch

from minitx.bench import bench_main
from minitx.bench.sidebyside_report import update_readme

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
# minitx's default backend (sdpa, what BertConfig() gives) for the recipe and like-for-like rows, and the readable
# math backend like-for-like, what its hand-written backward costs
BERT_COMMON = ["--threads", "1", "--cpu-clock", "thread", "--impls", "minitx:sdpa", "minitx:sdpa:full-head",
               "minitx:math:full-head", "hf:sdpa"]
BIG = ["--layers", "4", "--seq-len", "128", "--batch-size", "16", "--vocab-size", "4096"]
SMALL = ["--layers", "2", "--seq-len", "64", "--batch-size", "16", "--vocab-size", "1000", "--repeats", "20"]
DROPOUT_0 = ["--dropout", "0", "--attention-dropout", "0"]
DROPOUT_01 = ["--dropout", "0.1", "--attention-dropout", "0.1"]
WIDTHS = {"": [*BIG, "--d-model", "256", "--heads", "4", "--d-ff", "1024"],
          "_d768": [*BIG, "--d-model", "768", "--heads", "12", "--d-ff", "3072", "--repeats", "6"],
          "_d64": [*SMALL, "--d-model", "64", "--heads", "2", "--d-ff", "256"],
          "_d128": [*SMALL, "--d-model", "128", "--heads", "4", "--d-ff", "512"]}
CPU_RUNS = {}
for _suffix, _flags in WIDTHS.items():
    CPU_RUNS[f"cpu_training{_suffix}"] = ["training", *BERT_COMMON, *_flags, *DROPOUT_01]
    CPU_RUNS[f"cpu_training{_suffix}_dropout0"] = ["training", *BERT_COMMON, *_flags, *DROPOUT_0]
CPU_RUNS["cpu_training_gpt"] = ["gpt-training", "--dropout", "0"]


def _run(stem: str, argv: list[str]) -> int:
    defaults = []
    for flag, suffix in (("--out", "json"), ("--table", "md"), ("--plot", "png")):
        if flag not in argv:
            defaults += [flag, str(RESULTS / f"{stem}.{suffix}")]
    code = bench_main([*argv, *defaults], prog="benchmarks/training.py")
    if code == 0 and stem == "cpu_training_gpt" and "--out" not in argv and update_readme(
            README, "cpu_training_gpt", RESULTS / "cpu_training_gpt.json"):
        print(f"README: {README} (the cpu_training_gpt rows)")
    return code


def main(argv: list[str]) -> int:
    if argv[:1] == ["--runs"]:
        unknown = [name for name in argv[1:] if name not in CPU_RUNS]
        if not argv[1:] or unknown:
            print(f"benchmarks/training.py: error: --runs: expected names from {' '.join(CPU_RUNS)}, got "
                  f"{' '.join(argv[1:]) or 'none'}", file=sys.stderr)
            return 2
        return max(_run(stem, CPU_RUNS[stem]) for stem in argv[1:])
    on_gpu = torch.cuda.is_available()
    if "--device" in argv:
        on_gpu = argv[argv.index("--device") + 1].startswith("cuda")
    if on_gpu or argv:
        return _run("gpu_training" if on_gpu else "cpu_training", ["training", *argv])
    return max(_run(stem, flags) for stem, flags in CPU_RUNS.items())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
