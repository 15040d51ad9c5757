"""The compile report's grid, its verdict per config (the `ACCEPTED` table the kernels' autotuner prunes to),
its markdown table, and `minitx bench compile`."""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from minitx.bench.compile_report import ARCHS, DTYPES, KERNELS, OPTIONAL_KERNELS, VARIANTS, CompileSpec, compile_all

# The committed report (sized for a shared 2-core machine: ~370 compiles): on sm_80 and sm_90 at D = 64 and
# 128 (the no-spill rule) causal and every feature at once (window, bottom-right, ALiBi, GQA) in bf16, causal
# in fp16 (identical registers and stack to bf16 in all 96), fp32 for its one config (FP32_CONFIG); D = 256
# and sm_100 (D = 128) causal bf16. Not compiled by default: "full" (the causal code without the diagonal
# mask), "padding" and "varlen" (one extra load each, on a path "features" has); `--variants` compiles them.
FULL_GRID = {80: [("causal", "bf16"), ("features", "bf16"), ("causal", "fp16"), ("causal", "fp32")],
             100: [("causal", "bf16")]}
FULL_GRID[90] = FULL_GRID[80]
LARGE_D_GRID = [("causal", "bf16")]
HEAD_DIMS = (64, 128, 256)


def specs_for(kernels, archs, head_dims, combos=None, configs="all") -> list[CompileSpec]:
    """Every kernel x config x head dim x (variant, dtype) x arch; combos default to FULL_GRID per arch."""
    from minitx.kernels.flash_configs import CANDIDATES, FP32_CONFIG, TILES_OF

    specs = []
    # most wanted first (sm_80/90 at D <= 128: the no-spill rule), so a run cut short still answers that
    order = sorted(itertools.product(archs, head_dims, kernels), key=lambda t: (t[0] == 100, t[1] > 128))
    for arch, d, kernel in order:
        if combos is None and arch == 100 and d != 128:
            continue
        for variant, dtype in combos or (FULL_GRID[arch] if d <= 128 else LARGE_D_GRID):
            tiles = CANDIDATES[TILES_OF.get(kernel, kernel)]
            chosen = tiles if configs == "all" else tiles[:1]
            if dtype == "fp32":
                chosen = [FP32_CONFIG]
            specs += [CompileSpec(kernel, arch, d, variant, dtype, *cfg) for cfg in chosen]
    return specs


def hopper_shaped(r: dict) -> bool:
    """On sm_90 a 16-bit config must run every product on warpgroup MMA: wgmma and no Ampere mma.sync (a tile
    with fewer than 64 rows per warpgroup falls back to mma.sync, a quarter of Hopper's tensor-core rate).
    The optional single-kernel backward (flash.24) is held to wgmma only: its dQ product has the small query
    tile as M, which no spill-free tile makes 64 rows at D = 128."""
    if r["arch"] != 90 or r["dtype"] == "fp32":
        return True
    if r["kernel"] in OPTIONAL_KERNELS:
        return r.get("wgmma", 0) > 0
    return r.get("wgmma", 0) > 0 and r.get("mma_sync", 1) == 0


def accepted_table(records: list[dict]) -> dict:
    """kernel -> arch -> head dim -> [(BLOCK_N, BLOCK_M, warps, stages, max shared bytes)]: the configs that
    fit (no spill, shared memory within the limit) and, on sm_90, run on wgmma alone (`hopper_shaped`), in
    every variant and 16-bit dtype compiled for that head dim; where none does, the one with the smallest
    stack frame alone (the summary says "none fits")."""
    groups: dict = {}
    for r in records:
        if r["dtype"] == "fp32":  # the fp32 path has its own single config (FP32_CONFIG), judged apart
            continue
        key = (r["kernel"], r["arch"], r["head_dim"])
        cfg = (r["block_n"], r["block_m"], r["num_warps"], r["num_stages"])
        verdict = groups.setdefault(key, {}).setdefault(cfg, [True, 0, 0])
        verdict[0] &= r["fits"] and "error" not in r and hopper_shaped(r)
        verdict[1] = max(verdict[1], r.get("shared_bytes") or 0)
        verdict[2] = max(verdict[2], r.get("stack_bytes", 1 << 30) if "error" not in r else 1 << 30)
    from minitx.kernels.flash_configs import CANDIDATES, TILES_OF

    table: dict = {}
    for (kernel, arch, d), by_cfg in sorted(groups.items()):
        order = {cfg: i for i, cfg in enumerate(CANDIDATES[TILES_OF.get(kernel, kernel)])}
        by_cfg = dict(sorted(by_cfg.items(), key=lambda item: order.get(item[0], len(order))))
        chosen = [cfg + (shared,) for cfg, (ok, shared, _) in by_cfg.items() if ok]
        if not chosen and kernel in OPTIONAL_KERNELS:  # an optional kernel that spills is not run there at all
            table.setdefault(kernel, {}).setdefault(arch, {})[d] = []
            continue
        if not chosen:  # nothing fits (only ever at D = 256): the least-spilling config, so a call still runs
            cfg, (_, shared, _) = min(by_cfg.items(), key=lambda item: item[1][2])
            chosen = [cfg + (shared,)]
        table.setdefault(kernel, {}).setdefault(arch, {})[d] = chosen
    return table


def write_accepted(table: dict, path: Path, version: str) -> Path:
    """Write (or update) `version`'s entry of ACCEPTED_BY_TRITON in `path` for the kernels in `table`, keeping
    its other kernels and the other versions'."""
    tables = {}
    if path.exists():
        namespace: dict = {}
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # our own generated file
        tables = dict(namespace.get("ACCEPTED_BY_TRITON", {}))
    tables[version] = {**tables.get(version, {}), **table}  # per kernel: a report of some kernels keeps the rest
    lines = ['"""Generated by `minitx bench compile --write-accepted` from the compile reports; do not edit.',
             "", "Triton major.minor -> kernel -> arch -> head dim (BLOCK_D) -> [(BLOCK_N, BLOCK_M, num_warps, "
             "num_stages, shared bytes)]:",
             "the configs that compiled without spills, within shared memory and (sm_90) on wgmma alone, in every",
             "variant and 16-bit dtype, under that Triton version (where none did, at D = 256 only, the",
             'least-spilling one alone)."""', "", "ACCEPTED_BY_TRITON = {"]
    for ver in sorted(tables):
        lines.append(f"    {ver!r}: {{")
        for kernel, by_arch in tables[ver].items():
            lines.append(f"        {kernel!r}: {{")
            for arch, by_d in by_arch.items():
                lines.append(f"            {arch}: {{")
                lines += [f"                {d}: {[tuple(c) for c in cfgs]!r}," for d, cfgs in by_d.items()]
                lines.append("            },")
            lines.append("        },")
        lines.append("    },")
    path.write_text("\n".join(lines + ["}", ""]), encoding="utf-8")
    return path


def markdown(document: dict) -> str:
    """One row per (kernel, arch, D, config): the worst registers / stack / shared over its variants."""
    rows: dict = {}
    for r in document["records"]:
        key = (r["kernel"], r["arch"], r["head_dim"], r["block_n"], r["block_m"], r["num_warps"], r["num_stages"],
               " (fp32)" if r["dtype"] == "fp32" else "")
        rows.setdefault(key, []).append(r)
    out = [f"Compiled on a CPU with triton {document['triton']} for {', '.join(f'sm_{a}' for a in document['archs'])}; "
           f"{len(document['records'])} compiles. Per config: the worst over its variants "
           f"({', '.join(sorted({r['variant'] + '/' + r['dtype'] for r in document['records']}))}).",
           "",
           "| kernel | arch | D | BLOCK_N x BLOCK_M, warps, stages | regs | stack B | shared KiB / limit "
           "| MMA | TMA | 16-B loads | loops | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, rs in sorted(rows.items()):
        ok = [r for r in rs if "error" not in r]
        err = next((r["error"] for r in rs if "error" in r), None)
        worst = lambda f: max((r[f] for r in ok), default=0)  # noqa: E731
        mma = "/".join(sorted({m for r in ok for m in ("mma.sync", "wgmma", "tcgen05")
                               if r[m.replace(".", "_")]})) or "-"
        verdict = ("fits" if all(r["fits"] and hopper_shaped(r) for r in rs) else
                   "error: " + err[:60] if err else "rejected" if not all(r["fits"] for r in rs) else "no wgmma")
        out.append(f"| {key[0]} | sm_{key[1]} | {key[2]} | {key[3]}x{key[4]}, {key[5]}, {key[6]}{key[7]} | {worst('registers')} "
                   f"| {worst('stack_bytes')} | {worst('shared_bytes') / 1024:.0f} / "
                   f"{rs[0]['shared_limit'] / 1024 if 'shared_limit' in rs[0] else 0:.0f} | {mma} | "
                   f"{'yes' if worst('tma') else 'no'} | {worst('vector_loads')} | {worst('loops')} | {verdict} |")
    return "\n".join(out) + "\n"


def _candidate_index(r: dict) -> int:
    from minitx.kernels.flash_configs import CANDIDATES, TILES_OF

    cfg = (r["block_n"], r["block_m"], r["num_warps"], r["num_stages"])
    tiles = CANDIDATES[TILES_OF.get(r["kernel"], r["kernel"])]
    return tiles.index(cfg) if cfg in tiles else len(tiles)


def summary_markdown(document: dict) -> str:
    """Per kernel x arch x D (16-bit dtypes): how many candidates fit, the autotuner's first pick and the
    worst rejection; then the fp32 config's verdicts."""
    groups: dict = {}
    for r in document["records"]:
        if r["dtype"] != "fp32":
            groups.setdefault((r["kernel"], r["arch"], r["head_dim"]), []).append(r)
    out = ["| kernel | arch | D | configs accepted | first accepted: tiles, warps, stages -> regs, shared KiB "
           "| MMA of the accepted | TMA | worst rejected: regs, stack B |", "|---|---|---|---|---|---|---|---|"]
    for (kernel, arch, d), rs in sorted(groups.items()):
        by_cfg: dict = {}
        for r in sorted(rs, key=lambda r: _candidate_index(r)):
            by_cfg.setdefault((r["block_n"], r["block_m"], r["num_warps"], r["num_stages"]), []).append(r)
        ok = [c for c, cr in by_cfg.items() if all(x["fits"] and "error" not in x and hopper_shaped(x) for x in cr)]
        first = ""
        if ok:
            cr = [x for x in by_cfg[ok[0]] if "error" not in x]
            first = (f"{ok[0][0]}x{ok[0][1]}, {ok[0][2]}, {ok[0][3]} -> {max(x['registers'] for x in cr)}, "
                     f"{max(x['shared_bytes'] for x in cr) / 1024:.0f}")
        bad = [x for x in rs if not x["fits"] and "error" not in x]
        worst = max(bad, key=lambda x: x["stack_bytes"], default=None)
        chosen = [x for c in ok for x in by_cfg[c]] or rs  # the MMA the autotuner's candidates actually use
        mma = "/".join(m for m in ("mma_sync", "wgmma", "tcgen05") if any(x.get(m) for x in chosen)).replace("_", ".")
        worst_text = f"{worst['registers']}, {worst['stack_bytes']}" if worst else "-"
        tma = "yes" if any(x.get("tma") for x in rs) else "no"
        out.append(f"| {kernel} | sm_{arch} | {d} | {len(ok)} / {len(by_cfg)} | {first or 'none'} | {mma} | "
                   f"{tma} | {worst_text} |")
    fp32 = [r for r in document["records"] if r["dtype"] == "fp32" and "error" not in r]
    if fp32:
        out += ["", "fp32 (IEEE dots, FMA instead of tensor cores), one config per kernel: "
                + "; ".join(f"{r['kernel']} sm_{r['arch']} D={r['head_dim']} {r['block_n']}x{r['block_m']}: "
                            f"{r['registers']} regs, stack {r['stack_bytes']} B"
                            for r in sorted(fp32, key=lambda r: (r["kernel"], r["arch"], r["head_dim"])))]
    return "\n".join(out) + "\n"


def compile_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compile", help="compile the flash kernels for sm_80/90/100 on this machine and report "
                                       "registers, spills, shared memory, MMA and TMA",
                       description="Compile every flash kernel x tile config x head dim x mask variant x dtype "
                                   "for real GPU architectures (no GPU needed) and read the cubins with "
                                   "cuobjdump. Without --variants/--dtypes: the committed report's grid.")
    p.add_argument("--kernels", nargs="+", choices=KERNELS + OPTIONAL_KERNELS, default=list(KERNELS),
                   help="kernels to compile (default: the three the autotuner tunes; 'atomic' with dkdv's tiles)")
    p.add_argument("--archs", nargs="+", type=int, choices=ARCHS, default=list(ARCHS))
    p.add_argument("--head-dims", nargs="+", type=int, default=list(HEAD_DIMS))
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="mask variants (with --dtypes)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="dtypes (with --variants)")
    p.add_argument("--configs", choices=("all", "first"), default="all", help="every candidate, or the first")
    p.add_argument("--workers", type=int, default=2, help="compile processes")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--table", type=Path, help="write the markdown table here")
    p.add_argument("--write-accepted", type=Path, help="write the ACCEPTED table (minitx/kernels/flash_accepted.py)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def compile_main(args: argparse.Namespace) -> int:
    import minitx.kernels  # noqa: F401 (without Triton: an ImportError that says what to install)
    import triton

    combos = None
    if args.variants or args.dtypes:
        combos = list(itertools.product(args.variants or ["full"], args.dtypes or ["bf16"]))
    specs = specs_for(args.kernels, args.archs, args.head_dims, combos, args.configs)
    start, done = time.perf_counter(), [0]

    partial = args.out.with_suffix(".partial.jsonl") if args.out else None
    if partial:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")

    def progress(r):
        done[0] += 1
        if partial:
            with partial.open("a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
        if not args.quiet:
            what = r.get("error") or f"regs {r['registers']} stack {r['stack_bytes']} smem {r['shared_bytes']}"
            print(f"[{done[0]}/{len(specs)}] {r['kernel']} sm_{r['arch']} D={r['head_dim']} {r['variant']} "
                  f"{r['dtype']} {r['block_n']}x{r['block_m']} w{r['num_warps']} s{r['num_stages']}: {what}"
                  f"{'' if r['fits'] else '  REJECTED'}", flush=True)
    records = compile_all(specs, workers=args.workers, progress=progress)
    from minitx.kernels.flash_configs import triton_version_key

    document = {"triton": triton.__version__, "triton_key": triton_version_key(), "archs": sorted(args.archs),
                "seconds": time.perf_counter() - start,
                "records": records, "accepted": accepted_table(records)}
    table = markdown(document)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
        partial.unlink()
        print(f"results: {args.out}")
    if args.table:
        args.table.write_text(table, encoding="utf-8")
        print(f"table: {args.table}")
    if args.write_accepted:
        print(f"accepted configs: {write_accepted(document['accepted'], args.write_accepted, document['triton_key'])}")
    return 0
