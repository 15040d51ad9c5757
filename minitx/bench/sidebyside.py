"""Side by side: minitx against a reference library on one workload, gated, alternated, with the spread.

The rules every comparison here follows (issue 20, docs/benchmarking.md section 7):

1. **Gate first.** A workload's `gate()` runs both contenders on the same input and compares what they return
   (logits within a tolerance, generated ids equal, loss and gradients); a workload that fails is recorded as
   "failed" and never timed: a fast call that computes something else is not a result.
2. **Alternate.** After warm-up, the contenders run in rounds, each once per round, the order reversed every
   other round (A B, B A, A B, ...), in one process; sample i of both comes from round i, so a slow spell on a
   shared machine lands on both.
3. **One thread, its CPU clock.** `time.thread_time()` (`CPU_CLOCKS["thread"]`) leaves out the time the thread
   sat descheduled; it is only sound with `torch.set_num_threads(1)`.
4. **Median and spread.** Per contender the median and IQR of the per-call times; the ratio minitx / reference
   as the ratio of medians and as the median and quartiles of the per-round ratios (paired: drift shared by a
   round cancels), (bench.10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from minitx.bench.flops import mfu_percent
from minitx.bench.timing import CPU_CLOCKS, check_run_options, percentile, summarize

Gate = Callable[[], tuple[bool, str | None, dict]]


@dataclass
class Workload:
    """One comparison: `contenders` maps a name to a zero-argument call (the first is minitx's, the second the
    reference's); `gate()` returns (ok, reason, measured values) and runs before anything is timed. `units`
    is how many units one call makes (tokens generated, tokens trained on) for the per-unit columns;
    `flops` the model FLOPs of one call (for MFU), if counted; `info` goes into the record unchanged."""

    name: str
    description: str
    contenders: dict[str, Callable[[], object]]
    gate: Gate
    units: int = 1
    unit: str = "call"
    flops: float | None = None
    floor: float = 1.0
    info: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # the modules behind the contenders, to inspect (not recorded)


def check_side_by_side(config, presets: dict, positive: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """The checks every side-by-side bench config shares, each error naming its field: workloads known to
    `presets`; the `positive` fields positive integers (None allowed for those also in `optional`); warmup an
    integer >= 0; the clock / thread rule every bench shares (`timing.check_run_options`)."""
    unknown = [w for w in config.workloads if w not in presets]
    if not config.workloads or unknown:
        raise ValueError(f"workloads: expected names from {sorted(presets)}, got {config.workloads!r}")
    for name in positive:
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if isinstance(config.warmup, bool) or not isinstance(config.warmup, int) or config.warmup < 0:
        raise ValueError(f"warmup: expected an integer >= 0, got {config.warmup!r}")
    check_run_options("cpu", config.cpu_clock, config.threads)


def outputs_gate(contenders: dict[str, Callable[[], object]], atol: float | None) -> Gate:
    """A gate comparing what the contenders return to the reference's (the last contender): tensors equal
    (atol None: `torch.equal`, e.g. generated ids) or within `atol` (logits)."""
    def gate() -> tuple[bool, str | None, dict]:
        *names, ref_name = list(contenders)
        reference = contenders[ref_name]()
        values, problems = {}, []
        for name in names:
            out = contenders[name]()
            if out.shape != reference.shape:
                problems.append(f"{name}: shape {tuple(out.shape)} against {ref_name}'s {tuple(reference.shape)}")
                continue
            if atol is None:
                same = torch.equal(out, reference)
                values[f"{name}_mismatches"] = int((out != reference).sum())
                if not same:
                    problems.append(f"{name}: {values[f'{name}_mismatches']} of {out.numel()} ids differ from "
                                    f"{ref_name}'s")
            else:
                diff = float((out.double() - reference.double()).abs().max())
                values[f"{name}_max_abs_diff"] = diff
                if not diff <= atol:
                    problems.append(f"{name}: max |output - {ref_name}| = {diff:.3g} > {atol:g}")
        return not problems, "; ".join(problems) or None, values
    return gate


def alternate(contenders: dict[str, Callable[[], object]], *, rounds: int, inner: int = 1, warmup: int = 1,
              clock: Callable[[], float] = CPU_CLOCKS["thread"]) -> dict[str, list[float]]:
    """Per-call times in ms: `rounds` samples per contender, each the mean of `inner` back-to-back calls, the
    contenders alternated round by round (order reversed on odd rounds) after `warmup` untimed calls each."""
    for name, value in (("rounds", rounds), ("inner", inner), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise ValueError(f"{name}: expected an integer >= {0 if name == 'warmup' else 1}, got {value!r}")
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = contenders[name]
            start = clock()
            for _ in range(inner):
                fn()
            samples[name].append((clock() - start) * 1e3 / inner)
    return samples


def time_ratio(samples: list[float], reference: list[float]) -> dict:
    """minitx / reference time (< 1: minitx is faster), (bench.10): the ratio of the medians, and the median
    and quartiles of the per-round ratios t_i / t_ref,i (sample i of both from round i)."""
    if len(samples) != len(reference) or not samples:
        raise ValueError(f"samples, reference: expected two equally long non-empty lists (one sample per round), "
                         f"got {len(samples)} and {len(reference)}")
    paired = sorted(t / r for t, r in zip(samples, reference))
    return dict(ratio=summarize(samples).median_ms / summarize(reference).median_ms,
                paired_median=percentile(paired, 0.5), paired_p25=percentile(paired, 0.25),
                paired_p75=percentile(paired, 0.75))


def count_ops(fn: Callable[[], object]) -> dict:
    """ATen ops one call of `fn` dispatches, from `torch.profiler`: `all` counts every `aten::` event (an op
    and the ops it calls inside, e.g. `linear` -> `addmm`), `top` only those with no `aten::` op above them (what
    the Python code called)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def top_level(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True
    return dict(all=len(events), top=sum(top_level(e) for e in events))


def matmul_peak(size: int = 1024, repeats: int = 5,
                clock: Callable[[], float] = CPU_CLOCKS["thread"]) -> dict:
    """This CPU's fp32 matmul throughput on the current threads, GFLOP/s: 2 size^3 FLOPs per (size x size) @
    (size x size) product, the median of `repeats` timed products after one untimed (bench.12)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive integer, got {size!r}")
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen) for _ in range(2))
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    samples = []
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b, out=out)
        samples.append((clock() - start) * 1e3)
    stats = summarize(samples)
    flops = 2.0 * size**3
    return dict(size=size, repeats=repeats, median_ms=stats.median_ms, iqr_ms=stats.iqr_ms,
                gflops=flops / (stats.median_ms * 1e-3) / 1e9, threads=torch.get_num_threads())


def run_workload(workload: Workload, *, rounds: int, inner: int = 1, warmup: int = 1,
                 clock: Callable[[], float] = CPU_CLOCKS["thread"], ops: bool = True,
                 peak_gflops: float | None = None) -> dict:
    """The record of one workload: gate, then (only if it passed) alternated timing, per-contender statistics,
    the time ratio of the first contender to the last, op counts per call and, with `flops` and the measured
    peak, each contender's achieved GFLOP/s and its share of the peak (MFU, bench.11-12)."""
    names = list(workload.contenders)
    record = dict(workload=workload.name, description=workload.description, contenders=names,
                  units_per_call=workload.units, unit=workload.unit, floor=workload.floor, status="failed",
                  reason=None, gate=None, timings_ms=None, per_unit_ms=None, units_per_s=None, ratio=None,
                  meets_floor=None, ops=None, flops_per_call=workload.flops, gflops=None, mfu_percent=None,
                  **workload.info)
    ok, record["reason"], record["gate"] = workload.gate()
    if not ok:
        record["reason"] = "gate (outputs compared before timing): " + (record["reason"] or "failed")
        return record
    record["status"] = "ok"
    samples = alternate(workload.contenders, rounds=rounds, inner=inner, warmup=warmup, clock=clock)
    record["samples_ms"] = samples
    record["timings_ms"] = {n: summarize(s).to_dict() for n, s in samples.items()}
    record["per_unit_ms"] = {n: t["median_ms"] / workload.units for n, t in record["timings_ms"].items()}
    record["units_per_s"] = {n: 1e3 / ms for n, ms in record["per_unit_ms"].items()}
    record["ratio"] = time_ratio(samples[names[0]], samples[names[-1]])
    record["meets_floor"] = record["ratio"]["ratio"] <= workload.floor
    if ops:
        record["ops"] = {n: count_ops(workload.contenders[n]) for n in names}
    if workload.flops is not None:
        record["gflops"] = {n: workload.flops / (t["median_ms"] * 1e-3) / 1e9 for n, t in record["timings_ms"].items()}
        if peak_gflops:
            record["mfu_percent"] = {n: mfu_percent(workload.flops, t["median_ms"], peak_gflops)
                                     for n, t in record["timings_ms"].items()}
    return record

