"""The optional single-kernel backward (`flash_attention(..., deterministic=False)`), FlashAttention-2's
way: one program per key tile computes dK and dV as the deterministic dK/dV kernel does, on the transposed
tiles of (flash.23), and adds its share of dQ = scale dS K (flash.16) into an fp32 buffer with atomic adds
(flash.24). P and dS are computed once instead of twice (5 tile products per step instead of the two
kernels' 7), at the price of determinism: the order of the atomic adds, hence dQ's last bits, changes from
run to run. The deterministic two-kernel backward (flash_bwd_kernels.py) stays the default.
"""

import triton
import triton.language as tl

from minitx.kernels.flash_bwd_kernels import _row_stats
from minitx.kernels.flash_kernels import LOG2E, _dropout_keep, _inner_ranges, _load_rows, _part, _scores, _sequence


@triton.jit
def _atomic_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, lo, hi, cols, n_b, m_b, off, win_left,
                  win_right, pad_row_ptr, slope, sqn, sdn, sgqn, scale, qk_scale, seed, p_drop, bhq, N, M,
                  MASKED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  HAS_ALIBI: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(flash.23) over the query tiles in [lo, hi), plus dQ[rows] += scale dS K by atomic adds (flash.24)."""
    dims = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        rows = start_n + tl.arange(0, BLOCK_N)
        q = _load_rows(q_ptr, rows, n_b, sqn, MASKED, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_ptr, rows, n_b, sdn, MASKED, HEAD_DIM, BLOCK_D)
        lse, delta = _row_stats(lse_ptr, delta_ptr, rows, n_b, MASKED)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N), raw q.k
        s_t = _scores(s_t, rows[None, :], cols[:, None], n_b, m_b, off, win_left, win_right, pad_row_ptr,
                      slope, MASKED, HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])  # (flash.13), (flash.22)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (flash.14)
        if HAS_DROPOUT:  # (flash.21)
            keep = _dropout_keep(seed, p_drop, bhq, rows[None, :], cols[:, None], N, M)
            dv += tl.dot(tl.where(keep, p_t / (1.0 - p_drop), 0.0).to(do.dtype), do,
                         input_precision=DOT_PRECISION)
            dp_t = tl.where(keep, dp_t / (1.0 - p_drop), 0.0)
        else:
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)  # (flash.15)
        dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)
        dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D): this key tile's share
        ok = (rows[:, None] < n_b) & (dims[None, :] < HEAD_DIM)
        tl.atomic_add(dq_ptr + rows[:, None] * sgqn + dims[None, :], dq * scale, mask=ok)  # (flash.24)
    return dk, dv


@triton.jit
def _bwd_atomic_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, MASK, SLOPES, CU_Q, CU_K,
                       sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                       sgb, sgh, sgm, sgqb, sgqh, sgqn, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right,
                       seed, p_drop,
                       HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                       BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                       HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK, dV for one key tile of one key/value head (as _bwd_dkdv_kernel), and dQ by atomic adds into the
    fp32 DQ_ACC (strides sgq*) for every query row the tile's keys are seen by (flash.24)."""
    b, kv_h, q0, k0, n_b, m_b = _sequence(tl.program_id(1), H_KV, N, M, CU_Q, CU_K, VARLEN)
    start_m = tl.multiple_of(tl.program_id(0) * BLOCK_M, BLOCK_M)
    if start_m >= m_b:
        return
    off = (m_b - n_b) * BOTTOM_RIGHT
    cols = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * skb + kv_h * skh + k0 * skm, cols, m_b, skm, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(V + b * svb + kv_h * svh + k0 * svm, cols, m_b, svm, True, HEAD_DIM, BLOCK_D)
    pad_row_ptr = MASK + b * M
    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, a, b_, hi = _inner_ranges(start_m, m_b, n_b, -off, win_right, win_left, BLOCK_M, BLOCK_N,
                                  HAS_RIGHT, HAS_LEFT)
    for g in range(GROUP):
        h = kv_h * GROUP + g
        slope = 0.0
        if HAS_ALIBI:  # raw-score units (flash.22)
            slope = tl.load(SLOPES + h) * LOG2E / qk_scale
        q_ptr = Q + b * sqb + h * sqh + q0 * sqn
        do_ptr = DO + b * sdb + h * sdh + q0 * sdn
        lse_ptr = LSE + b * slb + h * slh + q0
        delta_ptr = DELTA + b * slb + h * slh + q0
        dq_ptr = DQ_ACC + b * sgqb + h * sgqh + q0 * sgqn
        for part in tl.static_range(3):  # masked | interior (no mask) | masked
            start, end = _part(part, lo, a, b_, hi)
            if part != 0 or HAS_RIGHT:
                dk, dv = _atomic_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, start, end, cols,
                                       n_b, m_b, off, win_left, win_right, pad_row_ptr, slope, sqn, sdn, sgqn,
                                       scale, qk_scale, seed, p_drop, b * H_KV * GROUP + h, N, M, part != 1,
                                       HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI, HAS_DROPOUT, DOT_PRECISION,
                                       HEAD_DIM, BLOCK_N, BLOCK_D)
    ok = (cols[:, None] < m_b) & (dims[None, :] < HEAD_DIM)
    offs = b * sgb + kv_h * sgh + (k0 + cols[:, None]) * sgm + dims[None, :]
    tl.store(DK + offs, (dk * scale).to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=ok)
