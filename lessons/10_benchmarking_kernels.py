# %% [markdown]
# # Lesson 10: benchmarking kernels honestly
#
# A benchmark number is a claim, and a kernel engineer acts on it. This lesson builds the four habits that
# make the claim trustworthy -- **check, warm up, synchronise, summarise** -- then counts FLOPs the way the
# FlashAttention papers do and asks the roofline where attention's speed can come from. Everything runs on a
# CPU at tiny sizes; on a GPU the same harness (`minitx bench attention`) times with CUDA events.
# The equations (bench.N) are derived in `docs/benchmarking.md`.

# %%
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from minitx.bench import (AttentionBenchConfig, arithmetic_intensity, attention_flops, plot_tflops,
                          results_document, results_table, roofline, run_sweep, summarize, time_host)
from minitx.bench.report import plot_roofline
from minitx.plots import output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
OUT = output_dir()
torch.manual_seed(0)

# %% [markdown]
# ## 1. Summarise with the median and the IQR
#
# Timings are skewed to the right: a context switch or an interrupt makes one repeat slow, never fast. The mean
# is dragged by such outliers; the median is not. The spread is the interquartile range
# $\mathrm{IQR} = p_{75} - p_{25}$. We time a small matmul, inject one fake "stall", and compare.

# %%
a = torch.randn(128, 128)
samples = time_host(lambda: a @ a, warmup=3, repeats=21)
stalled = samples + [1000 * max(samples)]  # one repeat hit by, say, a page fault
stats = summarize(stalled)
# the harness's quartiles are numpy's (linear interpolation), computed here independently
assert math.isclose(stats.median_ms, float(np.median(stalled)))
assert math.isclose(stats.iqr_ms, float(np.percentile(stalled, 75) - np.percentile(stalled, 25)))
print(f"median {stats.median_ms:.4f} ms, IQR {stats.iqr_ms:.4f} ms, mean {np.mean(stalled):.4f} ms")
assert np.mean(stalled) > 10 * stats.median_ms  # one stall ruins the mean ...
assert stats.median_ms <= sorted(samples)[len(samples) // 2 + 1]  # ... and barely moves the median

# %% [markdown]
# ## 2. Warm up and synchronise
#
# The first calls pay one-off costs (a CUDA context, Triton's JIT compile and autotune, the allocator growing
# its pool), so `warmup` calls run untimed. On a GPU, `kernel(...)` returns as soon as the launch is queued:
#
# ```python
# start = time.perf_counter(); out = attn(q, k, v); t = time.perf_counter() - start   # times the *launch*
# ```
#
# The harness instead records two CUDA events on the stream around each call and reads
# `start.elapsed_time(end)` after one `torch.cuda.synchronize()` (`minitx.bench.timing.time_cuda`), and zeroes a
# 256 MiB buffer before each repeat so the L2 cache holds nothing from the last one. On a CPU PyTorch's ops are
# synchronous and a host clock is right.

# %% [markdown]
# ## 3. Count FLOPs by convention
#
# Per batch and head the forward is two matmuls, $S = QK^\top$ and $O = PV$, each $N^2 D$ multiply-adds:
# $$\mathrm{FLOPs}_\mathrm{fwd} = 4BHN^2D \;(\text{halved when causal}) \quad (\text{bench.1})$$
# The backward's four matmuls ($dV = P^\top dO$, $dP = dO\,V^\top$, $dQ = dS\,K$, $dK = dS^\top Q$) plus
# FlashAttention's recomputation of $S$ make five: $2.5\times$ (bench.2), and $3.5\times$ for both (bench.3).
# We count each matmul by hand ($m \times k$ times $k \times n$ is $2mkn$ FLOPs) and check minitx agrees.

# %%
def matmul_flops(m, k, n):
    return 2 * m * k * n


B, H, N, D = 2, 4, 256, 64
forward = B * H * (matmul_flops(N, D, N) + matmul_flops(N, N, D))
backward = B * H * (matmul_flops(N, D, N)                              # recompute S = Q K^T
                    + matmul_flops(N, N, D) + matmul_flops(N, D, N)    # dV = P^T dO, dP = dO V^T
                    + matmul_flops(N, N, D) + matmul_flops(N, N, D))   # dQ = dS K, dK = dS^T Q
assert attention_flops(B, H, N, D) == forward
assert attention_flops(B, H, N, D, pass_="bwd") == backward
assert attention_flops(B, H, N, D, causal=True, pass_="fwd_bwd") == (forward + backward) / 2
print(f"B={B} H={H} N={N} D={D}: forward {forward / 1e9:.2f} GFLOP, backward {backward / 1e9:.2f} GFLOP")

# %% [markdown]
# ## 4. Check before you time
#
# A fast wrong kernel is not a result. Before timing, the harness runs every implementation once and compares
# its output and gradients with a float64 reference; beyond the dtype's bound (1e-4 relative for fp32) it is
# recorded as *failed* and never timed. Here is a "kernel" that forgot the $1/\sqrt{D}$ scale -- it is exactly
# as fast as the right one, and wrong.

# %%
def forgot_the_scale(q, k, v, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0)


seq_lens = [32, 64] if FAST else [128, 256, 512]
config = AttentionBenchConfig(seq_lens=seq_lens, head_dims=[32 if FAST else 64], masks=["full", "causal"],
                              dtypes=["fp32"], impls=["minitx:math", "sdpa:math", "sdpa:flash", "minitx:flash"],
                              tokens=256 if FAST else 1024, model_dim=64 if FAST else 256,
                              repeats=3 if FAST else 15, warmup=1 if FAST else 3,
                              threads=1)  # on a shared CPU, idle OpenMP threads spin and stall each other
records = run_sweep(config, extra_impls={"forgot_the_scale": forgot_the_scale})

wrong = [r for r in records if r["impl"] == "forgot_the_scale"]
assert all(r["status"] == "failed" and r["timings_ms"] is None for r in wrong)
ok = [r for r in records if r["status"] == "ok"]
assert {"sdpa:math", "sdpa:flash"} <= {r["impl"] for r in ok}  # PyTorch's CPU kernels pass the gate
assert all(max(r["errors"].values()) <= r["tolerance"] for r in ok)
flash = [r for r in records if r["impl"] == "minitx:flash"]
assert all(r["status"] == "skipped" for r in flash)  # a Triton GPU kernel: not timed on a CPU, and says why
print(flash[0]["reason"])

# %% [markdown]
# The results become a JSON document (with the machine, versions, git commit and load average), and the table
# and plot are derived from it -- never typed by hand.

# %%
document = results_document(records, config.to_dict(), "cpu")
table = results_table(document)
print(table)
assert table.count("| sdpa:math |") == len(seq_lens) * 2
plot_tflops(document, OUT / "lesson10_cpu_attention_tflops.png")

# %% [markdown]
# ## 5. The roofline: where attention's speed can come from
#
# A kernel that moves one byte of memory per $I$ FLOPs can go no faster than
# $\min(P, I\cdot W)$ (bench.6) on a machine with peak $P$ and bandwidth $W$. Attention's intensity, for
# $s$-byte elements (per batch and head):
#
# * IO-aware ideal, Q, K, V read and O written once: $I = N/s$ (bench.4) -- grows with $N$.
# * standard, S and P written and read back: $I = ND/(s(N+D)) < D/s$ (bench.5) -- capped, whatever $N$.
# * tiled with $B_r$ query rows on chip, K and V streamed once per query block: $I \to 2B_r/s$ (bench.7).
#
# Machines, from the vendors' dense bf16 spec sheets (peak TFLOP/s, HBM TB/s): A100 SXM (312, 2.04),
# H100 SXM (989, 3.35), H200 (989, 4.8).

# %%
machines = {"A100": (312.0, 2.04), "H100": (989.0, 3.35), "H200": (989.0, 4.8)}
ns = [2**i for i in range(7, 15)]
for name, (peak, bw) in machines.items():
    ridge = peak / bw
    # standard attention at D = 64 in bf16 never reaches any ridge: it is memory-bound by construction
    assert all(arithmetic_intensity(n, 64, 2, materialize_scores=True) < 32 < ridge for n in ns)
    # the IO-aware ideal crosses the ridge at N = ridge * s
    crossing = min(n for n in ns if arithmetic_intensity(n, 64, 2) >= ridge)
    assert crossing / 2 >= ridge > crossing / 4
    best_std = max(roofline(arithmetic_intensity(n, 64, 2, materialize_scores=True), peak, bw) for n in ns)
    assert best_std < 0.25 * peak
    print(f"{name}: ridge {ridge:5.0f} FLOP/B; ideal kernel compute-bound from N={crossing}; "
          f"standard attention capped at {best_std:.0f} of {peak:.0f} TFLOP/s")

plot_roofline(machines, ns, head_dim=64, bytes_per_element=2, query_block=128, path=OUT / "lesson10_roofline.png")

# %% [markdown]
# Standard attention cannot use more than about a fifth of an A100's peak, or a ninth of an H100's, at any
# length, because it spends its time moving $N\times N$ matrices. That is the whole case for FlashAttention --
# and the measured TFLOP/s of
# `minitx bench attention` on a GPU (`benchmarks/README.md`) say how much of it a kernel actually collects.

# %% [markdown]
# ## 6. Bring your own kernel
#
# A kernel engineer's kernel is a function in a file. If it takes PyTorch SDPA's arguments,
# `fn(q, k, v, attn_mask=None, is_causal=False, scale=None)`, the command line benchmarks it beside minitx's and
# PyTorch's under the same rules -- gated against float64 first, then timed:
#
# ```
# minitx bench attention --custom mine=my_kernel.py:chunked_attention --impls sdpa:math
# ```
#
# Here is one written from scratch: it walks the queries in chunks, so it never holds more than a
# (chunk, M) slice of the scores -- the memory half of FlashAttention's idea, in plain PyTorch. Its twin keeps
# the causal mask one key too wide (each query also sees the next token), a bug invisible in its speed.

# %%
MY_KERNEL = '''
import math

import torch


def chunked_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, chunk=16, leak=0):
    """softmax(q k^T * scale) v over (B, H, N, D), `chunk` query rows at a time."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n, m = q.shape[-2], k.shape[-2]
    outs = []
    for start in range(0, n, chunk):
        s = q[..., start:start + chunk, :] @ k.transpose(-1, -2) * scale  # (B, H, chunk, M)
        if is_causal:
            rows = torch.arange(start, min(start + chunk, n), device=q.device)[:, None]
            s = s.masked_fill(torch.arange(m, device=q.device)[None, :] > rows + leak, float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v)
    return torch.cat(outs, dim=-2)


def leaky_causal(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return chunked_attention(q, k, v, is_causal=is_causal, scale=scale, leak=1)
'''
kernel_file = OUT / "my_kernel.py"
kernel_file.write_text(MY_KERNEL)

# %%
import json  # noqa: E402
from minitx.bench import bench_main  # noqa: E402

result_file = OUT / "lesson10_custom.json"
argv = ["attention", "--device", "cpu", "--seq-lens", "32", "64", "--head-dims", "16", "--tokens", "128",
        "--model-dim", "32", "--repeats", "3", "--warmup", "1", "--impls", "sdpa:math",
        "--custom", f"mine={kernel_file}:chunked_attention", "--custom", f"leaky={kernel_file}:leaky_causal",
        "--out", str(result_file), "--plot", str(OUT / "lesson10_custom.png"), "--quiet"]
assert bench_main(argv) == 0
custom = json.loads(result_file.read_text())
by = {(r["impl"], r["mask"], r["seq_len"]): r for r in custom["results"]}
for n in (32, 64):
    for mask in ("full", "causal"):
        assert by[("mine", mask, n)]["status"] == "ok" and by[("mine", mask, n)]["timings_ms"] is not None
    # the leak changes nothing without a mask, so there it passes; with one it is caught, and never timed
    assert by[("leaky", "full", n)]["status"] == "ok"
    assert by[("leaky", "causal", n)]["status"] == "failed" and by[("leaky", "causal", n)]["timings_ms"] is None
print(by[("leaky", "causal", 64)]["reason"])
mine, ref = by[("mine", "causal", 64)], by[("sdpa:math", "causal", 64)]
print(f"N=64 causal fwd+bwd: mine {mine['timings_ms']['fwd_bwd']['median_ms']:.3f} ms, "
      f"sdpa:math {ref['timings_ms']['fwd_bwd']['median_ms']:.3f} ms")

# %% [markdown]
# On a CPU the defaults are one thread, that thread's CPU clock (time spent descheduled on a busy machine is
# not the kernel's) and only the implementations that can run here. A name that matches nothing is an error,
# not an empty table: a typo never "benchmarks" nothing and exits 0.

# %%
assert bench_main(["attention", "--impls", "minitx:flsh", "--quiet"]) == 2

# %% [markdown]
# ## Exercises
#
# 1. Count the forward FLOPs of causal attention at $B=1, H=8, N=2048, D=64$ by hand and compare with
#    `minitx.bench.attention_flops(..., causal=True)`.
# 2. Time a $512 \times 512$ matrix product 30 times without warm-up and report the median and IQR of all
#    30, then of the last 25. Which statistic moved, and why?
#
# Solutions: `lessons/solutions/10_benchmarking_kernels.py`.
