"""The Triton programs behind `minitx.kernels.flash_attention` (FlashAttention-2 forward and backward).

Read `docs/math/flash_attention.md` alongside: every step below carries the label of the equation it computes.
One program handles one tile of rows for one (batch, head) pair; the grid is (row tiles, B * H).

Conventions shared by all four kernels:
  - tensors are addressed through their strides, so non-contiguous q, k, v, dO work without a copy;
  - rows past N or M and head-dim columns past D (the head dim is padded to a power of two, BLOCK_D) are
    loaded as zeros through masked loads and never stored;
  - a score that may not be attended (past M, padded key, above the causal diagonal) is set to -inf before
    the exponential, so its probability is exactly 0;
  - exponentials are `exp2`: the scores are multiplied by `scale * log2(e)` once (flash.9), and the saved
    logsumexp stays in those base-2 units (L2 = L log2(e)), so the backward's recomputed probabilities
    exp2(s2 - L2) go through no extra rounding; the front door converts it to natural log for users.
"""

import triton
import triton.language as tl

@triton.jit
def _allowed(rows, cols, N, M, mask_row_ptr, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """(BLOCK_N, BLOCK_M) boolean: may query `rows[i]` attend to key `cols[j]`? (flash.10, flash.11)"""
    ok = (rows[:, None] < N) & (cols[None, :] < M)
    if HAS_MASK:
        # key padding mask (B, M), 1 = real token; padded columns past M read as 0
        real = tl.load(mask_row_ptr + cols, mask=cols < M, other=0)
        ok = ok & (real[None, :] != 0)
    if CAUSAL:
        ok = ok & (cols[None, :] <= rows[:, None])  # top-left aligned, like torch SDPA's is_causal
    return ok


@triton.jit
def _causal_key_end(start_n, BLOCK_N: tl.constexpr, M, CAUSAL: tl.constexpr):
    """One past the last key any query of this row tile may see: tiles beyond it are skipped (flash.12)."""
    end = M
    if CAUSAL:
        end = tl.minimum(M, start_n + BLOCK_N)
    return end


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, MASK,
                sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd, sob, soh, son, sod,
                H, N, M, D, qk_scale,
                HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """O = softmax(scale Q K^T) V for one tile of BLOCK_N query rows, by the online softmax (flash.3, flash.4).

    Also stores the row logsumexp L2 = m + log2(l) (flash.5, in base 2), the only statistic the backward needs.
    """
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rows = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < N, dims < D
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    mask_row = MASK + b * M

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)  # running max of the (log2-scaled) scores
    l_i = tl.zeros([BLOCK_N], tl.float32)                # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)       # running unnormalised output
    for start_m in range(0, _causal_key_end(start_n, BLOCK_N, M, CAUSAL), BLOCK_M):
        cols = start_m + tl.arange(0, BLOCK_M)
        kv_ok = (cols[:, None] < M) & dim_ok[None, :]
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skm + dims[None, :] * skd, mask=kv_ok, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svm + dims[None, :] * svd, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        s = tl.where(_allowed(rows, cols, N, M, mask_row, HAS_MASK, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen no allowed key yet keeps m = -inf; shift by 0 instead so exp2 never sees -inf - -inf
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_shift)             # rescales what was summed under the old max (flash.3)
        p = tl.math.exp2(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # (flash.4) normalise once at the end; an empty row (l = 0) gives 0, not 0/0 (flash.11)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * sob + h * soh + rows[:, None] * son + dims[None, :] * sod, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))  # (flash.5), base-2 units
    tl.store(LSE + bh * N + rows, lse, mask=row_ok)


@triton.jit
def _bwd_preprocess_kernel(O, DO, DELTA, sob, soh, son, sod, sdb, sdh, sdn, sdd, H, N, D,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Delta_i = rowsum(dO * O)_i, which equals rowsum(dP * P)_i (flash.15)."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rows = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < N) & (dims[None, :] < D)
    o = tl.load(O + b * sob + h * soh + rows[:, None] * son + dims[None, :] * sod, mask=ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + dims[None, :] * sdd, mask=ok, other=0.0)
    tl.store(DELTA + bh * N + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=rows < N)


@triton.jit
def _recompute_p(q, k, rows, cols, lse2, N, M, mask_row, qk_scale,
                 HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """P = exp2(scale log2(e) q k^T - L2) from the saved logsumexp, without any running statistics (flash.13)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    s = tl.where(_allowed(rows, cols, N, M, mask_row, HAS_MASK, CAUSAL), s, float("-inf"))
    return tl.math.exp2(s - lse2[:, None])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, MASK,
                     sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd, sdb, sdh, sdn, sdd,
                     H, N, M, D, scale, qk_scale,
                     HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dV = P^T dO (flash.14) and dK = scale dS^T Q (flash.16) for one tile of BLOCK_M keys.

    The program owns its key rows and loops over query tiles, so dK and dV are each written once: no atomics.
    """
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    cols = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    kv_ok = (cols[:, None] < M) & (dims[None, :] < D)
    k = tl.load(K + b * skb + h * skh + cols[:, None] * skm + dims[None, :] * skd, mask=kv_ok, other=0.0)
    v = tl.load(V + b * svb + h * svh + cols[:, None] * svm + dims[None, :] * svd, mask=kv_ok, other=0.0)
    mask_row = MASK + b * M

    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # causal: a query i sees key j only if i >= j, so query tiles wholly before this key tile are skipped (flash.12)
    first = (start_m // BLOCK_N) * BLOCK_N if CAUSAL else 0
    for start_n in range(first, N, BLOCK_N):
        rows = start_n + tl.arange(0, BLOCK_N)
        q_ok = (rows[:, None] < N) & (dims[None, :] < D)
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=q_ok, other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + dims[None, :] * sdd, mask=q_ok, other=0.0)
        lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0.0)
        lse = tl.where(lse == float("-inf"), 0.0, lse)  # empty rows: every p is 0 anyway (flash.11)
        delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0.0)
        p = _recompute_p(q, k, rows, cols, lse, N, M, mask_row, qk_scale, HAS_MASK, CAUSAL, DOT_PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)      # (flash.14)
        ds = p * (dp - delta[:, None])                                   # (flash.15)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    tl.store(DK + bh * M * D + cols[:, None] * D + dims[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + bh * M * D + cols[:, None] * D + dims[None, :], dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, MASK,
                   sqb, sqh, sqn, sqd, skb, skh, skm, skd, svb, svh, svm, svd, sdb, sdh, sdn, sdd,
                   H, N, M, D, scale, qk_scale,
                   HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ = scale dS K (flash.16) for one tile of BLOCK_N queries; written once, no atomics."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rows = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q_ok = (rows[:, None] < N) & (dims[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=q_ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + dims[None, :] * sdd, mask=q_ok, other=0.0)
    lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0.0)
    mask_row = MASK + b * M

    dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, _causal_key_end(start_n, BLOCK_N, M, CAUSAL), BLOCK_M):
        cols = start_m + tl.arange(0, BLOCK_M)
        kv_ok = (cols[:, None] < M) & (dims[None, :] < D)
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skm + dims[None, :] * skd, mask=kv_ok, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svm + dims[None, :] * svd, mask=kv_ok, other=0.0)
        p = _recompute_p(q, k, rows, cols, lse, N, M, mask_row, qk_scale, HAS_MASK, CAUSAL, DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(DQ + bh * N * D + rows[:, None] * D + dims[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_ok)
