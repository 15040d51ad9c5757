"""The flash kernels' compile report: `python benchmarks/compile_report.py [flags]` (= `minitx bench compile`).

Without flags it compiles the full grid (every kernel x candidate config x D 64/128/256 x mask variant x dtype,
for sm_80, sm_90 and sm_100) on this machine, no GPU needed, with the Triton it runs under, and writes
results/compile_report_triton<X.Y>.{json,md} and that version's entry of the accepted-config table
minitx/kernels/flash_accepted.py that the kernels' autotuner prunes to. Run it once per Triton version the
kernels must run under (e.g. from a virtual environment with `pip install triton==3.6.0`).
"""

import sys
from pathlib import Path

from minitx.bench import bench_main
from minitx.kernels.flash_configs import triton_version_key

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    defaults = []
    stem = f"compile_report_triton{triton_version_key()}"
    for flag, path in (("--out", HERE / "results" / f"{stem}.json"),
                       ("--table", HERE / "results" / f"{stem}.md"),
                       ("--write-accepted", HERE.parent / "minitx" / "kernels" / "flash_accepted.py")):
        if flag not in argv:
            defaults += [flag, str(path)]
    return bench_main(["compile", *argv, *defaults], prog="benchmarks/compile_report.py")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
