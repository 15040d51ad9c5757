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
