"""
Fused attention, FlashAttention-2 style (Dao, 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning"), with a bottom-right-aligned causal mask and left padding.

    o = softmax(sm_scale * q @ k^T + mask) @ v      q (B, H, Tq, D); k, v (B, H, Tk, D); Tq <= Tk

The queries are the LAST Tq of the Tk positions: query i sits at position Tk - Tq + i and, when
causal, sees the keys j <= Tk - Tq + i. Tq == Tk is ordinary training attention; Tq == 1 is one
KV-cache decode step; anything between is a chunk of a prefill. key_start[b] hides the keys
j < key_start[b] of row b from every query (left padding). A query that sees no key outputs zeros.

How the kernels avoid the (Tq, Tk) matrix of scores:
- forward: one program owns a tile of BLOCK_M queries and walks over the keys BLOCK_N at a time,
  keeping a running max m, a running sum l of exp(score - m) and an fp32 accumulator of p @ v
  (the "online softmax", Milakov & Gimelshein 2018). When m grows, what was summed so far is
  rescaled by exp(m_old - m_new). At the end o = acc / l, and the log-sum-exp m + log(l) is saved.
- backward: recompute p = exp(score - lse) tile by tile from the saved log-sum-exp. With
  delta_i = sum_d dO_id * O_id, the softmax gradient is dS = P * (dP - delta). One kernel owns a
  tile of keys and sums dK, dV over the queries; another owns a tile of queries and sums dQ over
  the keys, so that no two programs write the same output (no atomics).
- only the key tiles a query tile can see are visited: with causality the loop stops at the
  diagonal, and with key_start it starts at the first tile that holds a visible key. Tiles cut by
  the diagonal, by key_start or by the end of the sequence take the masked path; the others, most
  of them on long sequences, take a path without masks.
- the scores are kept in base 2: the scale is folded with log2(e) so that exp2, one instruction on
  the GPU, replaces exp. The saved log-sum-exp is in the same base-2 units.

flash_attention is the public op; attention_sdpa is the plain-PyTorch path (the CPU's), and
attention_reference the test oracle of both. On the CPU the kernels run only under Triton's
interpreter (TRITON_INTERPRET=1).
"""
import math
import os

import torch

from kernels._triton import require_triton, tl, triton

# Triton picks its interpreter when the kernels are decorated, so this is read once, at import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------
# Small helpers shared by the kernels


@triton.jit
def _load_tile(ptrs, offs_rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, zero past the last row and past the head dim. Only what can be
    out of range is masked, because loads without masks vectorize best."""
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _store_tile(ptrs, tile, offs_rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, tile, mask=offs_rows[:, None] < n_rows)
    else:
        tl.store(ptrs, tile, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _visible(q_pos, k_pos, key_lo, Tk, CAUSAL: tl.constexpr):
    """Which (query, key) pairs may attend, for positions already broadcast against each other:
    keys in [key_start, Tk), and with causality none from a query's future."""
    visible = (k_pos >= key_lo) & (k_pos < Tk)
    if CAUSAL:
        visible = visible & (k_pos <= q_pos)
    return visible


@triton.jit
def _key_blocks(start_m, Tq, Tk, key_lo, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles that the query tile [start_m, start_m + BLOCK_M) must visit, as boundaries
    lo <= mid_lo <= mid_hi <= hi of three runs of tile starts (multiples of BLOCK_N):
        [lo, mid_lo)       the tile that key_start cuts in two        -> masked
        [mid_lo, mid_hi)   tiles every query of the tile sees in full -> no masks
        [mid_hi, hi)       tiles cut by the causal diagonal or by Tk  -> masked
    Tiles before lo lie wholly before key_start and tiles from hi on wholly in the future: skipped."""
    lo = key_lo // BLOCK_N * BLOCK_N
    hi = Tk
    full_lo = tl.cdiv(key_lo, BLOCK_N) * BLOCK_N  # first tile starting at or after key_start
    full_hi = Tk // BLOCK_N * BLOCK_N  # the tile holding the last key is masked when Tk is not a multiple
    if CAUSAL:
        # the last query of the tile, at Tk - Tq + start_m + BLOCK_M - 1, sees the most keys,
        # and the first one, at Tk - Tq + start_m, the fewest: every tile before it is seen in full
        hi = tl.minimum(hi, Tk - Tq + start_m + BLOCK_M)
        full_hi = tl.minimum(full_hi, (Tk - Tq + start_m + 1) // BLOCK_N * BLOCK_N)
    mid_lo = tl.minimum(full_lo, hi)
    mid_hi = tl.maximum(mid_lo, full_hi)
    return lo, mid_lo, mid_hi, hi


# ----------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                    qk_scale, start, end, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold the key tiles starting in [start, end) into the running softmax of one query tile."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], offs_n, Tk, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 scores
        if MASKED:
            s = tl.where(_visible(q_pos[:, None], offs_n[None, :], key_lo, Tk, CAUSAL), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row that has seen no key yet still has m = -inf, and exp2(-inf - -inf) is NaN:
            # subtract 0 instead, so that its p and its rescale factor come out as exp2(-inf) = 0
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = m_new  # every score of this tile is finite, so is the new max
        p = tl.exp2(s - m_sub[:, None])  # (BLOCK_M, BLOCK_N), unnormalized probabilities
        alpha = tl.exp2(m_i - m_sub)  # (BLOCK_M,) rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], offs_n, Tk, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        # p goes to the dot in the input dtype, as FlashAttention does; the sum stays fp32
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["tq_bucket", "tk_bucket"])
def _attn_fwd_kernel(
    # pointers
    Q, K, V, O, LSE, KEY_START,
    # strides in elements of the (batch, head, time) dims; the head dim is contiguous
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    # sizes
    H, Tq, Tk,
    tq_bucket, tk_bucket,  # Tq and Tk rounded up to powers of two: read only by the autotuner, as its key
    # scale
    qk_scale,  # sm_scale * log2(e)
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two; the extra columns are masked
    CAUSAL: tl.constexpr,
    HAS_KEY_START: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    # 64-bit base offsets: a (B, H, maxT, D) KV cache can hold more than 2**31 elements
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    if CAUSAL:
        # the last query tiles have the most keys to visit: launch them first, so that the short
        # ones fill the tail of the grid instead of leaving the GPU waiting on a long one
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = Tk - Tq + offs_m  # positions of the queries among the keys

    q = _load_tile(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :], offs_m, Tq,
                   offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    key_lo = 0
    if HAS_KEY_START:
        key_lo = tl.maximum(tl.load(KEY_START + b).to(tl.int32), 0)
    lo, mid_lo, mid_hi, hi = _key_blocks(start_m, Tq, Tk, key_lo, CAUSAL, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running sum of exp2(score - m_i) * v
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo,
                                    Tk, qk_scale, lo, mid_lo, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo,
                                    Tk, qk_scale, mid_lo, mid_hi, False, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N,
                                    DOT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo,
                                    Tk, qk_scale, mid_hi, hi, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    # A row that saw no key has l = 0: it outputs zeros, and its log-sum-exp is +inf, so that in the
    # backward every p of the row is exp2(score - inf) = 0 and its gradients are zero, not NaN.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    _store_tile(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                o.to(O.dtype.element_ty), offs_m, Tq, offs_d, HEAD_DIM, BLOCK_D)
    tl.store(LSE + bh * Tq + offs_m, lse, mask=offs_m < Tq)


# ----------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _attn_bwd_preprocess_kernel(
    # pointers
    O, DO, DELTA,
    # strides of the (batch, head, time) dims
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    # sizes
    H, Tq,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, which equals sum_j P_ij * dP_ij: the term the softmax
    gradient subtracts, computed once here instead of in every key tile."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :], offs_m, Tq,
                   offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :], offs_m,
                    Tq, offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(DELTA + bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, offs_n, q_base, do_base, stride_qt, stride_dot, lse_base, delta_base, offs_d,
                         key_lo, Tq, Tk, qk_scale, start, end, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """Add to dk, dv of one key tile the part from the query tiles starting in [start, end).
    Everything is transposed, keys along the rows, so that dk and dv come out of the dots
    as (BLOCK_N, BLOCK_D) without transposing the accumulators."""
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], offs_m, Tq, offs_d, True, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], offs_m, Tq, offs_d, True, HEAD_DIM,
                        BLOCK_D)  # (BLOCK_M, BLOCK_D)
        # rows past Tq read lse = +inf, so their p is 0 (their q and dO are zero as well)
        lse = tl.load(lse_base + offs_m, mask=offs_m < Tq, other=float("inf"))  # (BLOCK_M,)
        delta = tl.load(delta_base + offs_m, mask=offs_m < Tq, other=0.0)  # (BLOCK_M,)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        if MASKED:
            s_t = tl.where(_visible(Tk - Tq + offs_m[None, :], offs_n[:, None], key_lo, Tk, CAUSAL), s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :])  # the forward's probabilities, recomputed
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV = P^T dO
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M), dP = dO V^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS = P * (dP - delta)
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # dK = dS^T Q (times sm_scale, later)
    return dk, dv


@triton.jit(do_not_specialize=["tq_bucket", "tk_bucket"])
def _attn_bwd_dkdv_kernel(
    # pointers
    Q, K, V, DO, DK, DV, LSE, DELTA, KEY_START,
    # strides in elements of the (batch, head, time) dims; the head dim is contiguous
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    # sizes
    H, Tq, Tk,
    tq_bucket, tk_bucket,  # read only by the autotuner
    # scales
    qk_scale, sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_START: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per step of the loop
    BLOCK_N: tl.constexpr,  # keys owned by the program
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :], offs_n, Tk,
                   offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
    v = _load_tile(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :], offs_n, Tk,
                   offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
    key_lo = 0
    if HAS_KEY_START:
        key_lo = tl.maximum(tl.load(KEY_START + b).to(tl.int32), 0)

    # The query tiles to visit, as runs of tile starts: [q_lo, q_mid) masked, [q_mid, q_hi) not.
    q_lo = 0
    q_mid = 0
    if CAUSAL:
        # query i sits at Tk - Tq + i: it sees the first key of this tile from i = start_n - (Tk - Tq) on,
        # and the whole tile from i = start_n + BLOCK_N - 1 - (Tk - Tq) on
        q_lo = tl.maximum(start_n - (Tk - Tq), 0) // BLOCK_M * BLOCK_M
        q_mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - (Tk - Tq), 0), BLOCK_M) * BLOCK_M
    # a key tile cut by key_start or by Tk needs masks for every query; one wholly before key_start
    # is seen by no query at all and keeps dk = dv = 0
    q_mid = tl.where((start_n < key_lo) | (start_n + BLOCK_N > Tk), Tq, q_mid)
    q_hi = tl.where(start_n + BLOCK_N <= key_lo, q_lo, Tq)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + bh * Tq
    delta_base = DELTA + bh * Tq
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, offs_n, q_base, do_base, stride_qt, stride_dot, lse_base, delta_base,
                                  offs_d, key_lo, Tq, Tk, qk_scale, q_lo, tl.minimum(q_mid, q_hi), True, CAUSAL,
                                  HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, offs_n, q_base, do_base, stride_qt, stride_dot, lse_base, delta_base,
                                  offs_d, key_lo, Tq, Tk, qk_scale, q_mid, q_hi, False, CAUSAL, HEAD_DIM, BLOCK_D,
                                  BLOCK_M, DOT_PRECISION)
    dk *= sm_scale  # the scores were sm_scale * q k^T
    _store_tile(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
                dk.to(DK.dtype.element_ty), offs_n, Tk, offs_d, HEAD_DIM, BLOCK_D)
    _store_tile(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
                dv.to(DV.dtype.element_ty), offs_n, Tk, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                       qk_scale, start, end, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Add to dq of one query tile the part from the key tiles starting in [start, end)."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], offs_n, Tk, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], offs_n, Tk, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            s = tl.where(_visible(q_pos[:, None], offs_n[None, :], key_lo, Tk, CAUSAL), s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # the forward's probabilities, recomputed
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # dQ = dS K (times sm_scale, later)
    return dq


@triton.jit(do_not_specialize=["tq_bucket", "tk_bucket"])
def _attn_bwd_dq_kernel(
    # pointers
    Q, K, V, DO, DQ, LSE, DELTA, KEY_START,
    # strides in elements of the (batch, head, time) dims; the head dim is contiguous
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    # sizes
    H, Tq, Tk,
    tq_bucket, tk_bucket,  # read only by the autotuner
    # scales
    qk_scale, sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_START: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries owned by the program
    BLOCK_N: tl.constexpr,  # keys per step of the loop
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest tiles first, as in the forward
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = Tk - Tq + offs_m
    q = _load_tile(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :], offs_m, Tq,
                   offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :], offs_m, Tq,
                    offs_d, True, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    lse = tl.load(LSE + bh * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))  # (BLOCK_M,)
    delta = tl.load(DELTA + bh * Tq + offs_m, mask=offs_m < Tq, other=0.0)  # (BLOCK_M,)
    key_lo = 0
    if HAS_KEY_START:
        key_lo = tl.maximum(tl.load(KEY_START + b).to(tl.int32), 0)
    lo, mid_lo, mid_hi, hi = _key_blocks(start_m, Tq, Tk, key_lo, CAUSAL, BLOCK_M, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                            qk_scale, lo, mid_lo, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                            qk_scale, mid_lo, mid_hi, False, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                            qk_scale, mid_hi, hi, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    dq *= sm_scale
    _store_tile(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
                dq.to(DQ.dtype.element_ty), offs_m, Tq, offs_d, HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------------------------
# Launch configurations


def _configs(tiles):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) tuples -> triton.Configs."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles taller than the sequences they cover: a decode step (Tq = 1) only tries BLOCK_M = 16."""
    fit = [c for c in configs
           if c.kwargs["BLOCK_M"] <= max(16, named_args["tq_bucket"])
           and c.kwargs["BLOCK_N"] <= max(16, named_args["tk_bucket"])]
    return fit or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]))]


if _INTERPRET:
    # The interpreter runs every program in numpy: one small tile keeps the CPU tests quick while
    # short test sequences still span several tiles, with both masked and unmasked ones.
    _FWD_CONFIGS = _DKDV_CONFIGS = _DQ_CONFIGS = _configs([(16, 16, 1, 1)])
else:
    # Candidates for Ampere/Hopper, timed once per key by triton.autotune. Head dims up to 64 favour
    # 4 warps and 3 stages; 128 favours 8 warps, and fewer stages to fit K and V tiles in shared memory.
    # Configurations that do not fit a GPU fail to compile and are dropped by the autotuner.
    _FWD_CONFIGS = _configs([
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3),
        (16, 64, 4, 3), (16, 128, 4, 3),  # short query chunks and decode steps
    ])
    _DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (16, 64, 4, 2)])
    _DQ_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (16, 64, 4, 2)])

# The key holds the problem sizes that decide the best tile; Triton adds the dtypes of the tensors.
_TUNING_KEY = ["tq_bucket", "tk_bucket", "HEAD_DIM", "CAUSAL", "HAS_KEY_START"]
_attn_fwd = triton.autotune(_FWD_CONFIGS, key=_TUNING_KEY, prune_configs_by={"early_config_prune": _prune_configs})(
    _attn_fwd_kernel)
_attn_bwd_dkdv = triton.autotune(_DKDV_CONFIGS, key=_TUNING_KEY,
                                 prune_configs_by={"early_config_prune": _prune_configs})(_attn_bwd_dkdv_kernel)
_attn_bwd_dq = triton.autotune(_DQ_CONFIGS, key=_TUNING_KEY,
                               prune_configs_by={"early_config_prune": _prune_configs})(_attn_bwd_dq_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers


def _check_inputs(q, k, v, key_start):
    """Raise a ValueError that names the problem, before any kernel sees the tensors."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"flash_attention: {name} must be a 4-d tensor (B, H, T, D), got {shape}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"flash_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"flash_attention: dtype must be float16, bfloat16 or float32, got {q.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if v.shape != k.shape:
        raise ValueError(f"flash_attention: v must have the shape of k, got {tuple(v.shape)} and {tuple(k.shape)}")
    B, H, Tq, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(f"flash_attention: q (B, H, Tq, D) and k (B, H, Tk, D) must agree on B, H and D, "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if Tq > k.shape[2]:
        raise ValueError(f"flash_attention: the queries are the last Tq of Tk positions, so Tq <= Tk is needed, "
                         f"got Tq={Tq}, Tk={k.shape[2]}")
    if not 16 <= D <= 128:
        raise ValueError(f"flash_attention: head dim D must be in [16, 128], got {D}")
    if B * H > 65535:
        raise ValueError(f"flash_attention: B * H must be at most 65535 (the kernels' grid), got {B * H}")
    if key_start is not None:
        if not isinstance(key_start, torch.Tensor) or key_start.dtype not in (torch.int32, torch.int64):
            what = key_start.dtype if isinstance(key_start, torch.Tensor) else type(key_start).__name__
            raise ValueError(f"flash_attention: key_start must be an int32 or int64 tensor, got {what}")
        if key_start.shape != (B,):
            raise ValueError(f"flash_attention: key_start must have shape (B,) = ({B},), got {tuple(key_start.shape)}")
        if key_start.device != q.device:
            raise ValueError(f"flash_attention: key_start must be on {q.device} like q, got {key_start.device}")
    require_triton("flash_attention", "attention_reference")
    if _INTERPRET and q.dtype == torch.bfloat16:
        raise ValueError("flash_attention: Triton's interpreter (TRITON_INTERPRET=1) computes bfloat16 dots "
                         "wrongly; use float16 or float32 there, or attention_reference")
    if q.device.type != "cuda" and not _INTERPRET:
        raise ValueError(f"flash_attention: the Triton kernels need CUDA tensors, got {q.device}. On the CPU use "
                         f"attention_reference, or set TRITON_INTERPRET=1 before triton is imported to run the "
                         f"kernels in Triton's interpreter (slow; for tests)")


def _head_contiguous(x):
    """The kernels read the head dim as contiguous (stride 1): only a tensor without it is copied."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _meta(q, k, causal, key_start):
    """Arguments every kernel takes: bucketed sizes for the autotuner and the compile-time switches."""
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    buckets = (triton.next_power_of_2(Tq), triton.next_power_of_2(Tk))
    meta = dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        CAUSAL=causal,
        HAS_KEY_START=key_start is not None,
        # fp32 inputs get exact fp32 dots, like torch's matmul default (tf32 would cost ~1e-3
        # relative error); fp16 and bf16 inputs take the default, tensor cores with fp32 sums
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
    )
    return buckets, meta


def _attn_forward(q, k, v, causal, sm_scale, key_start):
    """o (B, H, Tq, D) in the input dtype, lse (B, H, Tq) fp32 in base 2."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    # o is a (B, H, Tq, D) view of a (B, Tq, H, D) buffer, as SDPA returns it: the caller's
    # transpose(1, 2) back to (B, T, C) is then already contiguous
    o = torch.empty((B, Tq, H, D), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((B, H, Tq), device=q.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse
    buckets, meta = _meta(q, k, causal, key_start)
    grid = lambda META: (triton.cdiv(Tq, META["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd[grid](
        q, k, v, o, lse, key_start,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, Tq, Tk, *buckets,
        sm_scale * math.log2(math.e),
        **meta,
    )
    return o, lse


def _attn_backward(do, q, k, v, o, lse, causal, sm_scale, key_start):
    """dq, dk, dv, shaped and typed like q, k, v."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    do = _head_contiguous(do)  # e.g. the stride-0 expand that o.sum().backward() sends
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    buckets, meta = _meta(q, k, causal, key_start)

    delta = torch.empty_like(lse)  # (B, H, Tq) fp32
    pre_block = 16 if _INTERPRET else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(Tq, pre_block), B * H)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, Tq,
        HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=pre_block,
    )
    grid = lambda META: (triton.cdiv(Tk, META["BLOCK_N"]), B * H)  # noqa: E731
    _attn_bwd_dkdv[grid](
        q, k, v, do, dk, dv, lse, delta, key_start,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, Tq, Tk, *buckets,
        sm_scale * math.log2(math.e), sm_scale,
        **meta,
    )
    grid = lambda META: (triton.cdiv(Tq, META["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_dq[grid](
        q, k, v, do, dq, lse, delta, key_start,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, Tq, Tk, *buckets,
        sm_scale * math.log2(math.e), sm_scale,
        **meta,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# autograd.Function and the public op


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, key_start):
        q, k, v = _head_contiguous(q), _head_contiguous(k), _head_contiguous(v)
        o, lse = _attn_forward(q, k, v, causal, sm_scale, key_start)
        ctx.save_for_backward(q, k, v, o, lse, key_start)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, key_start = ctx.saved_tensors
        dq, dk, dv = _attn_backward(do, q, k, v, o, lse, ctx.causal, ctx.sm_scale, key_start)
        return dq, dk, dv, None, None, None


def flash_attention(q, k, v, *, causal=True, sm_scale=None, key_start=None):
    """softmax(sm_scale * q @ k^T + mask) @ v with fused Triton kernels, differentiable in q, k, v.
    q (B, H, Tq, D); k, v (B, H, Tk, D) with Tq <= Tk; D in [16, 128]; fp16, bf16 or fp32; any
    strides (a contiguous head dim avoids a copy). The queries are the last Tq positions
    (bottom-right-aligned causal mask). key_start (B,) int: keys at positions < key_start[b] are
    invisible to row b (left padding). sm_scale defaults to 1/sqrt(D). A query that sees no key
    outputs zeros and gets zero gradients. Returns o (B, H, Tq, D) in the input dtype, stored as
    (B, Tq, H, D) like SDPA's output, so that o.transpose(1, 2) is contiguous."""
    _check_inputs(q, k, v, key_start)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if key_start is not None:
        key_start = key_start.contiguous()
    return FlashAttentionFunction.apply(q, k, v, bool(causal), sm_scale, key_start)


# ----------------------------------------------------------------------------------------------
# Reference


def attention_reference(q, k, v, *, causal=True, sm_scale=None, key_start=None):
    """Attention in fp32 math. q (B, H, Tq, D); k, v (B, H, Tk, D) with Tq <= Tk.
    The queries are the last Tq positions of the Tk keys (bottom-right-aligned causal mask).
    key_start (B,) int: keys at positions < key_start[b] are invisible to row b (left padding).
    A query that sees no key outputs zeros."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    att = (q.float() @ k.float().transpose(-2, -1)) * sm_scale  # (B, H, Tq, Tk)
    visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        # query i sits at absolute position Tk - Tq + i
        visible = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    visible = visible[None, None]  # (1, 1, Tq, Tk)
    if key_start is not None:
        keys_on = torch.arange(Tk, device=q.device)[None, :] >= key_start.to(q.device)[:, None]  # (B, Tk)
        visible = visible & keys_on[:, None, None, :]
    seen = visible.any(dim=-1, keepdim=True)  # rows that see at least one key
    # a row that sees no key gets zeros (and zero gradients) instead of the NaN of softmax(-inf, ...)
    att = att.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)
    att = torch.softmax(att, dim=-1) * seen
    return (att @ v.float()).to(q.dtype)


def attention_sdpa(q, k, v, *, causal=True, sm_scale=None, key_start=None):
    """attention_reference's function through torch's scaled_dot_product_attention, fp32 math: the
    plain-PyTorch path the model takes (on a CPU 1.5x faster than the reference for a training step's
    attention, forward and backward, which materializes and masks the scores twice). A query that
    sees no key (left padding) is given every key, so that its softmax is not NaN, and then zeros."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:  # query i sits at absolute position Tk - Tq + i
        visible = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    visible = visible[None, None]  # (1, 1, Tq, Tk)
    if key_start is not None:
        keys_on = torch.arange(Tk, device=q.device)[None, :] >= key_start.to(q.device)[:, None]  # (B, Tk)
        visible = visible & keys_on[:, None, None, :]
    seen = visible.any(dim=-1, keepdim=True)  # (B or 1, 1, Tq, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=visible | ~seen,
                                                           scale=sm_scale)
    return (out * seen).to(q.dtype)
