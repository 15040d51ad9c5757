"""The flash kernels' autotuner: tune once per (kernel, head dim, mask kind, dtype, length bucket), from the
compile report's accepted configs only, and remember the choice.

Triton's own `triton.autotune` keys on argument values; keyed on N and M it re-tunes at every sequence length
(a sweep over N = 1k..16k re-compiles and re-times every config at each). Here the lengths only enter through
a coarse bucket (`length_bucket`), so a sweep tunes each (D, mask kind, dtype) once or twice. Each choice is
recorded -- config, registers and spills of the compiled code, the time of every config tried, the Triton
version and which accepted table it came from -- in `CHOICES`, and appended as one JSON line to the file named
by MINITX_FLASH_TUNE_LOG (so a GPU session writes what the autotuner picked row by row). MINITX_FLASH_TUNE_CACHE
names a JSON file of earlier choices to reuse across processes (the session's pytest and sweep steps share
it); MINITX_FLASH_MAX_CONFIGS caps how many accepted configs are timed (candidate order = preference order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import triton

from minitx.kernels.flash_configs import accepted_table, arch_of, configs_to_time, triton_version_key

# Lengths up to this are "short" (a few tiles per row: occupancy decides), longer ones "long" (the inner loop
# decides). Two buckets: a sweep over N = 1k..16k tunes each (D, mask, dtype) twice, not five times.
SHORT = 2048
CHOICES: dict[str, dict] = {}
_LOADED = {"path": None}


def length_bucket(n: int, m: int) -> str:
    return "short" if max(n, m) <= SHORT else "long"


def tune_key(kernel: str, arch: int, dtype: str, n: int, m: int, flags: dict) -> str:
    """The key a choice is cached under: the lengths only by bucket (N itself is not in it)."""
    mask = ",".join(f"{k}={int(bool(flags[k]))}" for k in ("HAS_MASK", "HAS_LEFT", "HAS_RIGHT", "HAS_ALIBI",
                                                           "VARLEN", "HAS_DROPOUT", "BOTTOM_RIGHT"))
    return (f"{kernel}|sm_{arch}|D={flags['BLOCK_D']}|{dtype}|{mask}|{length_bucket(n, m)}"
            f"|triton {triton_version_key()}")


def choose(configs: list, bench: Callable[[tuple], float]) -> tuple[tuple, dict]:
    """(fastest config, {config: ms}) over `configs`; a config whose launch raises (e.g. out of resources on
    this device) is recorded as inf and skipped; if every one raises, the last error propagates."""
    times, error = {}, None
    for config in configs:
        try:
            times[config] = float(bench(config))
        except Exception as exc:  # noqa: BLE001 (recorded, the next config is tried)
            times[config], error = float("inf"), exc
    best = min(times, key=times.get)
    if times[best] == float("inf"):
        raise error
    return best, times


def _cache() -> dict:
    path = os.environ.get("MINITX_FLASH_TUNE_CACHE")
    if path and _LOADED["path"] != path:
        _LOADED["path"] = path
        if Path(path).exists():
            CHOICES.update(json.loads(Path(path).read_text()))
    return CHOICES


def _record(key: str, row: dict) -> None:
    CHOICES[key] = row
    if os.environ.get("MINITX_FLASH_TUNE_CACHE"):
        Path(os.environ["MINITX_FLASH_TUNE_CACHE"]).write_text(json.dumps(CHOICES, indent=1))
    if os.environ.get("MINITX_FLASH_TUNE_LOG"):
        with open(os.environ["MINITX_FLASH_TUNE_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, **row}) + "\n")


def launch_tuned(kernel_fn, kernel: str, grid_for: Callable[[dict], tuple], args: tuple, kwargs: dict,
                 n: int, m: int, dtype, reset: Callable[[], object] | None = None) -> dict:
    """Launch `kernel_fn` with the cached choice for its key, tuning first if there is none; returns the row
    (config, registers, spills, ...) of the launch. `reset` restores an output the kernel accumulates into
    (the atomic dQ buffer) after the timing runs, before the launch that counts."""
    import torch

    from minitx.kernels.flash_configs import _device_limits

    arch, limit = _device_limits()
    key = tune_key(kernel, arch, str(dtype).replace("torch.", ""), n, m, kwargs)
    cache = _cache()

    def run(config):
        bn, bm, warps, stages = config
        meta = dict(BLOCK_N=bn, BLOCK_M=bm)
        return kernel_fn[grid_for(meta)](*args, **kwargs, **meta, num_warps=warps, num_stages=stages)

    if key not in cache:
        max_configs = int(os.environ.get("MINITX_FLASH_MAX_CONFIGS", "0")) or None
        configs = configs_to_time(kernel, arch, limit, kwargs["BLOCK_D"], dtype == torch.float32, max_configs)
        best, times = choose(configs, lambda c: triton.testing.do_bench(lambda: run(c), warmup=5, rep=20))
        if reset is not None:
            reset()
        compiled = run(best)
        _record(key, dict(kernel=kernel, config=list(best), registers=getattr(compiled, "n_regs", None),
                          spills=getattr(compiled, "n_spills", None),
                          tried={"x".join(map(str, c)): ms for c, ms in times.items()},
                          triton=triton.__version__, table=accepted_table()[0], arch=arch,
                          device=torch.cuda.get_device_name()))
        return cache[key]
    row = cache[key]
    compiled = run(tuple(row["config"]))
    row.setdefault("registers", getattr(compiled, "n_regs", None))
    return row
