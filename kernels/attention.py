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
- a decode step (Tq = 1) has one query per (batch, head) row and takes kernels of its own, without
  matrix products: the keys are split over several programs when B * H rows alone would leave most
  of the GPU idle ("Flash-Decoding", Dao et al. 2023). Each program keeps the m, l and accumulator
  of its keys; a second kernel merges them, with M = max_s m_s:
      l = sum_s 2^(m_s - M) l_s,    o = sum_s 2^(m_s - M) acc_s / l,    lse = M + log2(l).

What the kernels are compiled for: 16-byte-aligned tensors whose strides, but the head dim's 1, are
multiples of 16 elements (the launchers copy an input that is not so, which no layout of the model
needs); sizes (H, Tq, Tk) are not specialized. So each kernel has one compiled form per dtype, head
dim, causality and tile, and benchmarks/kernel_compile.py checks every one of them for spills.

flash_attention is the public op; attention_sdpa is the plain-PyTorch path (the CPU's), and
attention_reference the test oracle of both. On the CPU the kernels run only under Triton's
interpreter (TRITON_INTERPRET=1).
"""
import functools
import math
import os

import torch

from kernels._triton import require_triton, tl, triton

# Triton picks its interpreter when the kernels are decorated, so this is read once, at import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")

# Sizes vary from call to call: compiled without value specialization (Triton would otherwise build one
# kernel for sizes divisible by 16, another for 1, and another for the rest).
_SIZES = ["H", "Tq", "Tk", "tq_bucket", "n_splits", "keys_per_split"]


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


@triton.jit
def _row_start(KEY_START, b):
    """key_start of batch row b (negative values count as 0)."""
    return tl.maximum(tl.load(KEY_START + b).to(tl.int32), 0)


# ----------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, q_pos, k_base, v_base, stride_kt, stride_vt, offs_d, key_lo, Tk,
                    qk_scale, start, end, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold the key tiles starting in [start, end) into the running softmax of one query tile.
    A masked run is a tile or two: it is not software-pipelined, which would cost registers for nothing."""
    for start_n in tl.range(start, end, BLOCK_N, num_stages=1 if MASKED else None):
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


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES + ["KEY_START"])
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
    tq_bucket,  # Tq rounded up to a power of two: read only by the autotuner, as its key
    # scale
    qk_scale,  # sm_scale * log2(e)
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two; the extra columns are masked
    CAUSAL: tl.constexpr,
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
    key_lo = _row_start(KEY_START, b)
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
# Decode: one query per (batch, head) row, the keys split over programs


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES + ["KEY_START"])
def _attn_decode_kernel(
    # pointers
    Q, K, V, O, LSE, KEY_START,
    PARTIAL_ACC, PARTIAL_M, PARTIAL_L,  # (B * H, n_splits, BLOCK_D), (B * H, n_splits) x 2, fp32: when SPLIT
    # strides in elements of the (batch, head, time) dims; the head dim is contiguous
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh,
    # sizes
    H, Tk,
    n_splits, keys_per_split,  # program s of a row takes the keys [s * keys_per_split, (s + 1) * keys_per_split)
    # scale
    qk_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,  # n_splits > 1: write the partial m, l, acc for _attn_decode_combine_kernel
    BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d, mask=offs_d < HEAD_DIM, other=0.0).to(tl.float32)
    key_lo = _row_start(KEY_START, b)
    # the query is the last position: causal or not, it sees every key from key_start on
    lo = tl.maximum(split * keys_per_split, key_lo // BLOCK_N * BLOCK_N)
    hi = tl.minimum((split + 1) * keys_per_split, Tk)

    m_i = tl.full((), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((), dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], offs_n, hi, offs_d, True, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        # a matrix-vector product: one query is too few rows for the tensor cores
        s = tl.sum(k.to(tl.float32) * q[None, :], 1) * qk_scale  # (BLOCK_N,) base-2 scores
        s = tl.where((offs_n >= key_lo) & (offs_n < hi), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: see _attn_fwd_inner
        p = tl.exp2(s - m_sub)
        alpha = tl.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 0)
        v = _load_tile(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], offs_n, hi, offs_d, True, HEAD_DIM,
                       BLOCK_D)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        m_i = m_new

    if SPLIT:
        # a split that holds no visible key leaves m = -inf and l = 0: the merge gives it weight 0
        part = bh * n_splits + split
        tl.store(PARTIAL_M + part, m_i)
        tl.store(PARTIAL_L + part, l_i)
        tl.store(PARTIAL_ACC + part * BLOCK_D + offs_d, acc)
    else:
        empty = l_i == 0.0  # as in the forward kernel: zeros, and lse = +inf for the backward
        l_safe = tl.where(empty, 1.0, l_i)
        tl.store(O + b * stride_ob + h * stride_oh + offs_d, (acc / l_safe).to(O.dtype.element_ty),
                 mask=offs_d < HEAD_DIM)
        tl.store(LSE + bh, tl.where(empty, float("inf"), m_i + tl.log2(l_safe)))


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES)
def _attn_decode_combine_kernel(
    # pointers
    PARTIAL_ACC, PARTIAL_M, PARTIAL_L, O, LSE,
    # strides of the (batch, head) dims of o
    stride_ob, stride_oh,
    # sizes
    H, n_splits,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= n_splits
):
    """Merge the n_splits partial softmaxes of one (batch, head) row into its output and lse."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    part = bh * n_splits + offs_s
    m_s = tl.load(PARTIAL_M + part, mask=offs_s < n_splits, other=float("-inf"))  # (BLOCK_S,)
    l_s = tl.load(PARTIAL_L + part, mask=offs_s < n_splits, other=0.0)
    m = tl.max(m_s, 0)
    scale = tl.exp2(m_s - tl.where(m == float("-inf"), 0.0, m))  # 0 for splits that saw no key
    l_i = tl.sum(l_s * scale, 0)
    acc = tl.load(PARTIAL_ACC + part[:, None] * BLOCK_D + offs_d[None, :], mask=offs_s[:, None] < n_splits,
                  other=0.0)  # (BLOCK_S, BLOCK_D)
    acc = tl.sum(acc * scale[:, None], 0)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, (acc / l_safe).to(O.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
    tl.store(LSE + bh, tl.where(empty, float("inf"), m + tl.log2(l_safe)))


# ----------------------------------------------------------------------------------------------
# Backward


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES)
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
    as (BLOCK_N, BLOCK_D) without transposing the accumulators. Masked runs are not pipelined (see
    _attn_fwd_inner)."""
    for start_m in tl.range(start, end, BLOCK_M, num_stages=1 if MASKED else None):
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


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES + ["KEY_START"])
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
    tq_bucket,  # read only by the autotuner
    # scales
    qk_scale, sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
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
    key_lo = _row_start(KEY_START, b)

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
    """Add to dq of one query tile the part from the key tiles starting in [start, end); masked runs
    are not pipelined (see _attn_fwd_inner)."""
    for start_n in tl.range(start, end, BLOCK_N, num_stages=1 if MASKED else None):
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


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=_SIZES + ["KEY_START"])
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
    tq_bucket,  # read only by the autotuner
    # scales
    qk_scale, sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
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
    key_lo = _row_start(KEY_START, b)
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


if _INTERPRET:
    # The interpreter runs every program in numpy: one small tile keeps the CPU tests quick while
    # short test sequences still span several tiles, with both masked and unmasked ones.
    _TILES = {kernel: {64: [(16, 16, 1, 1)], 128: [(16, 16, 1, 1)], "fp32": [(16, 16, 1, 1)]}
              for kernel in ("fwd", "dkdv", "dq")}
    _HOPPER_TILES = {kernel: {} for kernel in _TILES}
else:
    # Candidates timed by triton.autotune, for 16-bit inputs at head dims up to 64 and up to 128, and for
    # fp32 inputs, whose exact fp32 dots run on the FMA units with their operands in registers (only
    # small tiles fit). benchmarks/kernel_compile.py compiles the 16-bit ones for sm_80 and sm_90a, the
    # Hopper ones for sm_90a: none spills registers.
    _TILES = {
        "fwd": {
            64: [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (16, 64, 4, 3)],
            128: [(128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3), (32, 32, 4, 3)],
            "fp32": [(32, 16, 8, 1), (16, 16, 4, 1)],
        },
        "dkdv": {  # BLOCK_N keys own dk and dv, two fp32 (BLOCK_N, D) accumulators: 8 warps for the large tiles
            64: [(32, 128, 8, 3), (64, 128, 8, 3), (16, 64, 4, 2)],
            128: [(32, 64, 8, 3), (16, 128, 8, 3), (16, 64, 4, 2)],
            "fp32": [(16, 32, 8, 1), (16, 16, 4, 1)],
        },
        "dq": {
            64: [(128, 32, 4, 3), (128, 32, 8, 3), (16, 64, 4, 2)],
            128: [(128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 8, 3), (16, 64, 4, 2)],
            "fp32": [(32, 16, 8, 1), (16, 16, 4, 1)],
        },
    }
    # Tiles that fit Hopper's registers (wgmma keeps its accumulators there, A100's mma.sync needs more
    # around them) and spill on sm_80: tried only on compute capability 9.0 and later.
    _HOPPER_TILES = {
        "fwd": {64: [(128, 128, 8, 2)], 128: [(128, 64, 8, 3)]},
        "dkdv": {64: [(64, 64, 4, 3)], 128: [(32, 128, 8, 3)]},
        "dq": {64: [(128, 64, 8, 3), (64, 64, 4, 3)], 128: [(128, 64, 8, 3)]},
    }


def _autotune_configs(kernel, block_d, dot_precision, capability):
    """The configs the autotuner may pick for one kernel ("fwd", "dkdv", "dq") at a head dim of BLOCK_D,
    on a GPU of this compute capability (90 for sm_90); DOT_PRECISION is "ieee" for fp32 inputs."""
    size = "fp32" if dot_precision == "ieee" else 64 if block_d <= 64 else 128
    hopper = _HOPPER_TILES[kernel].get(size, []) if capability >= 90 else []
    return _configs(_TILES[kernel][size] + hopper)


@functools.lru_cache(maxsize=None)
def _capability(device):
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _pruner(kernel):
    def prune(configs, named_args, **kwargs):
        """The configs meant for these inputs and this GPU, less the tiles taller or wider than the
        (bucketed) sequence: a prefill of 20 tokens only tries tiles of 16 or 32."""
        capability = 0 if _INTERPRET else _capability(named_args["Q"].device)
        ours = _autotune_configs(kernel, kwargs["BLOCK_D"], kwargs["DOT_PRECISION"], capability)
        fit = [c for c in ours if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= max(16, named_args["tq_bucket"])]
        return fit or [min(ours, key=lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]))]
    return prune


def _autotuned(kernel, fn):
    """fn timed over its configs once per key. The key: Tq in powers of two, because short sequences
    want short tiles; not Tk, so that a prefill over a growing cache never re-tunes."""
    every = _configs(sorted({t for table in (_TILES, _HOPPER_TILES) for tiles in table[kernel].values()
                             for t in tiles}, reverse=True))
    return triton.autotune(every, key=["tq_bucket", "HEAD_DIM", "CAUSAL"],  # and the dtypes, which Triton adds
                           prune_configs_by={"early_config_prune": _pruner(kernel)})(fn)


_attn_fwd = _autotuned("fwd", _attn_fwd_kernel)
_attn_bwd_dkdv = _autotuned("dkdv", _attn_bwd_dkdv_kernel)
_attn_bwd_dq = _autotuned("dq", _attn_bwd_dq_kernel)

# A decode step is one matrix-vector product per row, bound by reading K and V: a fixed config, no tuning.
_DECODE_CONFIG = triton.Config({"BLOCK_N": 16 if _INTERPRET else 64}, num_warps=1 if _INTERPRET else 4,
                               num_stages=1 if _INTERPRET else 3)
_DECODE_MAX_SPLITS = 64  # BLOCK_S of the merge: one program reads every split of a row
_DECODE_COMBINE_CONFIG = triton.Config({"BLOCK_S": _DECODE_MAX_SPLITS}, num_warps=1 if _INTERPRET else 4,
                                       num_stages=1)
# Keys split over programs until each SM has about two programs, each with at least this many key tiles
# (under the interpreter one tile, so that short test sequences take the split path).
_DECODE_MIN_TILES_PER_SPLIT = 1 if _INTERPRET else 4
_PREPROCESS_BLOCK_M = 16 if _INTERPRET else 64


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


def _is_aligned(x):
    """Laid out as the kernels are compiled for: a 16-byte-aligned start, a contiguous head dim and
    every other stride a multiple of 16 elements (so that rows load as 16-byte vectors)."""
    return x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in x.stride()[:-1])


def _empty_aligned(shape, dtype, device):
    """An uninitialized (..., D) tensor laid out as _is_aligned asks: the head dim padded to a multiple of 16."""
    D = shape[-1]
    return torch.empty(*shape[:-1], -(-D // 16) * 16, dtype=dtype, device=device)[..., :D]


def _aligned(x):
    """x itself, or a copy of it laid out as _is_aligned asks (only layouts the model never passes)."""
    return x if _is_aligned(x) else _empty_aligned(x.shape, x.dtype, x.device).copy_(x)


def _empty_like(x):
    """torch.empty_like(x), or an aligned tensor where x's layout is not."""
    y = torch.empty_like(x)
    return y if _is_aligned(y) else _empty_aligned(x.shape, x.dtype, x.device)


_ZEROS = {}  # device -> an int32 buffer of zeros, grown as needed


def _row_starts(key_start, B, device):
    """key_start as the kernels read it, a contiguous int tensor; for None, zeros (no padding), sliced from
    a buffer kept per device so that an unpadded batch costs no allocation and no launch. One compiled
    kernel then serves padded and unpadded batches."""
    if key_start is None:
        zeros = _ZEROS.get(device)
        if zeros is None or zeros.numel() < B:
            zeros = _ZEROS[device] = torch.zeros(max(B, 256), dtype=torch.int32, device=device)
        return zeros[:B]
    return key_start.contiguous()


def _meta(q):
    """The compile-time switches every kernel takes."""
    D = q.shape[3]
    return dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        # fp32 inputs get exact fp32 dots, like torch's matmul default (tf32 would cost ~1e-3
        # relative error); fp16 and bf16 inputs take the default, tensor cores with fp32 sums
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
    )


@functools.lru_cache(maxsize=None)
def _sm_count(device):
    """Streaming multiprocessors of the GPU (a few under the interpreter, so that tests split the keys)."""
    return 4 if _INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count


def _decode_splits(B, H, Tk, device):
    """(n_splits, keys_per_split) of a decode step: enough programs per (batch, head) row to give
    every SM about two, each program at least _DECODE_MIN_TILES_PER_SPLIT tiles of keys. Computed from
    shapes alone, so that a decode step never waits on the GPU."""
    block_n = _DECODE_CONFIG.kwargs["BLOCK_N"]
    tiles = triton.cdiv(Tk, block_n)
    n_splits = min(triton.cdiv(2 * _sm_count(device), B * H), tiles // _DECODE_MIN_TILES_PER_SPLIT,
                   _DECODE_MAX_SPLITS)
    n_splits = max(n_splits, 1)
    keys_per_split = triton.cdiv(tiles, n_splits) * block_n
    return triton.cdiv(Tk, keys_per_split), keys_per_split


def _attn_decode(q, k, v, o, lse, sm_scale, key_start):
    """Fill o (B, H, 1, D) and lse (B, H, 1) for one query per row over all of its keys."""
    B, H, _, D = q.shape
    Tk = k.shape[2]
    meta = _meta(q)
    n_splits, keys_per_split = _decode_splits(B, H, Tk, q.device)
    split = n_splits > 1
    # the partials are read only when split; otherwise any fp32 tensor stands in for them
    partial_acc = torch.empty((B * H, n_splits, meta["BLOCK_D"]) if split else (1,), device=q.device,
                              dtype=torch.float32)
    partial_m = torch.empty((B * H, n_splits) if split else (1,), device=q.device, dtype=torch.float32)
    partial_l = torch.empty_like(partial_m)
    c = _DECODE_CONFIG
    _attn_decode_kernel[(n_splits, B * H)](
        q, k, v, o, lse, key_start,
        partial_acc, partial_m, partial_l,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1),
        H, Tk, n_splits, keys_per_split,
        sm_scale * math.log2(math.e),
        HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], SPLIT=split, **c.kwargs,
        num_warps=c.num_warps, num_stages=c.num_stages,
    )
    if split:
        c = _DECODE_COMBINE_CONFIG
        _attn_decode_combine_kernel[(B * H,)](
            partial_acc, partial_m, partial_l, o, lse,
            o.stride(0), o.stride(1),
            H, n_splits,
            HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], **c.kwargs,
            num_warps=c.num_warps, num_stages=c.num_stages,
        )


def _attn_forward(q, k, v, causal, sm_scale, key_start):
    """o (B, H, Tq, D) in the input dtype, lse (B, H, Tq) fp32 in base 2."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    # o is a (B, H, Tq, D) view of a (B, Tq, H, D) buffer, as SDPA returns it: the caller's
    # transpose(1, 2) back to (B, T, C) is then already contiguous
    o = _empty_aligned((B, Tq, H, D), q.dtype, q.device).transpose(1, 2)
    lse = torch.empty((B, H, Tq), device=q.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse
    if Tq == 1:
        _attn_decode(q, k, v, o, lse, sm_scale, key_start)
        return o, lse
    grid = lambda META: (triton.cdiv(Tq, META["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd[grid](
        q, k, v, o, lse, key_start,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, Tq, Tk, triton.next_power_of_2(Tq),
        sm_scale * math.log2(math.e),
        CAUSAL=causal, **_meta(q),
    )
    return o, lse


def _attn_backward(do, q, k, v, o, lse, causal, sm_scale, key_start):
    """dq, dk, dv, shaped and typed like q, k, v."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    do = _aligned(do)  # e.g. the stride-0 expand that o.sum().backward() sends
    dq, dk, dv = _empty_like(q), _empty_like(k), _empty_like(v)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    meta = _meta(q)

    delta = torch.empty_like(lse)  # (B, H, Tq) fp32
    _attn_bwd_preprocess_kernel[(triton.cdiv(Tq, _PREPROCESS_BLOCK_M), B * H)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, Tq,
        HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=_PREPROCESS_BLOCK_M,
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
        H, Tq, Tk, triton.next_power_of_2(Tq),
        sm_scale * math.log2(math.e), sm_scale,
        CAUSAL=causal, **meta,
    )
    grid = lambda META: (triton.cdiv(Tq, META["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_dq[grid](
        q, k, v, do, dq, lse, delta, key_start,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, Tq, Tk, triton.next_power_of_2(Tq),
        sm_scale * math.log2(math.e), sm_scale,
        CAUSAL=causal, **meta,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# autograd.Function and the public op


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, key_start):
        q, k, v = _aligned(q), _aligned(k), _aligned(v)
        key_start = _row_starts(key_start, q.shape[0], q.device)
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
    strides (a contiguous head dim, other strides multiples of 16 and 16-byte-aligned starts avoid
    a copy). The queries are the last Tq positions (bottom-right-aligned causal mask). key_start (B,)
    int: keys at positions < key_start[b] are invisible to row b (left padding). sm_scale defaults
    to 1/sqrt(D). A query that sees no key outputs zeros and gets zero gradients. Returns o
    (B, H, Tq, D) in the input dtype, stored as (B, Tq, H, D) like SDPA's output, so that
    o.transpose(1, 2) is contiguous (for D a multiple of 16)."""
    _check_inputs(q, k, v, key_start)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
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
