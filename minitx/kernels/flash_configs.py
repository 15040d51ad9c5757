"""Tile configurations for the flash kernels: the candidates, the ones the compile report accepts per GPU
architecture, and the autotuner's pruning that never times a rejected one.

The compile report (`minitx bench compile`, benchmarks/results/compile_report.json) compiles every candidate
for sm_80, sm_90 and sm_100 and rejects a config that spills registers to local memory (a non-zero stack
frame) or needs more shared memory than the architecture has. `ACCEPTED` is that verdict, per kernel,
architecture and padded head dim BLOCK_D, written down here so the library never reads benchmark files;
tests/test_compile_report.py checks that it agrees with the committed report and recompiles one config per
kernel on sm_90 so a change that makes a default spill fails CI.
"""

from __future__ import annotations

import triton

from minitx.kernels.flash_accepted import ACCEPTED

# (BLOCK_N, BLOCK_M, num_warps, num_stages): BLOCK_N tiles the queries, BLOCK_M the keys.
CANDIDATES: dict[str, list[tuple[int, int, int, int]]] = {
    "fwd": [(64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
            (128, 128, 8, 2), (64, 128, 4, 2), (32, 32, 4, 2)],
    "dkdv": [(32, 64, 4, 2), (32, 128, 8, 2), (64, 64, 4, 2), (64, 128, 8, 2), (32, 32, 4, 2),
             (16, 64, 4, 2), (32, 64, 8, 2), (16, 32, 4, 2)],
    "dq": [(64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (32, 32, 4, 2),
           (64, 16, 4, 2), (32, 64, 4, 2), (32, 16, 4, 2)],
}
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


def accepted(kernel: str, arch: int, block_d: int) -> list[tuple[int, int, int, int]]:
    """The candidate configs the report accepts for `kernel` on `arch` at head dim BLOCK_D (in candidate
    order). An architecture or head dim without a verdict of its own (sm_75, sm_120, sm_100 at D = 64)
    takes sm_80's."""
    chosen = _verdict(kernel, arch, block_d)
    return [tuple(c[:4]) for c in chosen]


def _verdict(kernel: str, arch: int, block_d: int):
    """The report's accepted list for (kernel, arch, head dim); sm_80's where that arch lacks the head dim."""
    table = ACCEPTED.get(kernel, {})
    d = report_head_dim(block_d)
    chosen = table.get(arch, {}).get(d, table.get(80, {}).get(d))
    if chosen is None:  # a head dim the report did not compile: the smallest tile, the least likely to spill
        smallest = min(CANDIDATES[kernel], key=lambda c: (c[0] * c[1], c[2]))
        chosen = [smallest + (0,)]
    return chosen


def report_head_dim(block_d: int) -> int:
    """The report compiles D = 64, 128, 256; a smaller padded head dim takes the D = 64 verdict (its tiles
    hold fewer values, so they fit where D = 64's do)."""
    return max(64, block_d)


def _shared_bytes(kernel: str, arch: int, block_d: int) -> dict[tuple[int, int, int, int], int]:
    return {tuple(c[:4]): c[4] for c in _verdict(kernel, arch, block_d) or []}


def _device_limits() -> tuple[int, int]:
    import torch  # a GPU is there whenever the autotuner runs

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    limit = getattr(props, "shared_memory_per_block_optin", None) or SHARED_LIMIT[arch_of((props.major, 0))]
    return arch_of((props.major, props.minor)), int(limit)


def make_pruner(kernel: str):
    """`early_config_prune` for `kernel`: keep the configs the report accepts for this GPU's architecture and
    head dim, and drop any whose shared memory exceeds this very device's limit (an sm_86 has less than an
    sm_80). It never returns an empty list: the smallest accepted config is kept as a last resort."""

    def prune(configs, named_args, **kwargs):
        arch, limit = _device_limits()
        block_d = kwargs["BLOCK_D"]
        if str(named_args["Q"].dtype) == "torch.float32":
            return [c for c in configs if _key(c) == FP32_CONFIG]
        keep = set(accepted(kernel, arch, block_d))
        shared = _shared_bytes(kernel, arch, block_d)
        fits = [c for c in configs if _key(c) in keep and shared.get(_key(c), 0) <= limit]
        return fits or [min((c for c in configs if _key(c) in keep), key=lambda c: shared.get(_key(c), 0))]
    return prune


def _key(config: triton.Config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_M"], config.num_warps, config.num_stages)


def autotuned(kernel_fn, kernel: str):
    """`kernel_fn` under triton.autotune over every candidate, pruned per launch by `make_pruner(kernel)`.

    Key: the lengths, the head dim and the mask structure, so a causal or windowed call never reuses a
    timing taken without them (the dtypes of the tensor arguments are added by Triton)."""
    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s)
               for bn, bm, w, s in dict.fromkeys(CANDIDATES[kernel] + [FP32_CONFIG])]
    key = ["N", "M", "HEAD_DIM", "HAS_MASK", "HAS_LEFT", "HAS_RIGHT", "HAS_ALIBI", "VARLEN"]
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": make_pruner(kernel)})(kernel_fn)
