"""The attention benchmark: a sweep over sequence length, head dim, mask and dtype, for each implementation.

For every configuration and implementation, in this order:
1. run forward + backward once; an exception means "skipped" (the kernel does not support this case here);
2. compare output and gradients with a float64 reference; beyond the dtype's bound means "failed", and a
   failed implementation is never timed -- a fast wrong kernel is not a result;
3. time forward, backward and forward + backward (median and IQR after warm-up), convert to TFLOP/s with the
   FlashAttention convention, and on CUDA measure the peak memory of forward + backward.

Shapes follow the FlashAttention papers: B * N = `tokens` and H * D = `model_dim` are held fixed, so every
point does the same work per token and only N changes the shape of the problem.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from einops import rearrange

from minitx.bench import impls as impls_mod
from minitx.bench.flops import (PASSES, attended_pairs, attention_bytes, attention_flops_pairs, device_peak,
                                tflops_per_second)
from minitx.bench.timing import check_run_options, cuda_peak_memory, time_fn, torch_threads

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Relative error bound ||out - ref|| / ||ref|| (Frobenius), for the output and each of dQ, dK, dV: from ~13
# (bf16) to ~1700 (fp32, room for TF32) times the unit roundoff, as tabled in docs/benchmarking.md. A correct
# kernel's rounding error grows slowly with N, a wrong one (bad mask, bad scale, stale tile) is off by O(1).
TOLERANCES = {"fp64": 1e-10, "fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
MASKS = ("full", "causal")


@dataclass
class AttentionBenchConfig:
    """What to sweep. Flat, so CLI flags map one to one onto fields."""

    seq_lens: list[int] = field(default_factory=lambda: [128, 256, 512])
    head_dims: list[int] = field(default_factory=lambda: [64])
    masks: list[str] = field(default_factory=lambda: list(MASKS))
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    impls: list[str] = field(default_factory=lambda: list(impls_mod.DEFAULT_IMPLS))
    tokens: int = 1024          # B * N
    model_dim: int = 256        # H * D
    repeats: int = 10
    warmup: int = 3
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None  # CPU: torch.set_num_threads for the sweep (None keeps PyTorch's choice)
    cpu_clock: str = "wall"     # CPU: "wall" (perf_counter) or "thread" (this thread's CPU time; needs threads=1)
    gqa: int = 1                # query heads per key/value head (grouped-query attention, flash.18)
    window: int | None = None   # sliding window: keys within `window` of the query (left only when causal)
    dropout: float = 0.0        # attention dropout p of the *timed* calls (the gate runs without it)
    varlen: bool = False        # packed sequences of lengths drawn from 1..N (`minitx.bench.varlen`)

    def validate(self) -> None:
        for name in ("seq_lens", "head_dims"):
            values = getattr(self, name)
            if not values or any(not isinstance(x, int) or x < 1 for x in values):
                raise ValueError(f"{name}: expected a non-empty list of positive integers, got {values!r}")
        for name, allowed in (("masks", MASKS), ("dtypes", tuple(DTYPES))):
            bad = [x for x in getattr(self, name) if x not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name}: expected values from {allowed}, got {getattr(self, name)!r}")
        for d in self.head_dims:
            if self.model_dim % d:
                raise ValueError(f"model_dim: expected a multiple of every head dim, got {self.model_dim} "
                                 f"with head dim {d}")
        check_run_options(self.device, self.cpu_clock, self.threads)
        for name in ("tokens", "model_dim", "repeats", "gqa"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        for d in self.head_dims:
            if (self.model_dim // d) % self.gqa:
                raise ValueError(f"gqa: expected a divisor of the head count {self.model_dim // d} (model_dim / "
                                 f"head dim {d}), got {self.gqa}")
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.varlen, bool):
            raise ValueError(f"varlen: expected a bool, got {self.varlen!r}")
        if self.window is not None and (isinstance(self.window, bool) or self.window < 0):
            raise ValueError(f"window: expected None or an integer >= 0, got {self.window!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def shape_for(config: AttentionBenchConfig, seq_len: int, head_dim: int) -> tuple[int, int]:
    """(B, H) with B * N ~ tokens (at least one sequence) and H * D = model_dim."""
    return max(1, config.tokens // seq_len), config.model_dim // head_dim


def window_of(config: AttentionBenchConfig, causal: bool) -> tuple[int, int] | None:
    """The sweep's window as (left, right) (flash.10): (W, 0) with causal, (W, W) without; None when unset."""
    if config.window is None:
        return None
    return (config.window, 0) if causal else (config.window, config.window)


def make_inputs(batch, heads, seq_len, head_dim, dtype, device, seed, heads_kv=None):
    """q (B, H, N, D), k, v (B, H_kv, N, D) leaves that require grad, and the upstream gradient dO, from a
    seeded generator."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(batch, h, seq_len, head_dim) for h in (heads, heads_kv or heads, heads_kv or heads, heads)]
    q, k, v, dout = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for shape in shapes)
    return [t.requires_grad_() for t in (q, k, v)], dout


def reference(q, k, v, dout, causal: bool, scale: float, budget_bytes: int = 2**30, window=None):
    """Output and (dQ, dK, dV) of plain softmax(Q K^T * scale) V in float64, from the *same* rounded inputs.

    Computed over chunks of (batch, head) pairs so that a chunk's four N x N float64 matrices (S, P and their
    gradients) stay within `budget_bytes` -- at least one head per chunk -- and N = 16k fits on one GPU.
    Grouped-query k, v (fewer heads) are repeated per query head and their gradients summed back over each
    group; `window` (left, right) restricts the keys as (flash.10).
    """
    b, h, n, d = q.shape
    group = h // k.shape[1]
    k, v = (t.detach().double().repeat_interleave(group, dim=1) for t in (k, v))
    # (B, H, N, D) -> (B*H, N, D): heads are independent, so chunk over them
    flat = [rearrange(t.detach().double(), "b h n d -> (b h) n d") for t in (q, k, v, dout)]
    chunk = max(1, budget_bytes // (4 * n * n * 8))
    outs, grads = [], [[], [], []]
    # Plain torch on purpose, not minitx.functional: this reference gates minitx's own backends, so it must not
    # share their code (and with it their bugs). Causal is top-left aligned, as F.causal_mask, for N = M here.
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril() if causal else None
    if window is not None:
        rel = torch.arange(n, device=q.device)[None, :] - torch.arange(n, device=q.device)[:, None]  # j - i
        band = (rel >= -window[0]) & (rel <= window[1])
        allowed = band if allowed is None else allowed & band
    for i in range(0, b * h, chunk):
        qc, kc, vc = (t[i:i + chunk].clone().requires_grad_() for t in flat[:3])
        scores = qc @ kc.transpose(-1, -2) * scale  # (c, N, D) @ (c, D, N) -> (c, N, N), c heads in the chunk
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        out = scores.softmax(dim=-1) @ vc
        out.backward(flat[3][i:i + chunk])
        outs.append(out.detach())
        for g, t in zip(grads, (qc, kc, vc)):
            g.append(t.grad)
    def unflat(parts):  # (B*H, N, D) -> (B, H, N, D)
        return rearrange(torch.cat(parts), "(b h) n d -> b h n d", b=b, h=h)
    dq, dk, dv = (unflat(g) for g in grads)
    # (B, H, N, D) -> (B, H_kv, G, N, D), summed over the G query heads of each group
    dk, dv = (rearrange(t, "b (hk g) n d -> b hk g n d", g=group).sum(2) for t in (dk, dv))
    return unflat(outs), (dq, dk, dv)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref||_F / ||ref||_F in float64; inf when x has a non-finite entry."""
    x = x.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))


def check_correctness(fn, q, k, v, dout, ref, causal, scale) -> dict[str, float]:
    """Relative errors of out, dQ, dK, dV of one forward + backward of `fn` against `ref`."""
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v, causal, scale)
    if out.shape != q.shape:
        raise ValueError(f"output: expected shape {tuple(q.shape)}, got {tuple(out.shape)}")
    out.backward(dout)
    ref_out, ref_grads = ref
    errors = {"out": relative_error(out, ref_out)}
    for name, t, g in zip(("dq", "dk", "dv"), (q, k, v), ref_grads):
        errors[name] = math.inf if t.grad is None else relative_error(t.grad, g)
    return errors


def time_passes(fn, q, k, v, dout, causal, scale, device, warmup, repeats, cpu_clock="wall") -> dict[str, dict]:
    """Median/IQR timings of forward, backward alone (graph kept with retain_graph) and forward + backward."""
    def clear_grads():
        for t in (q, k, v):
            t.grad = None

    def fwd_bwd():
        fn(q, k, v, causal, scale).backward(dout)

    out = fn(q, k, v, causal, scale)
    timings = {
        "fwd": time_fn(lambda: fn(q, k, v, causal, scale), device=device, warmup=warmup, repeats=repeats,
                       cpu_clock=cpu_clock),
        "bwd": time_fn(lambda: out.backward(dout, retain_graph=True), device=device, warmup=warmup,
                       repeats=repeats, setup=clear_grads, cpu_clock=cpu_clock),
        "fwd_bwd": time_fn(fwd_bwd, device=device, warmup=warmup, repeats=repeats, setup=clear_grads,
                           cpu_clock=cpu_clock),
    }
    del out
    return {p: t.to_dict() for p, t in timings.items()}


def peak_memory(fn, q, k, v, dout, causal, scale, device) -> tuple[int | None, str]:
    """Peak bytes allocated during forward + backward beyond what was live before it (CUDA only)."""
    for t in (q, k, v):
        t.grad = None
    return cuda_peak_memory(lambda: fn(q, k, v, causal, scale).backward(dout), device)


def is_unsupported(exc: BaseException) -> bool:
    """Whether an exception says "this kernel does not handle this case here" rather than "this kernel is buggy"."""
    text = str(exc).lower()
    return (isinstance(exc, (NotImplementedError, torch.OutOfMemoryError))
            or "no viable backend" in text or "not supported" in text or "out of memory" in text)


def _gate(fn, inputs, dout, ref, causal, scale, tol) -> tuple[str, str | None, dict | None]:
    """(status, reason, errors) of the correctness check; status is "ok", "failed" or "skipped"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            errors = check_correctness(fn, *inputs, dout, ref, causal, scale)
        except Exception as exc:  # the kernel's own complaint is the most useful reason to record
            notes = "; ".join(dict.fromkeys(str(w.message).strip() for w in caught))
            reason = f"{type(exc).__name__}: {str(exc).strip()[:300]}" + (f" [{notes[:500]}]" if notes else "")
            return ("skipped" if is_unsupported(exc) else "failed"), reason, None
    worst = max(errors.values())
    if not worst <= tol:
        bad = ", ".join(f"{k}={v:.3g}" for k, v in errors.items() if not v <= tol)
        return "failed", f"relative error above {tol:g} against the float64 reference: {bad}", _finite(errors)
    return "ok", None, errors


def _finite(errors: dict[str, float]) -> dict[str, float | None]:
    """JSON has no inf/NaN; a non-finite error is recorded as null (the reason says why)."""
    return {k: (v if math.isfinite(v) else None) for k, v in errors.items()}


def _takes(fn, argument: str) -> bool:
    """Whether `fn` (or the function a functools.partial wraps) accepts `argument` by keyword."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return argument in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def bench_point(name, fn, inputs, dout, ref, *, causal, config, dtype_name) -> dict:
    """One record: the correctness gate, then (only if it passed) timings, TFLOP/s and peak memory."""
    q, k = inputs[0], inputs[1]
    b, h, n, d = q.shape
    h_kv = k.shape[1]
    device = q.device
    scale = 1.0 / math.sqrt(d)
    window = window_of(config, causal)
    if window is not None and fn is not None:
        fn = functools.partial(fn, window=window)
    pairs = attended_pairs(n, n, causal, window)
    record = dict(impl=name, dtype=dtype_name, mask=("causal" if causal else "full")
                  + ("" if window is None else f" window {config.window}"), causal=causal, seq_len=n,
                  head_dim=d, batch=b, heads=h, heads_kv=h_kv, window=window, dropout=config.dropout,
                  tolerance=TOLERANCES[dtype_name],
                  flops={p: attention_flops_pairs(b, h, pairs, d, p) for p in PASSES},
                  bytes={p: attention_bytes(b, h, h_kv, n, n, d, q.element_size(), p) for p in PASSES},
                  status="skipped", reason=None, errors=None, timings_ms=None, tflops=None, tb_per_s=None,
                  pct_peak=None, pct_bandwidth=None, peak_memory_bytes=None, memory_note=None)
    if fn is None:
        return record
    record["status"], record["reason"], record["errors"] = _gate(fn, inputs, dout, ref, causal, scale,
                                                                 TOLERANCES[dtype_name])
    if record["status"] != "ok":
        return record
    if config.dropout:  # gated exactly without dropout (a random mask has no reference), timed with it
        if not _takes(fn, "dropout_p"):
            record["status"], record["reason"] = "skipped", f"{name} takes no dropout_p (--dropout {config.dropout})"
            return record
        fn = functools.partial(fn, dropout_p=config.dropout)
    try:
        timings = time_passes(fn, *inputs, dout, causal, scale, device, config.warmup, config.repeats,
                              config.cpu_clock)
        record["peak_memory_bytes"], record["memory_note"] = peak_memory(fn, *inputs, dout, causal, scale, device)
    except Exception as exc:  # e.g. out of memory at a long N: skipped; anything else: failed
        record["status"] = "skipped" if is_unsupported(exc) else "failed"
        record["reason"] = f"error while timing: {type(exc).__name__}: {str(exc).strip()[:300]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return record
    record["timings_ms"] = timings
    record["tflops"] = {p: tflops_per_second(record["flops"][p], timings[p]["median_ms"]) for p in PASSES}
    record["tb_per_s"] = {p: record["bytes"][p] / (timings[p]["median_ms"] * 1e-3) / 1e12 for p in PASSES}
    peak = device_peak(torch.cuda.get_device_name(device) if device.type == "cuda" else None, dtype_name)
    if peak is not None:  # % of the spec sheet's dense peak and of its HBM bandwidth
        record["pct_peak"] = {p: 100.0 * record["tflops"][p] / peak[0] for p in PASSES}
        record["pct_bandwidth"] = {p: 100.0 * record["tb_per_s"][p] / peak[1] for p in PASSES}
    return record


def run_sweep(config: AttentionBenchConfig, extra_impls: dict[str, Callable] | None = None,
              progress: Callable[[str], object] | None = print,
              on_record: Callable[[list[dict]], object] | None = None) -> list[dict]:
    """Every (dtype, mask, head dim, N) x implementation, as a list of records (see `bench_point`).

    `extra_impls` maps a name to a callable `fn(q, k, v, causal, scale)` benchmarked alongside the named
    ones (`--custom` kernels; tests use it to prove that a wrong kernel is caught). `on_record` sees the
    records so far after each one (the CLI saves partial results with it). A name in `config.impls` that
    matches no implementation raises ValueError before anything runs.
    """
    config.validate()
    if config.varlen:
        raise ValueError("varlen: run_sweep runs the dense sweep; minitx.bench.varlen.run_varlen_sweep the packed one")
    for name in config.impls:
        impls_mod.check_name(name)
    with torch_threads(config.threads):
        return _sweep(config, extra_impls or {}, progress, on_record)


def _sweep(config, extra_impls, progress, on_record=None) -> list[dict]:
    """The loop of `run_sweep`: one set of inputs and one float64 reference per point, shared by all impls."""
    device = torch.device(config.device)
    names = list(config.impls) + list(extra_impls)
    resolved = {n: impls_mod.resolve(n, device) for n in config.impls}
    resolved.update({n: (f, None) for n, f in extra_impls.items()})
    points = [(dt, m, d, n) for dt in config.dtypes for m in config.masks for d in config.head_dims
              for n in config.seq_lens]
    records, total = [], len(points) * len(names)
    for i, (dtype_name, mask, d, n) in enumerate(points):
        b, h = shape_for(config, n, d)
        causal = mask == "causal"
        inputs, dout = make_inputs(b, h, n, d, DTYPES[dtype_name], device, config.seed + i, h // config.gqa)
        ref = reference(*inputs, dout, causal, 1.0 / math.sqrt(d), window=window_of(config, causal))
        for name in names:
            fn, why_not = resolved[name]
            record = bench_point(name, fn, inputs, dout, ref, causal=causal, config=config,
                                 dtype_name=dtype_name)
            record["reason"] = record["reason"] or why_not
            records.append(record)
            if progress is not None:
                progress(f"[{len(records):>3}/{total}] {format_record(record)}")
            if on_record is not None:
                on_record(records)
    return records


def format_record(r: dict) -> str:
    """One progress line for a finished record."""
    head = f"{r['impl']:<16} {r['dtype']} {r['mask']:<6} D={r['head_dim']:<3} N={r['seq_len']:<6}"
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {r['reason']}"
    t, f = r["timings_ms"], r["tflops"]
    return (f"{head} fwd {t['fwd']['median_ms']:.3f} ms (IQR {t['fwd']['iqr_ms']:.3f})  "
            f"fwd+bwd {t['fwd_bwd']['median_ms']:.3f} ms  TFLOP/s fwd/bwd/both "
            f"{f['fwd']:.3g}/{f['bwd']:.3g}/{f['fwd_bwd']:.3g}  max err {max(r['errors'].values()):.1e}")
