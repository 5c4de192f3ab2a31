"""
Per-token log-probabilities (and entropies) of targets under softmax(logits / temperature).

PPO needs log p(token) of every response token several times per step (policy, reference, old
policy) and SFT needs the same numbers as its cross-entropy. Written the obvious way,
log_softmax(logits.float()) makes an fp32 (N, V) copy of the logits, keeps it for backward and
makes another for the gradient; at N = 32k tokens and V = 128k that is 16 GB per copy.

Two ops:
- token_logprobs(logits, targets): one Triton program per row walks the vocabulary once, in
  blocks, keeping a running max m, a running sum s = sum exp(z - m) and a running
  t = sum exp(z - m) * (z - m) (z = logits / temperature). From those:
      log p(target) = z_target - m - log s,    entropy = log s - t / s.
  Only m and log s (and the entropy, when asked for) are saved, a few floats per row; backward
  walks the row again, recomputes p = exp(z - m - log s) and writes the logits gradient straight
  in the dtype of the logits.
- linear_token_logprobs(hidden, weight, targets): the same from the last hidden states and the
  lm_head weight, a chunk of tokens at a time, so the (N, V) logits never exist at once.

Conventions:
- targets == -100 (IGNORE_INDEX, the padding label of PyTorch's cross_entropy) gives logprob 0
  and no gradient through the logprob. The entropy is still computed for such rows (it does not
  depend on the target); mask it yourself if padding rows must not contribute.
- logits may hold -inf (masked vocabulary entries) as long as every row has a finite maximum;
  the entropy uses 0 * log 0 = 0 there. The -inf entries may fill whole blocks, leading ones
  included: the running max m starts at -inf and stays -inf until the row's first finite logit
  (0 stands in for it only inside the exponentials), so the max that m and log s are taken
  against is the row's true max, however far below 0 it lies.
- log-probs and entropies are fp32 whatever the input dtype.
- a target outside [0, V) that is not -100 is a ValueError. Checking costs a host-device sync, so on
  a GPU the Triton ops check only when CHECK_TARGETS_ON_GPU is set (MINIRLHF_CHECK_TARGETS=1); without
  it such a row's logprob, and its logits gradient, is NaN (the kernels read nothing out of range).

Derivation of the online entropy. With d_j = z_j - m, s = sum_j e^{d_j}, t = sum_j e^{d_j} d_j,
p_j = e^{d_j} / s and log p_j = d_j - log s:
    H = -sum_j p_j log p_j = log s - t / s.
When a new block raises the max from m to m' (delta = m - m' <= 0), every old term changes as
e^{d_j - (m' - m)} = e^{delta} e^{d_j} and d_j -> d_j + delta, so
    s' = e^{delta} s,    t' = e^{delta} (t + delta * s),
before the new block's own terms are added. Both terms of H are >= 0 (s >= 1 because the max
contributes e^0; every d_j <= 0), so H cannot come out negative by cancellation.
The kernels keep m as the max of the raw logits x and form d_j = (x_j - m) / T: the same numbers
as z_j - max z, but rounded once at the size of x_j - m instead of at the size of x_j / T.

The gradients, with z = x / T for raw logits x:
    d log p_target / d z_j = [j == target] - p_j
    d H / d z_j            = -p_j (log p_j + H)
and d/dx = (1/T) d/dz.

reference: token_logprobs_reference / linear_token_logprobs_reference are the plain-PyTorch
versions (the CPU path and the test oracle).
"""
import math
import numbers
import os

import torch
from torch.autograd.function import once_differentiable

from kernels._triton import require_triton, tl, triton

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
# Both kernels run one program per row (token) and walk the vocabulary in BLOCK_V columns.
#
# Alignment and masks: 16-byte vector loads need an address the compiler can prove 16-byte
# aligned and a mask that is constant over each 16 bytes. With an odd V (GPT-2's 50257) most
# rows start at an unaligned address, and `col < V` is no such mask. So each program walks its
# row from the ALIGN-element boundary at or below the row start (ALIGN = 16 bytes / element size),
# and splits the walk in three: the first block (it holds the `shift` columns of the row before,
# which are masked off), the middle blocks (entirely inside the row: no mask, vector loads), and
# the last block (masked at V). `col = block_start + cols - shift` is the column inside the row.
# When the row fits in one block, the "last" block starts past the row and is fully masked: a
# no-op, which saves a branch.


@triton.jit
def _online_update(x, m, s, t, inv_temperature, COMPUTE_ENTROPY: tl.constexpr):
    """Folds one block of raw logits x (fp32, -inf on masked lanes) into the running max m,
    s = sum exp(d) and t = sum exp(d) * d, where d = (x - m) / T. Returns the new (m, s, t)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # m_new is -inf while every logit seen so far is -inf, and x - m_new would then be
    # -inf - (-inf) = NaN: subtract 0 instead (s and t are still 0, so no reference point is
    # wrong). Only the subtraction uses 0; the running max itself stays -inf, because a stored 0
    # would floor the max of every later block at 0, and a row of finite logits far below 0
    # (under about -88 T) would underflow s to 0 (the verl bug, PR #7439).
    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    delta = (m - m_sub) * inv_temperature  # <= 0; -inf while m = -inf, so e^delta = 0
    alpha = tl.exp(delta)
    d = (x - m_sub) * inv_temperature  # <= 0; -inf on masked lanes, so e^d = 0 there
    e = tl.exp(d)
    if COMPUTE_ENTROPY:
        # t' = e^delta (t + delta * s). The wheres keep 0 * -inf = NaN out: delta is -inf only
        # while s = 0, and d is -inf only where e = 0
        t = alpha * (t + tl.where(s > 0.0, delta, 0.0) * s)
        t += tl.sum(e * tl.where(e > 0.0, d, 0.0), axis=0)
    s = alpha * s + tl.sum(e, axis=0)
    return m_new, s, t


# Compiled once per dtype and switches: the sizes, and the alignment of the per-row pointers (slices of
# longer tensors in the chunked op), are not specialized; the logits are always 16-byte aligned.
_PER_ROW = ["targets_ptr", "logprobs_ptr", "entropy_ptr", "row_max_ptr", "row_log_sum_ptr", "grad_logprobs_ptr",
            "grad_entropy_ptr", "stride_row", "V"]


@triton.jit(do_not_specialize=["stride_row", "V"], do_not_specialize_on_alignment=_PER_ROW)
def _token_logprobs_fwd_kernel(
    # pointers
    logits_ptr,  # (N, V), rows `stride_row` elements apart, columns contiguous
    targets_ptr,  # (N,) int32 or int64
    logprobs_ptr,  # (N,) fp32 out
    entropy_ptr,  # (N,) fp32 out, only written if COMPUTE_ENTROPY
    row_max_ptr,  # (N,) fp32 out: m, the row max of the raw logits, saved for backward
    row_log_sum_ptr,  # (N,) fp32 out: log s, saved for backward
    # strides
    stride_row,
    # sizes
    V,
    # scalars
    inv_temperature,
    # meta-parameters
    IGNORE: tl.constexpr,
    COMPUTE_ENTROPY: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: N * V overflows int32 at LLM sizes
    row_start = row * stride_row
    aligned_start = tl.multiple_of((row_start // ALIGN) * ALIGN, ALIGN)
    shift = row_start - aligned_start
    n_blocks = tl.cdiv(V + shift, BLOCK_V)
    cols = tl.arange(0, BLOCK_V)

    # The max is tracked on the raw logits (dividing by T > 0 keeps the argmax) and each
    # difference x - m is scaled afterwards: x - m is exact for nearby values, whereas x / T
    # rounds at the magnitude of x (1e4 / 0.7 already has an ulp of 1e-3).
    # m starts at -inf, not 0, and stays -inf until a finite logit comes (see _online_update):
    # with 0, a row whose logits are all far below 0 would use 0 as its "max" and underflow s
    # to 0 (the verl bug, PR #7439), whether its first logits are finite or -inf.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)

    # first block
    col = cols - shift
    x = tl.load(logits_ptr + aligned_start + cols, mask=(col >= 0) & (col < V), other=float("-inf"))
    m, s, t = _online_update(x.to(tl.float32), m, s, t, inv_temperature, COMPUTE_ENTROPY)
    # middle blocks: inside the row, unmasked
    for block_start in range(BLOCK_V, (n_blocks - 1) * BLOCK_V, BLOCK_V):
        x = tl.load(logits_ptr + aligned_start + block_start + cols)
        m, s, t = _online_update(x.to(tl.float32), m, s, t, inv_temperature, COMPUTE_ENTROPY)
    # last block
    block_start = tl.maximum(n_blocks - 1, 1) * BLOCK_V
    col = block_start + cols - shift
    x = tl.load(logits_ptr + aligned_start + block_start + cols, mask=col < V, other=float("-inf"))
    m, s, t = _online_update(x.to(tl.float32), m, s, t, inv_temperature, COMPUTE_ENTROPY)

    log_s = tl.log(s)
    target = tl.load(targets_ptr + row).to(tl.int64)
    ignored = target == IGNORE
    # a target out of [0, V) (not checked on a GPU, see CHECK_TARGETS_ON_GPU) reads nothing and gives NaN
    valid = (target >= 0) & (target < V)
    x_target = tl.load(logits_ptr + row_start + target, mask=valid, other=0.0).to(tl.float32)
    logprob = tl.where(valid, (x_target - m) * inv_temperature - log_s, float("nan"))
    tl.store(logprobs_ptr + row, tl.where(ignored, 0.0, logprob))
    if COMPUTE_ENTROPY:
        tl.store(entropy_ptr + row, log_s - t / s)
    tl.store(row_max_ptr + row, m)
    tl.store(row_log_sum_ptr + row, log_s)


@triton.jit
def _logits_grad(
    x, col, target, m, log_s, g_logprob, g_entropy, entropy, inv_temperature,
    HAS_GRAD_LOGPROBS: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr,
):
    """d(loss)/d(raw logits) of one block (fp32), from the raw logits x (-inf on masked lanes,
    which gives p = 0 there) and the row statistics of forward."""
    log_p = (x - m) * inv_temperature - log_s
    p = tl.exp(log_p)
    grad = tl.zeros(x.shape, tl.float32)
    if HAS_GRAD_LOGPROBS:
        grad += g_logprob * (tl.where(col == target, 1.0, 0.0) - p)
    if HAS_GRAD_ENTROPY:
        # p = 0 (a -inf logit) contributes nothing; without the where, 0 * -inf = NaN
        grad -= g_entropy * p * tl.where(p > 0.0, log_p + entropy, 0.0)
    return grad * inv_temperature


@triton.jit(do_not_specialize=["stride_row", "V"], do_not_specialize_on_alignment=_PER_ROW)
def _token_logprobs_bwd_kernel(
    # pointers
    logits_ptr,  # (N, V) as in forward
    grad_logits_ptr,  # (N, V) out, same layout as logits; may be logits_ptr itself (in place)
    targets_ptr,  # (N,)
    row_max_ptr,  # (N,) from forward
    row_log_sum_ptr,  # (N,) from forward
    entropy_ptr,  # (N,) from forward, only read if HAS_GRAD_ENTROPY
    grad_logprobs_ptr,  # (N,) fp32 upstream gradient, only read if HAS_GRAD_LOGPROBS
    grad_entropy_ptr,  # (N,) fp32 upstream gradient, only read if HAS_GRAD_ENTROPY
    # strides
    stride_row,
    # sizes
    V,
    # scalars
    inv_temperature,
    # meta-parameters
    IGNORE: tl.constexpr,
    HAS_GRAD_LOGPROBS: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_start = row * stride_row
    aligned_start = tl.multiple_of((row_start // ALIGN) * ALIGN, ALIGN)
    shift = row_start - aligned_start
    n_blocks = tl.cdiv(V + shift, BLOCK_V)
    cols = tl.arange(0, BLOCK_V)
    grad_dtype = grad_logits_ptr.dtype.element_ty

    m = tl.load(row_max_ptr + row)
    log_s = tl.load(row_log_sum_ptr + row)
    target = tl.load(targets_ptr + row).to(tl.int64)
    g_logprob = 0.0
    g_entropy = 0.0
    entropy = 0.0
    if HAS_GRAD_LOGPROBS:
        # an ignored row's logprob is the constant 0: no gradient flows through it; a row whose target
        # is out of range gets NaN, as its logprob did
        g_logprob = tl.load(grad_logprobs_ptr + row)
        g_logprob = tl.where((target >= 0) & (target < V), g_logprob, float("nan"))
        g_logprob = tl.where(target == IGNORE, 0.0, g_logprob)
    if HAS_GRAD_ENTROPY:
        g_entropy = tl.load(grad_entropy_ptr + row)
        entropy = tl.load(entropy_ptr + row)

    # first block; its mask also keeps the stores off the previous row
    col = cols - shift
    mask = (col >= 0) & (col < V)
    x = tl.load(logits_ptr + aligned_start + cols, mask=mask, other=float("-inf")).to(tl.float32)
    grad = _logits_grad(x, col, target, m, log_s, g_logprob, g_entropy, entropy, inv_temperature,
                        HAS_GRAD_LOGPROBS, HAS_GRAD_ENTROPY)
    tl.store(grad_logits_ptr + aligned_start + cols, grad.to(grad_dtype), mask=mask)
    # middle blocks: inside the row, unmasked
    for block_start in range(BLOCK_V, (n_blocks - 1) * BLOCK_V, BLOCK_V):
        col = block_start + cols - shift
        x = tl.load(logits_ptr + aligned_start + block_start + cols).to(tl.float32)
        grad = _logits_grad(x, col, target, m, log_s, g_logprob, g_entropy, entropy, inv_temperature,
                            HAS_GRAD_LOGPROBS, HAS_GRAD_ENTROPY)
        tl.store(grad_logits_ptr + aligned_start + block_start + cols, grad.to(grad_dtype))
    # last block
    block_start = tl.maximum(n_blocks - 1, 1) * BLOCK_V
    col = block_start + cols - shift
    mask = col < V
    x = tl.load(logits_ptr + aligned_start + block_start + cols, mask=mask, other=float("-inf")).to(tl.float32)
    grad = _logits_grad(x, col, target, m, log_s, g_logprob, g_entropy, entropy, inv_temperature,
                        HAS_GRAD_LOGPROBS, HAS_GRAD_ENTROPY)
    tl.store(grad_logits_ptr + aligned_start + block_start + cols, grad.to(grad_dtype), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers: check inputs, pick block sizes, launch
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TARGET_DTYPES = (torch.int64, torch.int32)


def _interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_config(V):
    """(BLOCK_V, num_warps). On the GPU 4096 columns a step and 8 warps: each thread holds 16
    fp32 values, loads bf16 in 16-byte vectors, and a 128k vocabulary takes 32 steps.
    Under the CPU interpreter every op costs Python overhead per step, but the tests should
    still cross several blocks, so the block is moderate there.
    BLOCK_V must be >= ALIGN (<= 8) so that the first block covers the `shift` columns."""
    if _interpreting():
        return max(min(triton.next_power_of_2(V), 512), 16), 1
    block_v = max(min(triton.next_power_of_2(V), 4096), 128)
    return block_v, (8 if block_v >= 2048 else 4)


def _check_temperature(temperature):
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_targets(targets, batch_shape, device):
    if targets.dtype not in _TARGET_DTYPES:
        raise ValueError(f"targets must be int64 or int32, got {targets.dtype}")
    if targets.shape != batch_shape:
        raise ValueError(f"targets have shape {tuple(targets.shape)}, expected {tuple(batch_shape)}")
    if targets.device != device:
        raise ValueError(f"targets are on {targets.device}, the other inputs on {device}")


# Out-of-range targets are refused with a ValueError, which costs a host-device sync (the targets' min
# and max are read back). The references and the CPU check always; the Triton ops on a GPU only when
# this is set (MINIRLHF_CHECK_TARGETS=1 in the environment), and otherwise give NaN for such a target.
CHECK_TARGETS_ON_GPU = os.environ.get("MINIRLHF_CHECK_TARGETS", "0") == "1"


def _check_targets_in_range(targets, V):
    """Every target in [0, V) or IGNORE_INDEX. One min/max reduction and one device sync."""
    if targets.numel() == 0:
        return
    lo, hi = torch.aminmax(targets.masked_fill(targets == IGNORE_INDEX, 0))
    lo, hi = torch.stack([lo, hi]).tolist()
    if lo < 0 or hi >= V:
        bad = lo if lo < 0 else hi
        raise ValueError(f"target {bad} is out of range: targets must be in [0, {V}) or {IGNORE_INDEX}")


def _check_logprobs_inputs(logits, targets, temperature, check_range=True):
    if not isinstance(logits, torch.Tensor) or logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits must be an fp32, fp16 or bf16 tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    _check_targets(targets, logits.shape[:-1], logits.device)
    _check_temperature(temperature)
    if check_range:
        _check_targets_in_range(targets, logits.shape[-1])


def _check_range(tensor):
    """Whether a Triton op checks its targets' range (see CHECK_TARGETS_ON_GPU)."""
    return tensor.device.type != "cuda" or CHECK_TARGETS_ON_GPU


def _check_linear_inputs(hidden, weight, targets, temperature, check_range=True):
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"hidden must be an fp32, fp16 or bf16 tensor, got {getattr(hidden, 'dtype', type(hidden))}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] < 1:
        raise ValueError(f"weight must be a (V, C) tensor with V >= 1, got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}; they must match")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be (..., C) with C = weight.shape[1] = {weight.shape[1]}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device}, hidden on {hidden.device}")
    _check_targets(targets, hidden.shape[:-1], hidden.device)
    _check_temperature(temperature)
    if check_range:
        _check_targets_in_range(targets, weight.shape[0])


def _check_triton_device(tensor, op_name):
    require_triton(op_name, f"{op_name}_reference")
    if tensor.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"{op_name} runs a Triton kernel and needs CUDA tensors, got a tensor on {tensor.device}. "
            f"On the CPU use {op_name}_reference (or set TRITON_INTERPRET=1 before importing triton)."
        )


def _logprobs_forward(logits, targets, temperature, compute_entropy):
    """logits (N, V) with contiguous columns, targets (N,). Returns fp32 (N,) tensors
    logprobs, entropy (None unless compute_entropy), row_max, row_log_sum."""
    N, V = logits.shape
    logprobs = torch.empty(N, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(N, dtype=torch.float32, device=logits.device) if compute_entropy else None
    row_max = torch.empty(N, dtype=torch.float32, device=logits.device)
    row_log_sum = torch.empty(N, dtype=torch.float32, device=logits.device)
    _launch_forward(logits, targets, logprobs, entropy, row_max, row_log_sum, temperature)
    return logprobs, entropy, row_max, row_log_sum


def _launch_forward(logits, targets, logprobs, entropy, row_max, row_log_sum, temperature):
    """Fills the (N,) outputs, which may be slices of longer tensors (the chunked linear op
    writes each chunk's rows in place). entropy None: not computed."""
    N, V = logits.shape
    if N == 0:
        return
    block_v, num_warps = _block_config(V)
    # without COMPUTE_ENTROPY the entropy pointer is never written: any fp32 tensor will do
    _token_logprobs_fwd_kernel[(N,)](
        logits, targets, logprobs, entropy if entropy is not None else logprobs, row_max, row_log_sum,
        logits.stride(0),
        V,
        1.0 / temperature,
        IGNORE=IGNORE_INDEX,
        COMPUTE_ENTROPY=entropy is not None,
        ALIGN=16 // logits.element_size(),
        BLOCK_V=block_v,
        num_warps=num_warps,
    )


def _launch_backward(logits, grad_logits, targets, row_max, row_log_sum, entropy, grad_logprobs, grad_entropy,
                     temperature):
    """Writes d(loss)/d(logits) into grad_logits (N, V), which has the layout of logits and may
    be logits itself. grad_logprobs / grad_entropy: (N,) upstream gradients or None (unused)."""
    N, V = logits.shape
    if N == 0:
        return
    # the upstream gradient of a .sum() is an expanded (stride 0) tensor: the kernel wants rows
    if grad_logprobs is not None:
        grad_logprobs = grad_logprobs.float().contiguous()
    if grad_entropy is not None:
        grad_entropy = grad_entropy.float().contiguous()
    block_v, num_warps = _block_config(V)
    # pointers the kernel does not read (its HAS_* flag is off) are given any fp32 tensor
    _token_logprobs_bwd_kernel[(N,)](
        logits, grad_logits, targets, row_max, row_log_sum,
        entropy if grad_entropy is not None else row_max,
        grad_logprobs if grad_logprobs is not None else row_max,
        grad_entropy if grad_entropy is not None else row_max,
        logits.stride(0),
        V,
        1.0 / temperature,
        IGNORE=IGNORE_INDEX,
        HAS_GRAD_LOGPROBS=grad_logprobs is not None,
        HAS_GRAD_ENTROPY=grad_entropy is not None,
        ALIGN=16 // logits.element_size(),
        BLOCK_V=block_v,
        num_warps=num_warps,
    )


# ----------------------------------------------------------------------------------------------
# autograd.Functions
# ----------------------------------------------------------------------------------------------


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, return_entropy):
        # logits (N, V) row-major, targets (N,)
        logprobs, entropy, row_max, row_log_sum = _logprobs_forward(logits, targets, temperature, return_entropy)
        ctx.save_for_backward(logits, targets, row_max, row_log_sum, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: skip its work
        return (logprobs, entropy) if return_entropy else logprobs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy=None):
        logits, targets, row_max, row_log_sum, entropy = ctx.saved_tensors
        if grad_logprobs is None and grad_entropy is None:
            return None, None, None, None
        # a fresh tensor, not the logits: the caller may still need its logits
        grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        _launch_backward(
            logits, grad_logits, targets, row_max, row_log_sum, entropy, grad_logprobs, grad_entropy, ctx.temperature
        )
        return grad_logits, None, None, None


def _default_chunk_size(N):
    """Tokens per chunk in linear_token_logprobs: a tenth of N rounded down to a multiple of
    128 (matmul tiles), so that the chunk of logits costs <= 10% of the (N, V) logits it
    replaces; but at least 512 (so the 10% holds from N = 5120 up). Every chunk re-reads the
    (V, C) weight and re-writes grad_weight: a chunk of n tokens does n FLOPs per weight byte
    (n / 2 per grad_weight byte read and written), and below n = 512 that drops under the
    ~300 FLOPs/byte at which an H100's bf16 matmuls stop being memory-bound.
    N = 8k, 16k, 32k give chunks of 768, 1536, 3200 tokens."""
    return min(N, max(512, (N // 10) // 128 * 128))


class _LinearTokenLogprobs(torch.autograd.Function):
    """Chunked over tokens. Forward: for each chunk, logits_chunk = hidden_chunk @ weight.T,
    then the forward kernel; only 3 floats per token are kept (m, log s, entropy).
    Backward recomputes each chunk's logits (one extra matmul, i.e. 4 lm_head matmuls instead
    of 3), has the backward kernel overwrite them with their gradient, and multiplies out
    grad_hidden_chunk = grad_logits_chunk @ weight and grad_weight += grad_logits_chunk.T @ hidden_chunk.

    Why recompute instead of computing the gradient in forward (as fused cross-entropy
    kernels do): those kernels reduce to a scalar loss whose upstream gradient is one number.
    Here the outputs are per token and their upstream gradients (advantages, KL terms, masks)
    are only known in backward; grad_weight = sum_i g_i * a_i h_i^T cannot be formed without
    them. The price is the recompute matmul; the gain is that nothing of size (N, V) or even
    (N, C) beyond the inputs lives between forward and backward.

    grad_weight accumulates over chunks in the weight's dtype (fp32 accumulation inside each
    matmul, one rounding per chunk): an fp32 accumulator would cost V * C * 4 bytes, which at
    C = 4096 is half the size of the bf16 logits of 8k tokens."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, return_entropy, chunk_size):
        # hidden (N, C), weight (V, C), targets (N,)
        N, V = hidden.shape[0], weight.shape[0]
        device = hidden.device
        logprobs = torch.empty(N, dtype=torch.float32, device=device)
        entropy = torch.empty(N, dtype=torch.float32, device=device) if return_entropy else None
        row_max = torch.empty(N, dtype=torch.float32, device=device)
        row_log_sum = torch.empty(N, dtype=torch.float32, device=device)
        if N > 0:
            logits = torch.empty(min(chunk_size, N), V, dtype=hidden.dtype, device=device)  # reused by every chunk
            for start in range(0, N, chunk_size):
                end = min(start + chunk_size, N)
                logits_chunk = logits[: end - start]  # (n, V)
                torch.mm(hidden[start:end], weight.t(), out=logits_chunk)
                _launch_forward(
                    logits_chunk, targets[start:end], logprobs[start:end],
                    entropy[start:end] if return_entropy else None,
                    row_max[start:end], row_log_sum[start:end], temperature,
                )
        ctx.save_for_backward(hidden, weight, targets, row_max, row_log_sum, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return (logprobs, entropy) if return_entropy else logprobs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy=None):
        hidden, weight, targets, row_max, row_log_sum, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logprobs is None and grad_entropy is None) or not (need_hidden or need_weight):
            return None, None, None, None, None, None
        N, V = hidden.shape[0], weight.shape[0]
        chunk_size = ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        if N > 0:
            logits = torch.empty(min(chunk_size, N), V, dtype=hidden.dtype, device=hidden.device)
            for start in range(0, N, chunk_size):
                end = min(start + chunk_size, N)
                hidden_chunk, logits_chunk = hidden[start:end], logits[: end - start]  # (n, C), (n, V)
                torch.mm(hidden_chunk, weight.t(), out=logits_chunk)  # recompute
                _launch_backward(
                    logits_chunk, logits_chunk, targets[start:end], row_max[start:end], row_log_sum[start:end],
                    entropy[start:end] if entropy is not None else None,
                    grad_logprobs[start:end] if grad_logprobs is not None else None,
                    grad_entropy[start:end] if grad_entropy is not None else None,
                    ctx.temperature,
                )  # logits_chunk now holds d(loss)/d(logits_chunk)
                if need_hidden:
                    torch.mm(logits_chunk, weight, out=grad_hidden[start:end])  # (n, V) @ (V, C)
                if need_weight:
                    grad_weight.addmm_(logits_chunk.t(), hidden_chunk)  # (V, n) @ (n, C)
        return grad_hidden, grad_weight, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------


def token_logprobs(logits, targets, *, temperature=1.0, return_entropy=False):
    """log p(targets | logits / temperature) for logits (..., V) in fp32/fp16/bf16 and integer
    targets (...) in [0, V) or -100. Returns fp32 logprobs (...), 0 where the target is -100;
    with return_entropy, a tuple (logprobs, entropy) with the fp32 entropy (...) of the tempered
    distribution of every row (ignored rows included). Differentiable w.r.t. logits.
    A layout whose rows cannot be viewed as (N, V) with contiguous columns is copied first."""
    _check_logprobs_inputs(logits, targets, temperature, check_range=_check_range(logits))
    _check_triton_device(logits, "token_logprobs")
    V = logits.shape[-1]
    logits_2d = logits.reshape(-1, V).contiguous()  # (N, V)
    if logits_2d.data_ptr() % 16:  # a view at an odd offset: the kernels read from a 16-byte-aligned start
        logits_2d = logits_2d.clone()
    out = _TokenLogprobs.apply(logits_2d, targets.reshape(-1).contiguous(), float(temperature), return_entropy)
    if return_entropy:
        return out[0].view(targets.shape), out[1].view(targets.shape)
    return out.view(targets.shape)


def linear_token_logprobs(hidden, weight, targets, *, temperature=1.0, return_entropy=False, chunk_size=None):
    """token_logprobs(hidden @ weight.T, targets) without the (N, V) logits: hidden (..., C) and
    the lm_head weight (V, C) of the same dtype, targets (...). Same outputs and conventions as
    token_logprobs; differentiable w.r.t. hidden and weight. The logits are formed in the dtype of
    hidden (as the lm_head would), chunk_size tokens at a time (default: _default_chunk_size).
    Memory: one (chunk_size, V) block of logits plus 3 floats per token, instead of (N, V) logits
    and their fp32 copies. Time: 4 lm_head matmuls instead of 3, since backward recomputes each
    chunk's logits (see _LinearTokenLogprobs). grad_weight is summed over chunks in the weight's
    dtype. No bias (GPT-2's lm_head has none); not autocast-aware: pass hidden and weight in the
    dtype you want the matmuls in."""
    _check_linear_inputs(hidden, weight, targets, temperature, check_range=_check_range(hidden))
    _check_triton_device(hidden, "linear_token_logprobs")
    hidden_2d = hidden.reshape(-1, hidden.shape[-1]).contiguous()  # (N, C)
    if chunk_size is None:
        chunk_size = _default_chunk_size(hidden_2d.shape[0])
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    out = _LinearTokenLogprobs.apply(
        hidden_2d, weight, targets.reshape(-1).contiguous(), float(temperature), return_entropy, chunk_size
    )
    if return_entropy:
        return out[0].view(targets.shape), out[1].view(targets.shape)
    return out.view(targets.shape)


# ----------------------------------------------------------------------------------------------
# References: plain PyTorch, fp32 math. The CPU path and the test oracle.
# ----------------------------------------------------------------------------------------------


def token_logprobs_reference(logits, targets, *, temperature=1.0, return_entropy=False):
    """Same contract as token_logprobs, via an fp32 log_softmax of the whole (..., V) logits."""
    _check_logprobs_inputs(logits, targets, temperature)
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., V) fp32
    ignored = targets == IGNORE_INDEX
    safe_targets = targets.masked_fill(ignored, 0).long()
    logprobs = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1).masked_fill(ignored, 0.0)
    if not return_entropy:
        return logprobs
    probs = log_probs.exp()
    # 0 * log 0 = 0 for -inf logits; filling log p (not the product) keeps the gradient NaN-free
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    return logprobs, entropy


def linear_token_logprobs_reference(hidden, weight, targets, *, temperature=1.0, return_entropy=False):
    """Same contract as linear_token_logprobs, by materializing hidden @ weight.T (in the dtype of
    hidden, as the lm_head would) and calling token_logprobs_reference."""
    _check_linear_inputs(hidden, weight, targets, temperature)
    logits = hidden @ weight.t()  # (..., V)
    return token_logprobs_reference(logits, targets, temperature=temperature, return_entropy=return_entropy)
