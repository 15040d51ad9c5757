"""The Triton forward program behind `minitx.kernels.flash_attention`, and the helpers the backward shares.

Read `docs/math/flash_attention.md` alongside: every step below carries the label of the equation it computes.
One program handles one tile of BLOCK_N query rows for one (batch, head) pair; the grid is (row tiles, B * H).

Conventions shared by all the kernels (here and in `flash_bwd_kernels.py`):
  - tensors are addressed through their strides, so non-contiguous q, k, v, dO work without a copy; the
    head-dim stride is 1 in practice, which Triton's launcher specialises as a constant (vector loads);
  - rows past the sequence and head-dim columns past HEAD_DIM (padded to a power of two, BLOCK_D) are loaded
    as zeros through masked loads and never stored;
  - which key j query i may see is one rule (flash.10): j < M_b, not padding, and, relative to the aligned
    diagonal d = j - i - off (off = 0 top-left, M_b - N_b bottom-right), -win_left <= d <= win_right where
    the window has that side (causal is win_right = 0);
  - the key loop is split (flash.17): tiles wholly inside every row's allowed band take no mask at all,
    only the tiles that straddle a band edge or the end of the sequence are masked, tiles outside are skipped;
  - exponentials are `exp2` of base-2 scores scale * log2(e) * q.k (flash.9); the scale is not a separate
    multiply over the tile: it is folded into the row max and into one FMA, exp2(s qk_scale - m) (flash.22),
    which needs qk_scale > 0 (the autograd op guarantees it: a negative scale flips k, a zero one zeroes q);
    the saved logsumexp stays in base-2 units (L2 = L log2(e)); the front door converts it to natural log;
  - grouped-query attention: query head h reads key/value head h // GROUP, never a repeated copy (flash.18);
  - variable-length packing (VARLEN): sequence b is rows cu_q[b]..cu_q[b+1] of q and cu_k[b]..cu_k[b+1] of
    k, v; the batch stride is passed as 0 (flash.19).
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a global a kernel reads must be a constexpr


@triton.jit
def _sequence(pid_bh, H, N, M, CU_Q, CU_K, VARLEN: tl.constexpr):
    """(b, h, first query row, first key row, N_b, M_b) of this program's (batch, head) pair (flash.19)."""
    b = pid_bh // H
    h = pid_bh % H
    if VARLEN:
        q0 = tl.load(CU_Q + b)
        k0 = tl.load(CU_K + b)
        n_b = tl.load(CU_Q + b + 1) - q0
        m_b = tl.load(CU_K + b + 1) - k0
    else:
        q0 = 0
        k0 = 0
        n_b = N
        m_b = M
    return b, h, q0, k0, n_b, m_b


@triton.jit
def _inner_ranges(start, len_outer, len_inner, c, dl, dr,
                  B_OUT: tl.constexpr, B_IN: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """Split the inner loop of an outer tile into masked | unmasked | masked ranges, skipping the rest (flash.17).

    Inner index u may be used by outer index t iff u < len_inner and t + c - dl <= u <= t + c + dr (each
    side only if it exists). Returns (lo, a, b, hi): tiles in [lo, a) and [b, hi) need the element mask,
    tiles in [a, b) are allowed for every outer index of the tile and lie inside len_inner; nothing outside
    [lo, hi) is allowed for any outer index of the tile (flash.12). lo and a are multiples of B_IN (or = hi).
    """
    last = tl.minimum(start + B_OUT, len_outer) - 1
    lo = 0
    hi = len_inner
    a = 0
    full = len_inner // B_IN * B_IN
    if HAS_LO:
        lo = tl.maximum(0, start + c - dl) // B_IN * B_IN
        a = tl.cdiv(tl.maximum(0, last + c - dl), B_IN) * B_IN  # first tile every row sees from its left edge
        a = tl.maximum(lo, a)
    if HAS_HI:
        hi = tl.minimum(len_inner, tl.maximum(0, last + c + dr + 1))
        full = tl.minimum(full, tl.maximum(0, start + c + dr + 1) // B_IN * B_IN)
    lo = tl.minimum(lo, hi)
    a = tl.minimum(a, hi)
    b = tl.maximum(a, tl.minimum(full, hi))
    return lo, a, b, hi


@triton.jit
def _part(part: tl.constexpr, lo, a, b, hi):
    """The bounds of part 0, 1 or 2 of the key loop that _inner_ranges split: [lo, a) | [a, b) | [b, hi)."""
    if part == 0:
        return lo, a
    elif part == 1:
        return a, b
    else:
        return b, hi


@triton.jit
def _scores(s, qi, kj, n_b, m_b, off, win_left, win_right, pad_row_ptr, slope,
            MASKED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
            HAS_ALIBI: tl.constexpr):
    """Add the ALiBi bias (flash.20) to a tile of raw scores q.k and set what may not be attended to -inf
    (flash.10): the band and the sequence ends only on MASKED tiles, padding always.

    qi, kj: the query and key positions, broadcastable to the tile: (BLOCK_N, 1) and (1, BLOCK_M) for a
    (queries, keys) tile, (1, BLOCK_N) and (BLOCK_M, 1) for the transposed (keys, queries) tile of dK/dV.
    `slope` is the ALiBi slope in raw-score units (slope / scale), so the caller's one FMA scales both."""
    rel = kj - qi - off  # key position relative to the query's (aligned) diagonal
    if HAS_ALIBI:
        s = s - slope * tl.abs(rel).to(tl.float32)
    if MASKED:
        ok = (qi < n_b) & (kj < m_b)
        if HAS_RIGHT:
            ok = ok & (rel <= win_right)
        if HAS_LEFT:
            ok = ok & (rel >= -win_left)
        s = tl.where(ok, s, float("-inf"))
    if HAS_MASK:
        real = tl.load(pad_row_ptr + kj, mask=kj < m_b, other=0)  # (B, M), 1 = real token
        s = tl.where(real != 0, s, float("-inf"))
    return s


@triton.jit
def _dropout_keep(seed, p_drop, bhq, qi, kj, N, M):
    """Bool keep-mask of inverted dropout over a tile, Philox-counter-based (flash.21): element (b h, i, j)
    draws uniform number ((b H + h) N + i) M + j of stream `seed`, so both backward kernels regenerate exactly
    the forward's mask without storing it. qi, kj broadcast as in `_scores` (either tile orientation)."""
    offs = (bhq * N + qi).to(tl.int64) * M + kj
    return tl.rand(seed, offs) >= p_drop


@triton.jit
def _load_rows(ptr, rows, n_rows, stride_row, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """A (len(rows), BLOCK_D) tile; masked on the rows only where it may cross the end (MASKED), on the
    columns only where the head dim is padded (flash.8)."""
    dims = tl.arange(0, BLOCK_D)
    offs = ptr + rows[:, None] * stride_row + dims[None, :]
    if MASKED:
        tile = tl.load(offs, mask=(rows[:, None] < n_rows) & (dims[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM == BLOCK_D:
        tile = tl.load(offs)
    else:
        tile = tl.load(offs, mask=dims[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_src, v_src, lo, hi, rows, n_b, m_b, off, win_left, win_right, pad_row_ptr,
               slope, skm, svm, qk_scale, seed, p_drop, bhq, N, M,
               MASKED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
               HAS_ALIBI: tl.constexpr, USE_TMA: tl.constexpr, HAS_DROPOUT: tl.constexpr,
               DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The online softmax (flash.3) over the key tiles in [lo, hi)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)  # true: lo is a multiple of BLOCK_M (_inner_ranges)
        cols = start_m + tl.arange(0, BLOCK_M)
        if USE_TMA:  # a tensor descriptor: the copy engine fetches the tile, zero-filling past M_b and D
            k = k_src.load([start_m, 0])
            v = v_src.load([start_m, 0])
        else:
            k = _load_rows(k_src, cols, m_b, skm, MASKED, HEAD_DIM, BLOCK_D)
            v = _load_rows(v_src, cols, m_b, svm, MASKED, HEAD_DIM, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M) raw q.k
        s = _scores(s, rows[:, None], cols[None, :], n_b, m_b, off, win_left, win_right, pad_row_ptr, slope,
                    MASKED, HAS_MASK, HAS_LEFT, HAS_RIGHT, HAS_ALIBI)
        # (flash.22) the row max of the raw scores, scaled once per row (qk_scale > 0 keeps it the max)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        # a row that has seen no allowed key yet keeps m = -inf; shift by 0 so exp2 never sees -inf - -inf
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_shift)  # rescales what was summed under the old max (flash.3)
        p = tl.math.exp2(s * qk_scale - m_shift[:, None])  # one FMA per score, then exp2 (flash.22)
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax's own sum: dropout acts on the normalised weights
        if HAS_DROPOUT:  # (flash.21) inverted dropout on P, as (attn.5)
            keep = _dropout_keep(seed, p_drop, bhq, rows[:, None], cols[None, :], N, M)
            p = tl.where(keep, p / (1.0 - p_drop), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, MASK, SLOPES, CU_Q, CU_K,
                sqb, sqh, sqn, skb, skh, skm, svb, svh, svm, sob, soh, son, slb, slh,
                H, GROUP, N, M, qk_scale, win_left, win_right, seed, p_drop,
                HAS_MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                BOTTOM_RIGHT: tl.constexpr, HAS_ALIBI: tl.constexpr, VARLEN: tl.constexpr, USE_TMA: tl.constexpr,
                HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """O = softmax(scale Q K^T + bias) V for one tile of BLOCK_N query rows, by the online softmax (flash.3,
    flash.4). Also stores the row logsumexp L2 = m + log2(l) (flash.5, base 2), all the backward needs."""
    b, h, q0, k0, n_b, m_b = _sequence(tl.program_id(1), H, N, M, CU_Q, CU_K, VARLEN)
    start_n = tl.multiple_of(tl.program_id(0) * BLOCK_N, BLOCK_N)
    if start_n >= n_b:  # a packed sequence shorter than the longest one
        return
    off = (m_b - n_b) * BOTTOM_RIGHT
    kv_h = h // GROUP  # (flash.18)
    rows = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * sqb + h * sqh + q0 * sqn, rows, n_b, sqn, True, HEAD_DIM, BLOCK_D)
    k_src = K + b * skb + kv_h * skh + k0 * skm
    v_src = V + b * svb + kv_h * svh + k0 * svm
    if USE_TMA:
        k_src = tl.make_tensor_descriptor(k_src, shape=[m_b, HEAD_DIM], strides=[skm, 1],
                                          block_shape=[BLOCK_M, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_src, shape=[m_b, HEAD_DIM], strides=[svm, 1],
                                          block_shape=[BLOCK_M, BLOCK_D])
    pad_row_ptr = MASK + b * M
    slope = 0.0
    if HAS_ALIBI:  # in raw-score units, slope / scale: the FMA's qk_scale turns it into log2 units (flash.22)
        slope = tl.load(SLOPES + h) * LOG2E / qk_scale

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)  # running max of the (log2-scaled) scores
    l_i = tl.zeros([BLOCK_N], tl.float32)                # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)       # running unnormalised output
    lo, a, b_, hi = _inner_ranges(start_n, n_b, m_b, off, win_left, win_right, BLOCK_N, BLOCK_M,
                                  HAS_LEFT, HAS_RIGHT)
    for part in tl.static_range(3):  # left edge (masked) | interior (no mask) | diagonal and end (masked)
        start, end = _part(part, lo, a, b_, hi)
        if part != 0 or HAS_LEFT:  # without a left window edge [lo, a) is empty: emit no loop for it
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_src, v_src, start, end, rows, n_b, m_b, off,
                                       win_left, win_right, pad_row_ptr, slope, skm, svm, qk_scale, seed,
                                       p_drop, b * H + h, N, M, part != 1, HAS_MASK, HAS_LEFT, HAS_RIGHT,
                                       HAS_ALIBI, USE_TMA, HAS_DROPOUT, DOT_PRECISION, HEAD_DIM, BLOCK_M,
                                       BLOCK_D)

    # (flash.4) normalise once at the end; an empty row (l = 0) gives 0, not 0/0 (flash.11)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    row_ok = rows < n_b
    o_ptr = O + b * sob + h * soh + (q0 + rows[:, None]) * son + dims[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM))
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))  # (flash.5), base-2 units
    tl.store(LSE + b * slb + h * slh + q0 + rows, lse, mask=row_ok)


@triton.jit
def _dropout_mask_kernel(OUT, seed, p_drop, N, M, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Write the keep-mask (B H, N, M) the attention kernels draw for `seed` (flash.21): a test hook."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    bhq = tl.program_id(2)
    keep = _dropout_keep(seed, p_drop, bhq, rows[:, None], cols[None, :], N, M)
    ok = (rows[:, None] < N) & (cols[None, :] < M)
    tl.store(OUT + (bhq * N + rows[:, None]).to(tl.int64) * M + cols[None, :], keep.to(tl.int8), mask=ok)
