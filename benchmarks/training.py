"""Training throughput: `python benchmarks/training.py [flags]` (same flags as `minitx bench training`).

Without flags on a GPU it times a BERT-base MLM training step (d_model 768, 12 layers, 12 heads, batch 32 x 512,
bf16 autocast) of minitx (math, sdpa, flash backends) against transformers.BertForMaskedLM (eager, sdpa) and
writes results/<device>_training.{json,md,png} next to this file. On a CPU it runs the small preset.
Explicit --out/--table/--plot override the defaults.
"""

import sys
from pathlib import Path

import torch

from minitx.bench import bench_main

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    on_gpu = torch.cuda.is_available()
    if "--device" in argv:
        on_gpu = argv[argv.index("--device") + 1].startswith("cuda")
    device = "gpu" if on_gpu else "cpu"
    defaults = []
    for flag, suffix in (("--out", "json"), ("--table", "md"), ("--plot", "png")):
        if flag not in argv:
            defaults += [flag, str(RESULTS / f"{device}_training.{suffix}")]
    return bench_main(["training", *argv, *defaults], prog="benchmarks/training.py")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
