"""The packed variable-length sweep (`minitx bench attention --varlen`): sequences of drawn lengths, packed.

At each point (dtype, mask, D, N) the sweep draws B = tokens // N sequence lengths uniformly from 1..N (seeded)
and gives every implementation the same sequences in the layout it is built for:
- `minitx:<backend>` gets them packed without padding, q (T, H, D) and k, v (T, H_kv, D) with `cu_seqlens`
  offsets, through `minitx.attention.varlen.varlen_attention` (flash: one kernel over the packing, flash.19;
  any other backend loops over the sequences);
- `sdpa:<kernel>` gets the padded batch (B, H, N, D) with a boolean key-padding mask (True = may attend, and
  the causal band / window within each sequence): what a PyTorch user without a varlen kernel runs. Padded
  query rows are computed and thrown away, and their upstream gradient is zero;
- a `--custom` kernel is not run (it takes SDPA's signature, not packed sequences): recorded as skipped.

The gate is the dense sweep's: out, dQ, dK, dV on the real rows against a float64 reference computed sequence
by sequence from the same rounded inputs (`minitx.bench.attention.reference`); a failed implementation is never
timed. FLOPs count the attended pairs summed over the sequences (bench.8): the padded batch is charged only for
its real pairs, so its TFLOP/s are the useful work per second, comparable with the packed kernel's.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from einops import rearrange

from minitx.bench import impls as impls_mod
from minitx.bench.attention import (DTYPES, TOLERANCES, AttentionBenchConfig, _finite, _takes, format_record,
                                    is_unsupported, peak_memory, reference, relative_error, shape_for,
                                    time_passes, window_of)
from minitx.bench.flops import (PASSES, attended_pairs, attention_bytes, attention_flops_pairs, device_peak,
                                tflops_per_second)
from minitx.bench.timing import torch_threads


def draw_lengths(batch: int, max_len: int, seed: int) -> list[int]:
    """`batch` sequence lengths drawn uniformly from 1..max_len by a generator seeded with `seed`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(1, max_len + 1, (batch,), generator=gen).tolist()


def cu_seqlens(lengths: list[int], device) -> torch.Tensor:
    """Offsets 0 = c_0 <= c_1 <= ... <= c_B = T (int32) of sequences packed one after another (flash.19)."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def pad(packed: torch.Tensor, lengths: list[int], max_len: int) -> torch.Tensor:
    """(T, H, D) packed -> (B, H, max_len, D), zeros after each sequence's end."""
    out = packed.new_zeros(len(lengths), packed.shape[1], max_len, packed.shape[2])
    start = 0
    for b, n in enumerate(lengths):
        out[b, :, :n] = rearrange(packed[start:start + n], "t h d -> h t d")  # (n, H, D) -> (H, n, D)
        start += n
    return out


def unpad(padded: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, H, N, D) -> (T, H, D): the real rows of each sequence, packed."""
    return torch.cat([rearrange(padded[b, :, :n], "h t d -> t h d") for b, n in enumerate(lengths)])


def padding_mask(lengths: list[int], max_len: int, causal: bool, window, device) -> torch.Tensor:
    """Bool (B, 1, N, N), True = may attend: key j < n_b of the same sequence, within the causal band and
    window of (flash.10); a padded query row sees every real key (no row is empty, so no NaN)."""
    real = torch.arange(max_len, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]  # (B, N)
    allowed = real[:, None, None, :].expand(len(lengths), 1, max_len, max_len)  # (B, N) -> (B, 1, N, N)
    band = impls_mod.band_mask(max_len, max_len, causal, window, device)
    if band is None and causal:
        band = torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()
    if band is None:
        return allowed.clone()
    # a padded query row may have no real key inside its band (a window past the end): it sees every real key
    return allowed & (band | ~real[:, None, :, None])  # (N, N) | (B, 1, N, 1) -> (B, 1, N, N)


def make_packed_inputs(lengths, heads, heads_kv, head_dim, dtype, device, seed):
    """q (T, H, D), k, v (T, H_kv, D) and dO (T, H, D), from a seeded generator (not yet leaves)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = sum(lengths)
    shapes = [(total, h, head_dim) for h in (heads, heads_kv, heads_kv, heads)]
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for shape in shapes]


def packed_reference(q, k, v, dout, lengths, causal, scale, window):
    """Output and (dQ, dK, dV) in float64 on the packed rows, one sequence at a time (bench.attention.reference)."""
    outs, grads, start = [], [[], [], []], 0
    for n in lengths:
        # (n, H, D) -> (1, H, n, D): one sequence as a batch of one
        seq = [rearrange(t[start:start + n], "t h d -> 1 h t d") for t in (q, k, v, dout)]
        out, seq_grads = reference(*seq, causal, scale, window=window)
        outs.append(rearrange(out, "1 h t d -> t h d"))
        for acc, g in zip(grads, seq_grads):
            acc.append(rearrange(g, "1 h t d -> t h d"))
        start += n
    return torch.cat(outs), tuple(torch.cat(g) for g in grads)


def _packed_impl(backend: str, cu: torch.Tensor, window) -> Callable:
    """minitx's backend `backend` on the packed sequences (flash.19)."""
    from minitx.attention.varlen import varlen_attention

    def fn(q, k, v, causal, scale, dropout_p=0.0):
        return varlen_attention(q, k, v, cu, cu, backend=backend, is_causal=causal, scale=scale, window=window,
                                dropout_p=dropout_p)
    return fn


def _padded_impl(backend, mask: torch.Tensor) -> Callable:
    """SDPA pinned to `backend` on the padded batch with the bool (B, 1, N, N) `mask`."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v, causal, scale, dropout_p=0.0):
        gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p, **gqa)
    return fn


def _sdpa_backend(kernel: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, impls_mod.SDPA_KERNELS[kernel])


def _gate(fn, leaves, dout, ref, causal, scale, tol, lengths, padded: bool):
    """(status, reason, errors): one forward + backward, compared on the real rows (packed) with `ref`."""
    for t in leaves:
        t.grad = None
    try:
        out = fn(*leaves, causal, scale)
        out.backward(dout)
    except Exception as exc:  # noqa: BLE001 (recorded: skipped when the kernel says "not here", else failed)
        return ("skipped" if is_unsupported(exc) else "failed"), f"{type(exc).__name__}: {str(exc).strip()[:300]}", None
    real = (lambda t: unpad(t, lengths)) if padded else (lambda t: t)
    ref_out, ref_grads = ref
    errors = {"out": relative_error(real(out), ref_out)}
    for name, t, g in zip(("dq", "dk", "dv"), leaves, ref_grads):
        errors[name] = math.inf if t.grad is None else relative_error(real(t.grad), g)
    if not max(errors.values()) <= tol:
        bad = ", ".join(f"{k}={v:.3g}" for k, v in errors.items() if not v <= tol)
        return "failed", f"relative error above {tol:g} against the float64 reference: {bad}", _finite(errors)
    return "ok", None, errors


def varlen_point(name, fn, why_not, packed, padded, lengths, ref, *, causal, head_dim, config, dtype_name) -> dict:
    """One record of the varlen sweep (fields as `bench_point`'s, plus `varlen`, `lengths` and `real_tokens`)."""
    heads, heads_kv = packed[0][0].shape[1], packed[0][1].shape[1]
    window = window_of(config, causal)
    scale = 1.0 / math.sqrt(head_dim)
    pairs = sum(attended_pairs(n, n, causal, window) for n in lengths)  # (bench.8), sequence by sequence
    total = sum(lengths)
    element = packed[0][0].element_size()
    record = dict(impl=name, dtype=dtype_name, mask=("causal" if causal else "full")
                  + ("" if window is None else f" window {config.window}") + " varlen", causal=causal,
                  seq_len=padded[0][0].shape[2], head_dim=head_dim, batch=len(lengths),
                  heads=heads, heads_kv=heads_kv, window=window, dropout=config.dropout, varlen=True,
                  lengths=list(lengths), real_tokens=total, tolerance=TOLERANCES[dtype_name],
                  flops={p: attention_flops_pairs(1, heads, pairs, head_dim, p) for p in PASSES},
                  bytes={p: attention_bytes(1, heads, heads_kv, total, total, head_dim, element, p) for p in PASSES},
                  status="skipped", reason=why_not, errors=None, timings_ms=None, tflops=None, tb_per_s=None,
                  pct_peak=None, pct_bandwidth=None, peak_memory_bytes=None, memory_note=None)
    if fn is None:
        return record
    is_padded = name.startswith("sdpa:")
    leaves, dout = padded if is_padded else packed
    record["status"], record["reason"], record["errors"] = _gate(fn, leaves, dout, ref, causal, scale,
                                                                 TOLERANCES[dtype_name], lengths, is_padded)
    if record["status"] != "ok":
        return record
    if config.dropout:  # gated without dropout (a random mask has no reference), timed with it
        if not _takes(fn, "dropout_p"):
            record["status"], record["reason"] = "skipped", f"{name} takes no dropout_p (--dropout {config.dropout})"
            return record
        fn = functools.partial(fn, dropout_p=config.dropout)
    device = leaves[0].device
    try:
        timings = time_passes(fn, *leaves, dout, causal, scale, device, config.warmup, config.repeats,
                              config.cpu_clock)
        record["peak_memory_bytes"], record["memory_note"] = peak_memory(fn, *leaves, dout, causal, scale, device)
    except Exception as exc:  # noqa: BLE001 (out of memory: skipped; anything else: failed)
        record["status"] = "skipped" if is_unsupported(exc) else "failed"
        record["reason"] = f"error while timing: {type(exc).__name__}: {str(exc).strip()[:300]}"
        return record
    record["timings_ms"] = timings
    record["tflops"] = {p: tflops_per_second(record["flops"][p], timings[p]["median_ms"]) for p in PASSES}
    record["tb_per_s"] = {p: record["bytes"][p] / (timings[p]["median_ms"] * 1e-3) / 1e12 for p in PASSES}
    peak = device_peak(torch.cuda.get_device_name(device) if device.type == "cuda" else None, dtype_name)
    if peak is not None:
        record["pct_peak"] = {p: 100.0 * record["tflops"][p] / peak[0] for p in PASSES}
        record["pct_bandwidth"] = {p: 100.0 * record["tb_per_s"][p] / peak[1] for p in PASSES}
    return record


def run_varlen_sweep(config: AttentionBenchConfig, extra_impls: dict[str, Callable] | None = None,
                     progress: Callable[[str], object] | None = print,
                     on_record: Callable[[list[dict]], object] | None = None) -> list[dict]:
    """`run_sweep` for `config.varlen`: every (dtype, mask, head dim, N) x implementation on packed sequences
    of lengths drawn from 1..N (see the module docstring); `extra_impls` are recorded as skipped."""
    config.validate()
    if not config.varlen:
        raise ValueError("varlen: expected a config with varlen=True (run_sweep runs the dense sweep)")
    for name in config.impls:
        impls_mod.check_name(name)
    with torch_threads(config.threads):
        return _varlen_sweep(config, extra_impls or {}, progress, on_record)


def _resolve(name: str, device, cu, window, mask):
    """(fn, None) or (None, reason) for `name` in the varlen sweep."""
    if name == "flex":
        return None, "flex: not in the varlen sweep (FlexAttention takes a block mask, not cu_seqlens)"
    fn, why_not = impls_mod.resolve(name, device)
    if fn is None:
        return None, why_not
    family, _, which = name.partition(":")
    if family == "sdpa":
        return _padded_impl(_sdpa_backend(which), mask), None
    return _packed_impl(which, cu, window), None


def _varlen_sweep(config, extra_impls, progress, on_record) -> list[dict]:
    device = torch.device(config.device)
    names = list(config.impls) + list(extra_impls)
    points = [(dt, m, d, n) for dt in config.dtypes for m in config.masks for d in config.head_dims
              for n in config.seq_lens]
    records, total = [], len(points) * len(names)
    for i, (dtype_name, mask_kind, d, n) in enumerate(points):
        b, h = shape_for(config, n, d)
        causal = mask_kind == "causal"
        window = window_of(config, causal)
        lengths = draw_lengths(b, n, config.seed + i)
        q, k, v, dout = make_packed_inputs(lengths, h, h // config.gqa, d, DTYPES[dtype_name], device,
                                           config.seed + i)
        ref = packed_reference(q, k, v, dout, lengths, causal, 1.0 / math.sqrt(d), window)
        packed = ([t.clone().requires_grad_() for t in (q, k, v)], dout)
        padded = ([pad(t, lengths, n).requires_grad_() for t in (q, k, v)], pad(dout, lengths, n))
        cu = cu_seqlens(lengths, device)
        mask = padding_mask(lengths, n, causal, window, device)
        for name in names:
            if name in extra_impls:
                fn, why_not = None, f"{name}: a --custom kernel takes SDPA's signature, not packed sequences"
            else:
                fn, why_not = _resolve(name, device, cu, window, mask)
            record = varlen_point(name, fn, why_not, packed, padded, lengths, ref, causal=causal, head_dim=d,
                                  config=config, dtype_name=dtype_name)
            records.append(record)
            if progress is not None:
                progress(f"[{len(records):>3}/{total}] {format_record(record)}")
            if on_record is not None:
                on_record(records)
    return records
