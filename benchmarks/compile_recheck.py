"""Recompile records of the committed compile reports with the working tree's kernels and list every record
whose registers, spills, shared memory or instruction counts changed: the check for a refactor that must not
change the compiled code (e.g. the shared dK/dV body of the two backward kernels).

    python benchmarks/compile_recheck.py --kernels dkdv atomic --archs 80 90 --head-dims 64 128 --per-group 1
    /path/to/venv-triton36/bin/python benchmarks/compile_recheck.py ...   # against the Triton 3.6 reports

Reads results/compile_report_triton<X.Y>.json and results/compile_report_atomic_triton<X.Y>.json of the Triton
it runs under. --per-group N keeps the first N configs (candidate order) of each kernel x arch x D x variant x
dtype, so a check fits in minutes on a small machine; exit status 1 when a record differs.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from minitx.bench.compile_report import CompileSpec, compile_all
from minitx.kernels.flash_configs import triton_version_key

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("registers", "stack_bytes", "local_bytes", "shared_bytes", "mma_sync", "wgmma", "tma", "vector_loads",
          "loops", "fits")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/compile_recheck.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", default=["dkdv", "atomic"])
    p.add_argument("--archs", nargs="+", type=int, default=[80, 90])
    p.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    p.add_argument("--variants", nargs="+", default=["causal", "features"])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"])
    p.add_argument("--per-group", type=int, default=0, help="first N configs of each group (0: all)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    version = triton_version_key()
    records = []
    for name in (f"compile_report_triton{version}.json", f"compile_report_atomic_triton{version}.json"):
        if (RESULTS / name).exists():
            records += json.loads((RESULTS / name).read_text())["records"]
    chosen, seen = [], {}
    for r in records:
        group = (r["kernel"], r["arch"], r["head_dim"], r["variant"], r["dtype"])
        if (r["kernel"] in args.kernels and r["arch"] in args.archs and r["head_dim"] in args.head_dims
                and r["variant"] in args.variants and r["dtype"] in args.dtypes):
            seen[group] = seen.get(group, 0) + 1
            if not args.per_group or seen[group] <= args.per_group:
                chosen.append(r)
    specs = [CompileSpec(**{k: r[k] for k in CompileSpec.__dataclass_fields__}) for r in chosen]
    start = time.time()
    differ = 0
    for old, new in zip(chosen, compile_all(specs, workers=args.workers)):
        changed = {f: (old.get(f), new.get(f)) for f in FIELDS if old.get(f) != new.get(f)}
        if changed:
            differ += 1
            print("differs:", {k: old[k] for k in CompileSpec.__dataclass_fields__}, "(committed, now):", changed)
    print(f"Triton {version}: {len(specs)} recompiled, {differ} differ from the committed reports, "
          f"{time.time() - start:.0f} s")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
