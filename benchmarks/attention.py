"""Attention kernel sweep: `python benchmarks/attention.py [flags]` (same flags as `minitx bench attention`).

Without flags on a GPU it runs the FlashAttention papers' sweep (N 512..16384, D 64 and 128, causal and not,
bf16 and fp16, B*N = 16k tokens, H*D = 2048) and writes results/<device>_attention.{json,png,md} next to this
file. On a CPU it runs a small sweep in seconds. Explicit --out/--plot/--table override the defaults.
"""

import sys
from pathlib import Path

import torch

from minitx.bench import bench_main

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    device = "gpu" if torch.cuda.is_available() and "--device" not in argv else "cpu"
    if "--device" in argv:
        device = "gpu" if argv[argv.index("--device") + 1].startswith("cuda") else "cpu"
    defaults = []
    for flag, suffix in (("--out", "json"), ("--plot", "png"), ("--table", "md")):
        if flag not in argv:
            defaults += [flag, str(RESULTS / f"{device}_attention.{suffix}")]
    return bench_main(["attention", *argv, *defaults], prog="benchmarks/attention.py")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
