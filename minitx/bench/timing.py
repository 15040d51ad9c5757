"""Timing a callable honestly: warm up, synchronise, repeat, report the median and the spread.

Three rules make a kernel timing trustworthy:

1. **Warm up.** The first calls pay for one-off work (CUDA context, Triton JIT compilation, autotuning, the
   allocator growing its pools, CPU caches); they are run but never recorded.
2. **Synchronise.** A GPU launch returns before the kernel has finished, so a host clock read right after it
   measures the launch, not the work. On CUDA we time with events recorded on the stream (GPU-side clocks);
   on the CPU every PyTorch op is synchronous and `time.perf_counter` around the call is enough.
3. **Median and spread.** Timings are skewed to the right (interrupts, frequency changes, other processes),
   so the mean is pulled up by outliers. We report the median with the interquartile range (IQR = p75 - p25)
   so a reader can see whether two numbers really differ.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, all in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th quantile (0 <= q <= 1) with linear interpolation between order statistics.

    Position q * (n - 1) in the sorted list, as numpy's default ("linear") method.
    """
    if not sorted_values:
        raise ValueError("sorted_values: expected at least one value, got an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: expected a quantile in [0, 1], got {q}")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Median, quartiles, IQR, min and max of timings in milliseconds."""
    if len(samples_ms) == 0:
        raise ValueError("samples_ms: expected at least one timing, got none")
    s = sorted(float(x) for x in samples_ms)
    p25, p50, p75 = (percentile(s, q) for q in (0.25, 0.5, 0.75))
    return TimingStats(median_ms=p50, p25_ms=p25, p75_ms=p75, iqr_ms=p75 - p25,
                       min_ms=s[0], max_ms=s[-1], repeats=len(s))


def _check_counts(warmup: int, repeats: int) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an integer >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats!r}")


def time_host(fn: Callable[[], object], *, warmup: int, repeats: int,
              setup: Callable[[], object] | None = None,
              clock: Callable[[], float] = time.perf_counter,
              sync: Callable[[], object] = lambda: None) -> list[float]:
    """Per-call wall-clock times in ms of `fn()`, read from a host `clock` (seconds).

    `setup()` runs before every call, outside the timed region (e.g. clearing `.grad`). `sync()` runs before the
    clock is read on both sides, so queued asynchronous work is neither charged to the next call nor missed.
    The clock is injectable so tests can drive it deterministically.
    """
    _check_counts(warmup, repeats)
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        sync()
        start = clock()
        fn()
        sync()
        samples.append((clock() - start) * 1e3)
    return samples


def time_cuda(fn: Callable[[], object], *, warmup: int, repeats: int,
              setup: Callable[[], object] | None = None, flush_l2: bool = True) -> list[float]:
    """Per-call GPU times in ms of `fn()`, measured with CUDA events (untested in this repo's CI: no GPU).

    Each call is bracketed by two events recorded on the current stream, so the time is the GPU's own. Before
    every call a 256 MiB buffer is zeroed to evict the L2 cache (as `triton.testing.do_bench` does), so a
    kernel cannot look fast by re-reading inputs that the previous repeat left in cache.
    """
    _check_counts(warmup, repeats)
    cache = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        if setup is not None:
            setup()
        if cache is not None:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


# Host clocks for CPU timing. "wall" is what a user waits. "thread" is the CPU time of the calling thread only:
# on a shared, oversubscribed machine it excludes the time the thread sat descheduled, so it measures the work
# rather than the neighbours -- but it is only sound when torch computes on that one thread (threads=1).
CPU_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def time_fn(fn: Callable[[], object], *, device: torch.device | str, warmup: int, repeats: int,
            setup: Callable[[], object] | None = None, cpu_clock: str = "wall") -> TimingStats:
    """Time `fn()` on `device` with the right clock (CUDA events on a GPU, `CPU_CLOCKS[cpu_clock]` on the CPU)."""
    if torch.device(device).type == "cuda":
        return summarize(time_cuda(fn, warmup=warmup, repeats=repeats, setup=setup))
    if cpu_clock not in CPU_CLOCKS:
        raise ValueError(f"cpu_clock: expected one of {sorted(CPU_CLOCKS)}, got {cpu_clock!r}")
    return summarize(time_host(fn, warmup=warmup, repeats=repeats, setup=setup, clock=CPU_CLOCKS[cpu_clock]))


def check_run_options(device: str, cpu_clock: str, threads: int | None) -> None:
    """The device / clock / thread checks every benchmark config shares (both sweeps time with `time_fn`)."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected an available device, got {device!r} but CUDA is not available")
    if cpu_clock not in CPU_CLOCKS:
        raise ValueError(f"cpu_clock: expected one of {sorted(CPU_CLOCKS)}, got {cpu_clock!r}")
    if cpu_clock == "thread" and threads != 1:
        raise ValueError(f"threads: cpu_clock='thread' counts one thread's CPU time, so it needs threads=1, "
                         f"got {threads!r}")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(threads)` (None: leave PyTorch's choice), then restore it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cuda_peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str]:
    """Peak bytes allocated while `fn()` runs beyond what was live before it (CUDA only), and how it was measured."""
    if device.type != "cuda":
        return None, ("not measured on CPU: PyTorch keeps no peak counter for its CPU allocator and tracemalloc "
                      "does not see it")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated() - memory_allocated()"


def cpu_peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes PyTorch's CPU allocator holds while `fn()` runs beyond what was live before it: the running
    sum of the allocation (+) and free (-) records of `torch.profiler` with profile_memory, at its maximum."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak
