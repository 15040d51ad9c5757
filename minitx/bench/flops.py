"""FLOP counting for attention under the FlashAttention convention, and attention's roofline.

Equations are derived in docs/benchmarking.md; labels (bench.N) refer to it.
"""

from __future__ import annotations

PASSES = ("fwd", "bwd", "fwd_bwd")

# Multipliers of the forward count, (bench.2) and (bench.3): the backward does 5 matmuls of the forward's
# size-class against the forward's 2, i.e. 2.5x; forward + backward is 3.5x.
_PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, *, causal: bool = False,
                    pass_: str = "fwd") -> float:
    """FLOPs of one attention call, counted as the FlashAttention papers do.

    (bench.1) forward = 4 * B * H * N^2 * D: two matmuls, QK^T and PV, each 2 * N^2 * D multiply-adds per
    head; softmax and scaling are not counted. Causal halves it (only the lower triangle is needed).
    (bench.2) backward = 2.5 x forward; (bench.3) forward + backward = 3.5 x forward.
    """
    _check_positive(batch=batch, heads=heads, seq_len=seq_len, head_dim=head_dim)
    if pass_ not in _PASS_FACTOR:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    forward = 4.0 * batch * heads * seq_len**2 * head_dim
    if causal:
        forward /= 2.0
    return forward * _PASS_FACTOR[pass_]


def tflops_per_second(flops: float, milliseconds: float) -> float:
    """Throughput in TFLOP/s of `flops` done in `milliseconds`."""
    if not milliseconds > 0.0:
        raise ValueError(f"milliseconds: expected a positive time, got {milliseconds!r}")
    return flops / (milliseconds * 1e-3) / 1e12


def arithmetic_intensity(seq_len: int, head_dim: int, bytes_per_element: int, *, causal: bool = False,
                         materialize_scores: bool = False, query_block: int | None = None) -> float:
    """FLOPs per byte of memory traffic of one attention forward, per (batch, head).

    (bench.4) IO-aware ideal: read Q, K, V and write O once, 4 N D elements: I = 4 N^2 D / (4 N D s) = N / s,
    growing with N.
    (bench.5) standard attention writes the N x N scores S and probabilities P and reads them back,
    4 N D + 4 N^2 elements: I = N D / (s (N + D)), which stays below D / s however long N is.
    (bench.7) a tiled kernel holding `query_block` = B_r query rows on chip streams K and V once per query
    block, 2 N D + 2 N D ceil(N / B_r) elements: I -> 2 B_r / s for long N (before any L2 cache hits).
    Causal halves the FLOPs; the tiled kernel also skips the K/V blocks above the diagonal (about half);
    the materialized path is assumed to still move the full N x N matrices.
    """
    _check_positive(seq_len=seq_len, head_dim=head_dim, bytes_per_element=bytes_per_element)
    if materialize_scores and query_block is not None:
        raise ValueError("materialize_scores, query_block: expected at most one of them, got both")
    n, d, s = float(seq_len), float(head_dim), float(bytes_per_element)
    flops = 4.0 * n * n * d / (2.0 if causal else 1.0)
    if query_block is not None:
        _check_positive(query_block=query_block)
        kv_passes = -(-seq_len // query_block) / (2.0 if causal else 1.0)
        elements = 2.0 * n * d + 2.0 * n * d * max(1.0, kv_passes)
    else:
        elements = 4.0 * n * d + (4.0 * n * n if materialize_scores else 0.0)
    return flops / (elements * s)


def roofline(intensity: float, peak_tflops: float, bandwidth_tb_s: float) -> float:
    """Attainable TFLOP/s = min(peak compute, intensity x memory bandwidth), (bench.6)."""
    if intensity <= 0 or peak_tflops <= 0 or bandwidth_tb_s <= 0:
        raise ValueError("intensity, peak_tflops, bandwidth_tb_s: expected positive numbers, got "
                         f"{intensity}, {peak_tflops}, {bandwidth_tb_s}")
    return min(peak_tflops, intensity * bandwidth_tb_s)


def attended_pairs(n: int, m: int, causal: bool = False, window: tuple[int, int] | None = None,
                   bottom_right: bool = False) -> int:
    """How many (query, key) pairs one head attends to: the FLOPs that are really done (bench.8).

    Key j is allowed for query i iff -left <= j - i - off <= right (flash.10), with off = M - N when
    bottom-right aligned, else 0; causal sets right = 0; -1 leaves a side open. Causal at N = M gives
    N (N + 1) / 2, not the papers' N^2 / 2."""
    _check_positive(n=n, m=m)
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    off = m - n if bottom_right else 0
    total = 0
    for i in range(n):  # one interval per row: O(N), exact
        lo = 0 if left < 0 else max(0, i + off - left)
        hi = m - 1 if right < 0 else min(m - 1, i + off + right)
        total += max(0, hi - lo + 1)
    return total


def attention_flops_pairs(batch: int, heads: int, pairs: int, head_dim: int, pass_: str = "fwd") -> float:
    """4 B H (attended pairs) D, times 2.5 for the backward and 3.5 for both (bench.8, bench.2, bench.3)."""
    if pass_ not in _PASS_FACTOR:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    return 4.0 * batch * heads * pairs * head_dim * _PASS_FACTOR[pass_]


def attention_bytes(batch: int, heads: int, heads_kv: int, n: int, m: int, head_dim: int, bytes_per_element: int,
                    pass_: str = "fwd") -> float:
    """The memory traffic no kernel can avoid (bench.9): forward reads Q, K, V and writes O; backward reads Q,
    K, V, O, dO and writes dQ, dK, dV (the row statistics, O(N) per head, are left out)."""
    q_side, kv_side = batch * heads * n * head_dim, batch * heads_kv * m * head_dim
    elements = {"fwd": 2 * q_side + 2 * kv_side, "bwd": 4 * q_side + 4 * kv_side}
    elements["fwd_bwd"] = elements["fwd"] + elements["bwd"]
    if pass_ not in elements:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    return float(elements[pass_] * bytes_per_element)


# Vendors' spec sheets, dense (no sparsity): (16-bit tensor-core TFLOP/s, fp32 TFLOP/s without tensor cores,
# HBM TB/s). Matched by substring of torch.cuda.get_device_name(), most specific first.
DEVICE_PEAKS = {
    "H200": (989.4, 66.9, 4.8),
    "H100 PCIe": (756.0, 51.2, 2.0),
    "H100 NVL": (835.0, 60.0, 3.9),
    "H100": (989.4, 66.9, 3.35),          # SXM ("NVIDIA H100 80GB HBM3")
    "A100-SXM4-80GB": (312.0, 19.5, 2.039),
    "A100 80GB PCIe": (312.0, 19.5, 1.935),
    "A100": (312.0, 19.5, 1.555),         # 40 GB parts
    "L40S": (362.1, 91.6, 0.864),
    "B200": (2250.0, 80.0, 8.0),
}


def device_peak(device_name: str | None, dtype: str) -> tuple[float, float] | None:
    """(peak TFLOP/s for `dtype`, HBM TB/s) of a known GPU, else None (a CPU, an unlisted GPU)."""
    for key, (half, single, bandwidth) in DEVICE_PEAKS.items():
        if device_name and key in device_name:
            return (single if dtype == "fp32" else half), bandwidth
    return None


def transformer_flops(*, n_layers: int, d_model: int, d_ff: int, vocab_size: int, batch: int, seq_len: int,
                      causal: bool, extra_matrix_params: int = 0, pass_: str = "fwd_bwd") -> float:
    """Model FLOPs of one step of a transformer on B x N tokens (bench.11), the count MFU divides by:

    P_mm = L (4 C^2 + 2 C d_ff) + V C + extra: the weights that enter a matrix multiply once per token
    (q, k, v, o; the feed-forward's two; the output projection over the vocabulary; `extra_matrix_params`
    for e.g. BERT's MLM transform C^2). Embedding lookups, biases and norms are not counted.
    forward = 2 P_mm B N + attention's 4 B N^2 C per layer (bench.1 with H D = C), halved when causal;
    backward = 2x forward; `fwd_bwd` = 3x forward: 6 P_mm B N + 12 L B N^2 C (/2 causal), PaLM's count."""
    _check_positive(n_layers=n_layers, d_model=d_model, d_ff=d_ff, vocab_size=vocab_size, batch=batch,
                    seq_len=seq_len)
    factor = {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}
    if pass_ not in factor:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    p_mm = n_layers * (4 * d_model**2 + 2 * d_model * d_ff) + vocab_size * d_model + extra_matrix_params
    attention = 4.0 * n_layers * batch * seq_len**2 * d_model / (2.0 if causal else 1.0)
    return factor[pass_] * (2.0 * p_mm * batch * seq_len + attention)


def mfu_percent(flops: float, milliseconds: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation (bench.12): achieved model FLOP/s (`flops` in `milliseconds`) as a percentage of
    the measured matmul peak `peak_gflops` (GFLOP/s)."""
    if not milliseconds > 0.0 or not peak_gflops > 0.0:
        raise ValueError(f"milliseconds, peak_gflops: expected positive numbers, got {milliseconds!r}, "
                         f"{peak_gflops!r}")
    return 100.0 * flops / (milliseconds * 1e-3) / (peak_gflops * 1e9)
