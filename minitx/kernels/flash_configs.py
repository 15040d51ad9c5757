"""Tile configurations for the flash kernels: the candidates, the ones the compile report accepts per Triton
version and GPU architecture, and the pruning that never times a rejected one.

The compile report (`minitx bench compile`, benchmarks/results/compile_report_triton<X.Y>.json) compiles every
candidate for sm_80, sm_90 and sm_100 with one Triton version and rejects a config that spills registers to
local memory (a non-zero stack frame), needs more shared memory than the architecture has, or, on sm_90 in
bf16/fp16, does not run every product on Hopper's warpgroup MMA (`wgmma`, none of Ampere's `mma.sync`).
A verdict is only true for the Triton that compiled it (Triton 3.6 spills in three forward configs Triton 3.9
compiles cleanly), so `ACCEPTED_BY_TRITON` holds one table per version and the autotuner reads the one of the
Triton it runs under; an unknown version gets the configs every known version accepts (`accepted_table`).
tests/test_compile_report.py checks the tables against the committed reports.
"""

from __future__ import annotations

import triton

from minitx.kernels.flash_accepted import ACCEPTED_BY_TRITON

# (BLOCK_N, BLOCK_M, num_warps, num_stages): BLOCK_N tiles the queries, BLOCK_M the keys. In preference order:
# the autotuner times at most the first `max_configs` accepted ones.
CANDIDATES: dict[str, list[tuple[int, int, int, int]]] = {
    "fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2), (128, 64, 4, 3), (128, 64, 8, 4),
            (64, 64, 4, 4), (128, 128, 8, 2), (64, 128, 4, 2), (32, 32, 4, 2)],
    # dK/dV computes its tiles transposed (flash.23): BLOCK_M (keys) is every product's M, 64+ rows = wgmma
    "dkdv": [(32, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 2), (16, 128, 8, 2), (32, 128, 8, 2), (32, 128, 8, 3),
             (64, 64, 4, 2), (64, 128, 8, 2), (16, 64, 4, 3), (32, 32, 4, 2)],
    "dq": [(64, 32, 4, 2), (64, 32, 4, 3), (128, 32, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3),
           (128, 64, 8, 2), (64, 16, 4, 2), (32, 32, 4, 2)],
}
# The single-kernel backward (flash.24) tiles like dK/dV; its own verdict comes from its own compiles where the
# report has them ("atomic" in ACCEPTED_BY_TRITON), else from dK/dV's.
TILES_OF = {"atomic": "dkdv"}
# fp32 inputs (IEEE dots, no tensor cores) are a correctness path on a GPU, not a fast one: one small config,
# checked by the report for every kernel and head dim.
FP32_CONFIG = (32, 32, 4, 2)
ARCHS = (80, 90, 100)
# Shared memory per block, opt-in maximum, bytes: A100 163 KB; H100/H200 and B200 227 KB.
SHARED_LIMIT = {80: 166912, 90: 232448, 100: 232448}


def arch_of(capability: tuple[int, int]) -> int:
    """The report's architecture for a CUDA compute capability: 8.x -> 80, 9.x -> 90, 10.x and up -> 100."""
    major = capability[0]
    return 80 if major < 9 else 90 if major == 9 else 100


def triton_version_key(version: str | None = None) -> str:
    """"3.6" for Triton 3.6.0 (or 3.6.0+git...): the reports are per major.minor."""
    parts = (version or triton.__version__).split("+")[0].split(".")
    return ".".join(parts[:2])


def accepted_table(version: str | None = None) -> tuple[str, dict]:
    """(which table, kernel -> arch -> D -> [config + (shared bytes,)]) for a Triton version (default: the
    running one). A version without a report of its own gets what every reported version accepts (the
    configs known to compile cleanly under each), labelled "intersection"."""
    key = triton_version_key(version)
    if key in ACCEPTED_BY_TRITON:
        return key, ACCEPTED_BY_TRITON[key]
    tables = list(ACCEPTED_BY_TRITON.values())
    merged: dict = {}
    for kernel, by_arch in tables[0].items():
        for arch, by_d in by_arch.items():
            for d, configs in by_d.items():
                lists = [t.get(kernel, {}).get(arch, {}).get(d, []) for t in tables]
                shared = {}
                for lst in lists:
                    for c in lst:
                        shared[c[:4]] = max(shared.get(c[:4], 0), c[4])
                common = [c[:4] for c in lists[0] if all(c[:4] in {x[:4] for x in lst} for lst in lists)]
                if common:
                    merged.setdefault(kernel, {}).setdefault(arch, {})[d] = [c + (shared[c],) for c in common]
    return "intersection of " + ", ".join(sorted(ACCEPTED_BY_TRITON)), merged


def accepted(kernel: str, arch: int, block_d: int, version: str | None = None) -> list[tuple[int, int, int, int]]:
    """The candidate configs the report accepts for `kernel` on `arch` at head dim BLOCK_D under a Triton
    version (in candidate order). An architecture or head dim without a verdict of its own (sm_75, sm_120,
    sm_100 at D = 64) takes sm_80's."""
    return [tuple(c[:4]) for c in _verdict(kernel, arch, block_d, version)]


def _verdict(kernel: str, arch: int, block_d: int, version: str | None = None):
    """The report's accepted list for (kernel, arch, head dim); sm_80's where that arch lacks the head dim."""
    tables = accepted_table(version)[1]
    table = tables.get(kernel) or tables.get(TILES_OF.get(kernel, kernel), {})
    d = report_head_dim(block_d)
    chosen = table.get(arch, {}).get(d, table.get(80, {}).get(d))
    if not chosen:  # a head dim the report did not compile: the smallest tile, the least likely to spill
        smallest = min(CANDIDATES[TILES_OF.get(kernel, kernel)], key=lambda c: (c[0] * c[1], c[2]))
        chosen = [smallest + (0,)]
    return chosen


def single_kernel_ok(arch: int, block_d: int, version: str | None = None) -> bool:
    """Whether the report accepts a spill-free config of the optional single-kernel backward (flash.24) for
    this architecture (sm_80's verdict for one it did not compile) and head dim under this Triton."""
    table = accepted_table(version)[1].get("atomic", {})
    d = report_head_dim(block_d)
    return bool(table.get(arch, {}).get(d, table.get(80, {}).get(d)))


def report_head_dim(block_d: int) -> int:
    """The report compiles D = 64, 128, 256; a smaller padded head dim takes the D = 64 verdict (its tiles
    hold fewer values, so they fit where D = 64's do)."""
    return max(64, block_d)


def _shared_bytes(kernel: str, arch: int, block_d: int, version: str | None = None) -> dict:
    return {tuple(c[:4]): c[4] for c in _verdict(kernel, arch, block_d, version) or []}


_LIMITS: dict[int, tuple[int, int]] = {}


def _device_limits() -> tuple[int, int]:
    """(report architecture, opt-in shared memory per block) of the current GPU, looked up once per device
    (every launch asks: the lookup must not cost a driver call each time)."""
    import torch  # a GPU is there whenever the autotuner runs

    index = torch.cuda.current_device()
    if index not in _LIMITS:
        props = torch.cuda.get_device_properties(index)
        limit = getattr(props, "shared_memory_per_block_optin", None) or SHARED_LIMIT[arch_of((props.major, 0))]
        _LIMITS[index] = (arch_of((props.major, props.minor)), int(limit))
    return _LIMITS[index]


def configs_to_time(kernel: str, arch: int, limit: int, block_d: int, fp32: bool, max_configs: int | None = None,
                    version: str | None = None) -> list[tuple[int, int, int, int]]:
    """What the autotuner may time for `kernel` here: FP32_CONFIG alone for fp32; else the report's accepted
    configs for this Triton, architecture and head dim that fit this very device's shared memory (an sm_86
    has less than an sm_80), at most `max_configs` of them in candidate order. Never empty: the accepted
    config with the least shared memory is kept as a last resort."""
    if fp32:
        return [FP32_CONFIG]
    keep = accepted(kernel, arch, block_d, version)
    shared = _shared_bytes(kernel, arch, block_d, version)
    fits = [c for c in keep if shared.get(c, 0) <= limit]
    fits = fits or [min(keep, key=lambda c: shared.get(c, 0))]
    return fits[:max_configs] if max_configs else fits
