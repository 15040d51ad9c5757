"""The Triton backward programs behind `minitx.kernels.flash_attention` (FlashAttention-2, recomputing).

Read `docs/math/flash_attention.md` sections 8 and 10 alongside; the conventions are those of
`flash_kernels.py` (one allowed-key rule, masked | unmasked | masked loop ranges, exp2 units, GQA, packing).
Two kernels each own the rows they write, so there are no atomics and two backward passes are bit-identical:
dK/dV per key tile and key/value head (looping over the GROUP query heads that share it, flash.18), dQ per
query tile. The optional single-kernel backward (`flash_attention(..., deterministic=False)`, flash.24) runs
the same dK/dV program (`_dkdv_program`) with ATOMIC_DQ set, FlashAttention-2's way: it also adds its share of
dQ = scale dS K into an fp32 buffer with atomic adds, so P and dS are computed once instead of twice (5 tile
products per step instead of the two kernels' 7), at the price of determinism (the order of the adds, hence
dQ's last bits, varies). The two dK/dV kernels keep their own launch signatures and early exit and call
`_dkdv_program` for the rest: one kernel with a switch and extra, unread arguments changed ptxas' register
allocation of the deterministic one more (Triton 3.6: 24 instead of 32 spilled bytes in a rejected config).
"""

import triton
import triton.language as tl

from minitx.kernels.flash_kernels import (LOG2E, _dropout_keep, _inner_ranges, _load_rows, _part, _scores,
                                          _sequence)


@triton.jit
def _bwd_preprocess_kernel(O, DO, DELTA, CU_Q, sob, soh, son, sdb, sdh, sdn, slb, slh, H, N,
                           VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """Delta_i = rowsum(dO * O)_i, which equals rowsum(dP * P)_i (flash.15)."""
    b, h, q0, _, n_b, _ = _sequence(tl.program_id(1), H, N, N, CU_Q, CU_Q, VARLEN)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    o = _load_rows(O + b * sob + h * soh + q0 * son, rows, n_b, son, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DO + b * sdb + h * sdh + q0 * sdn, rows, n_b, sdn, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * slb + h * slh + q0 + rows, delta, mask=rows < n_b)


@triton.jit
def _row_stats(LSE_h, DELTA_h, rows, n_b, MASKED: tl.constexpr):
    """The saved L2 (with -inf, an empty row, read as 0: its p are 0 anyway, flash.11) and Delta of `rows`."""
    if MASKED:
        lse = tl.load(LSE_h + rows, mask=rows < n_b, other=0.0)
        delta = tl.load(DELTA_h + rows, mask=rows < n_b, other=0.0)
    else:
        lse = tl.load(LSE_h + rows)
        delta = tl.load(DELTA_h + rows)
    return tl.where(lse == float("-inf"), 0.0, lse), delta


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, lo, hi, cols, n_b, m_b, off, win_left,
                win_right, pad_row_ptr, slope, sqn, sdn, sgqn, scale, qk_scale, seed, p_drop, bhq, N, M,
                MASKED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                HAS_ALIBI: tl.constexpr, HAS_DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dV += P^T dO (flash.14), dK += dS^T Q (flash.16) over the query tiles in [lo, hi), in the transposed
    orientation (flash.23): every tile is (BLOCK_M keys, BLOCK_N queries), so all four products have this
    program's BLOCK_M key rows as their M dimension -- 64 or more rows make each one a Hopper wgmma.
    ATOMIC_DQ: also dQ[rows] += scale dS K, this key tile's share, by atomic adds (flash.24)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)  # true: lo is a multiple of BLOCK_N (_inner_ranges)
        rows = start_n + tl.arange(0, BLOCK_N)
        q = _load_rows(q_ptr, rows, n_b, sqn, MASKED, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_ptr, rows, n_b, sdn, MASKED, HEAD_DIM, BLOCK_D)
        lse, delta = _row_stats(lse_ptr, delta_ptr, rows, n_b, MASKED)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) = (Q K^T)^T, raw
        s_t = _scores(s_t, rows[None, :], cols[:, None], n_b, m_b, off, win_left, win_right, pad_row_ptr,
                      slope, MASKED, HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])  # (flash.13), one FMA per score (flash.22)
        # dP^T before the dV update: P^T's registers are then reused at once (fewer live tiles, no spill)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (flash.14) (dO V^T)^T
        if HAS_DROPOUT:  # (flash.21): the forward's mask again; dV sees the dropped weights, dP flows through them
            keep = _dropout_keep(seed, p_drop, bhq, rows[None, :], cols[:, None], N, M)
            dv += tl.dot(tl.where(keep, p_t / (1.0 - p_drop), 0.0).to(do.dtype), do,
                         input_precision=DOT_PRECISION)
            dp_t = tl.where(keep, dp_t / (1.0 - p_drop), 0.0)
        else:
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)                 # (flash.15)
        dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:  # (BLOCK_N, BLOCK_D): this key tile's share of dQ (flash.24)
            dims = tl.arange(0, BLOCK_D)
            dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION)
            ok = (rows[:, None] < n_b) & (dims[None, :] < HEAD_DIM)
            tl.atomic_add(dq_ptr + rows[:, None] * sgqn + dims[None, :], dq * scale, mask=ok)
    return dk, dv


@triton.jit
def _dkdv_program(b, kv_h, q0, k0, n_b, m_b, start_m, Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, MASK, SLOPES,
                  sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                  sgb, sgh, sgm, sgqb, sgqh, sgqn, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right,
                  seed, p_drop,
                  HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                  HAS_DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dV = P^T dO (flash.14) and dK = scale dS^T Q (flash.16) for one tile of BLOCK_M keys of one key/value
    head, summed over the GROUP query heads that read it (flash.18), written once (strides sg*). ATOMIC_DQ (the
    single-kernel backward, flash.24): also dQ, added atomically into the fp32 DQ_ACC (strides sgq*) for every
    query row the tile's keys are seen by; without it DQ_ACC and sgq* are never read. The body of both
    kernels below, for the key tile at start_m of sequence b (from `_sequence`), which has keys."""
    off = (m_b - n_b) * BOTTOM_RIGHT
    cols = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * skb + kv_h * skh + k0 * skm, cols, m_b, skm, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(V + b * svb + kv_h * svh + k0 * svm, cols, m_b, svm, True, HEAD_DIM, BLOCK_D)
    pad_row_ptr = MASK + b * M
    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # the queries that may see this key tile: q in [j - off - win_right, j - off + win_left] (flash.12, 17)
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
            if part != 0 or HAS_RIGHT:  # the lower query bound comes from the right window edge
                dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, start, end, cols,
                                  n_b, m_b, off, win_left, win_right, pad_row_ptr, slope, sqn, sdn, sgqn,
                                  scale, qk_scale, seed, p_drop, b * H_KV * GROUP + h, N, M, part != 1,
                                  HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI, HAS_DROPOUT, ATOMIC_DQ,
                                  DOT_PRECISION, HEAD_DIM, BLOCK_N, BLOCK_D)
    ok = (cols[:, None] < m_b) & (dims[None, :] < HEAD_DIM)
    offs = b * sgb + kv_h * sgh + (k0 + cols[:, None]) * sgm + dims[None, :]
    tl.store(DK + offs, (dk * scale).to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, MASK, SLOPES, CU_Q, CU_K,
                     sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                     sgb, sgh, sgm, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right, seed, p_drop,
                     HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                     BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The deterministic dK/dV (flash.14, flash.16, flash.18): `_dkdv_program` without dQ. No atomics."""
    b, kv_h, q0, k0, n_b, m_b = _sequence(tl.program_id(1), H_KV, N, M, CU_Q, CU_K, VARLEN)
    start_m = tl.multiple_of(tl.program_id(0) * BLOCK_M, BLOCK_M)
    if start_m >= m_b:  # a key tile past this sequence's end (the grid covers the longest one)
        return
    _dkdv_program(b, kv_h, q0, k0, n_b, m_b, start_m, Q, K, V, DO, LSE, DELTA, DK, DV, DK, MASK, SLOPES,
                  sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                  sgb, sgh, sgm, 0, 0, 0, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right, seed, p_drop,
                  HAS_MASK, HAS_LEFT, HAS_RIGHT, BOTTOM_RIGHT, HAS_ALIBI, VARLEN, HAS_DROPOUT, False,
                  DOT_PRECISION, HEAD_DIM, BLOCK_N, BLOCK_M, BLOCK_D)


@triton.jit
def _bwd_atomic_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, MASK, SLOPES, CU_Q, CU_K,
                       sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                       sgb, sgh, sgm, sgqb, sgqh, sgqn, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right,
                       seed, p_drop,
                       HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                       BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                       HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The single-kernel backward (flash.24): `_dkdv_program` with dQ added atomically into DQ_ACC."""
    b, kv_h, q0, k0, n_b, m_b = _sequence(tl.program_id(1), H_KV, N, M, CU_Q, CU_K, VARLEN)
    start_m = tl.multiple_of(tl.program_id(0) * BLOCK_M, BLOCK_M)
    if start_m >= m_b:  # a key tile past this sequence's end (the grid covers the longest one)
        return
    _dkdv_program(b, kv_h, q0, k0, n_b, m_b, start_m, Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, MASK, SLOPES,
                  sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                  sgb, sgh, sgm, sgqb, sgqh, sgqn, H_KV, GROUP, N, M, scale, qk_scale, win_left, win_right,
                  seed, p_drop, HAS_MASK, HAS_LEFT, HAS_RIGHT, BOTTOM_RIGHT, HAS_ALIBI, VARLEN, HAS_DROPOUT, True,
                  DOT_PRECISION, HEAD_DIM, BLOCK_N, BLOCK_M, BLOCK_D)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, lo, hi, rows, n_b, m_b, off, win_left, win_right,
              pad_row_ptr, slope, skm, svm, qk_scale, seed, p_drop, bhq, N, M,
              MASKED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
              HAS_ALIBI: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ += dS K (flash.16) over the key tiles in [lo, hi)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        cols = start_m + tl.arange(0, BLOCK_M)
        k = _load_rows(k_ptr, cols, m_b, skm, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_ptr, cols, m_b, svm, MASKED, HEAD_DIM, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # raw q.k
        s = _scores(s, rows[:, None], cols[None, :], n_b, m_b, off, win_left, win_right, pad_row_ptr, slope,
                    MASKED, HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI)
        p = tl.math.exp2(s * qk_scale - lse[:, None])  # (flash.13), one FMA per score (flash.22)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if HAS_DROPOUT:  # (flash.21)
            keep = _dropout_keep(seed, p_drop, bhq, rows[:, None], cols[None, :], N, M)
            dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, MASK, SLOPES, CU_Q, CU_K,
                   sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sdb, sdh, sdn, slb, slh,
                   sgb, sgh, sgm, H, GROUP, N, M, scale, qk_scale, win_left, win_right, seed, p_drop,
                   HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                   BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ = scale dS K (flash.16) for one tile of BLOCK_N queries; written once (strides sg*), no atomics."""
    b, h, q0, k0, n_b, m_b = _sequence(tl.program_id(1), H, N, M, CU_Q, CU_K, VARLEN)
    start_n = tl.multiple_of(tl.program_id(0) * BLOCK_N, BLOCK_N)
    if start_n >= n_b:
        return
    off = (m_b - n_b) * BOTTOM_RIGHT
    kv_h = h // GROUP
    rows = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * sqb + h * sqh + q0 * sqn, rows, n_b, sqn, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DO + b * sdb + h * sdh + q0 * sdn, rows, n_b, sdn, True, HEAD_DIM, BLOCK_D)
    lse, delta = _row_stats(LSE + b * slb + h * slh + q0, DELTA + b * slb + h * slh + q0, rows, n_b, True)
    k_ptr = K + b * skb + kv_h * skh + k0 * skm
    v_ptr = V + b * svb + kv_h * svh + k0 * svm
    pad_row_ptr = MASK + b * M
    slope = 0.0
    if HAS_ALIBI:  # raw-score units (flash.22)
        slope = tl.load(SLOPES + h) * LOG2E / qk_scale
    dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, a, b_, hi = _inner_ranges(start_n, n_b, m_b, off, win_left, win_right, BLOCK_N, BLOCK_M,
                                  HAS_LEFT, HAS_RIGHT)
    for part in tl.static_range(3):  # masked | interior (no mask) | masked
        start, end = _part(part, lo, a, b_, hi)
        if part != 0 or HAS_LEFT:
            dq = _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, start, end, rows, n_b, m_b, off, win_left,
                           win_right, pad_row_ptr, slope, skm, svm, qk_scale, seed, p_drop, b * H + h, N, M,
                           part != 1, HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI, HAS_DROPOUT, DOT_PRECISION,
                           HEAD_DIM, BLOCK_M, BLOCK_D)
    ok = (rows[:, None] < n_b) & (dims[None, :] < HEAD_DIM)
    offs = b * sgb + h * sgh + (q0 + rows[:, None]) * sgm + dims[None, :]
    tl.store(DQ + offs, (dq * scale).to(DQ.dtype.element_ty), mask=ok)
