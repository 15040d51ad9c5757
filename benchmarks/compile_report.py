"""The flash kernels' compile report: `python benchmarks/compile_report.py [flags]` (= `minitx bench compile`).

Without flags it compiles the full grid (every kernel x candidate config x D 64/128/256 x mask variant x dtype,
for sm_80, sm_90 and sm_100) on this machine, no GPU needed, and writes results/compile_report.{json,md} and
the accepted-config table minitx/kernels/flash_accepted.py that the kernels' autotuner prunes to.
"""

import sys
from pathlib import Path

from minitx.bench import bench_main

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    defaults = []
    for flag, path in (("--out", HERE / "results" / "compile_report.json"),
                       ("--table", HERE / "results" / "compile_report.md"),
                       ("--write-accepted", HERE.parent / "minitx" / "kernels" / "flash_accepted.py")):
        if flag not in argv:
            defaults += [flag, str(path)]
    return bench_main(["compile", *argv, *defaults], prog="benchmarks/compile_report.py")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
