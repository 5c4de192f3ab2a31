"""
kernels/logprobs.py: the Triton ops against their plain-PyTorch references, and the properties
every log-prob must have (logprob <= 0, entropy in [0, log V], shift invariance, gradient rows
summing to 0, ignored rows inert).

On the CPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET),
which is slow: shapes and example counts are small there and larger on a GPU.
"""
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.logprobs
from kernels.logprobs import (
    IGNORE_INDEX,
    linear_token_logprobs,
    linear_token_logprobs_reference,
    token_logprobs,
    token_logprobs_reference,
)

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
QUICK = os.environ.get("KERNEL_TESTS_QUICK") == "1"  # benchmarks/gpu.py's short GPU window: fewer examples
MAX_N = 96 if ON_CUDA else 8
MAX_V = 70_000 if ON_CUDA else 3_000
EXAMPLES = 10 if QUICK else 60 if ON_CUDA else 12
BLOCK_V = 4096 if ON_CUDA else 512  # the kernels' largest block (kernels.logprobs._block_config)
# vocabularies that fit one block, of any size, and just past block boundaries (so that a row
# has a masked first block, unmasked middle blocks and a masked last block)
VOCABS = st.one_of(
    st.integers(1, 40), st.integers(41, MAX_V), st.sampled_from([BLOCK_V + 1, 2 * BLOCK_V + 7, 4 * BLOCK_V + 3, MAX_V])
)

# (dtype, atol, rtol) of a logits gradient, which is stored in the dtype of the logits. The
# log-probs and entropies are fp32 on both sides and use the fp32 row.
# bf16 only on the GPU: the interpreter's fp32 -> bf16 conversion is not the GPU's.
FP32 = (torch.float32, 1e-5, 1e-5)
DTYPES = [
    pytest.param(*FP32, id="fp32"),
    pytest.param(torch.float16, 1e-3, 2e-3, id="fp16"),
] + ([pytest.param(torch.bfloat16, 8e-3, 2e-2, id="bf16")] if ON_CUDA else [])

# kinds of logits rows; "shifted_negative" and "all_negative" are the rows the verl bug broke
# "ascending" raises the running max in every block
LOGIT_KINDS = ["normal", "large", "extreme", "shifted_positive", "shifted_negative", "all_negative", "ties", "neg_inf",
               "ascending"]


def make_logits(kind, N, V, dtype, gen):
    x = torch.randn(N, V, generator=gen)
    if kind == "large":
        x = x * 30
    elif kind == "extreme":  # a mix of +-1e4 and ordinary values
        pick = torch.rand(N, V, generator=gen)
        x = torch.where(pick < 0.15, torch.full_like(x, 1e4), torch.where(pick < 0.3, torch.full_like(x, -1e4), x))
    elif kind == "shifted_positive":
        x = x * 3 + 5e3
    elif kind == "shifted_negative":
        x = x * 3 - 1e4
    elif kind == "all_negative":  # spread over [-2e4, -1e3]
        x = -1e3 - 1.9e4 * torch.rand(N, V, generator=gen)
    elif kind == "ties":  # every logit equal: the uniform distribution
        x = torch.full((N, V), 2.5)
    elif kind == "ascending":
        x = 3 * x.sort(dim=-1).values
    elif kind == "neg_inf":  # masked vocabulary entries; column 0 stays finite in every row
        x = x.masked_fill(torch.rand(N, V, generator=gen) < 0.3, float("-inf"))
        x[:, 0] = torch.randn(N, generator=gen)
    return x.to(dtype).to(DEVICE)


def make_targets(N, V, ignore_fraction, gen):
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[torch.rand(N, generator=gen) < ignore_fraction] = IGNORE_INDEX
    return targets.to(DEVICE)


def reference_slack(logits, temperature):
    """The reference divides before subtracting the max, so its z = x / T carries a rounding
    error of ~ulp(|z|); on rows like 1e4 + small this dominates the fp32 tolerance."""
    finite = logits.float()[torch.isfinite(logits.float())]
    scale = finite.abs().max().item() / temperature if finite.numel() else 0.0
    return 4 * torch.finfo(torch.float32).eps * scale


def assert_close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=False, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------------
# token_logprobs == token_logprobs_reference, outputs and gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@settings(max_examples=EXAMPLES)
@given(
    N=st.integers(1, MAX_N),
    V=VOCABS,
    kind=st.sampled_from(LOGIT_KINDS),
    temperature=st.sampled_from([1.0, 0.7, 0.25, 2.5]),
    ignore_fraction=st.sampled_from([0.0, 0.3, 1.0]),
    uses=st.sampled_from(["logprobs", "entropy", "both"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_token_logprobs_matches_reference(dtype, atol, rtol, N, V, kind, temperature, ignore_fraction, uses, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = make_logits(kind, N, V, dtype, gen)
    targets = make_targets(N, V, ignore_fraction, gen)
    return_entropy = uses != "logprobs"

    results = []
    for op in (token_logprobs, token_logprobs_reference):
        x = logits.clone().requires_grad_()
        out = op(x, targets, temperature=temperature, return_entropy=return_entropy)
        logprobs, entropy = out if return_entropy else (out, None)
        results.append((x, logprobs, entropy))
    (x, logprobs, entropy), (x_ref, logprobs_ref, entropy_ref) = results

    slack = reference_slack(logits, temperature)
    assert logprobs.dtype == torch.float32 and logprobs.shape == (N,)
    assert_close(logprobs, logprobs_ref, FP32[1] + slack, FP32[2], "logprobs")
    if return_entropy:
        assert entropy.dtype == torch.float32 and entropy.shape == (N,)
        assert_close(entropy, entropy_ref, FP32[1] + slack * (1 + math.log(V)), FP32[2], "entropy")

    # random upstream gradients, as PPO's per-token advantages and entropy coefficients would be
    outputs, outputs_ref, grads = [], [], []
    if uses in ("logprobs", "both"):
        outputs.append(logprobs), outputs_ref.append(logprobs_ref)
        grads.append(torch.randn(N, generator=gen).to(DEVICE))
    if uses in ("entropy", "both"):
        outputs.append(entropy), outputs_ref.append(entropy_ref)
        grads.append(torch.randn(N, generator=gen).to(DEVICE))
    (grad,) = torch.autograd.grad(outputs, x, grads)
    (grad_ref,) = torch.autograd.grad(outputs_ref, x_ref, grads)
    assert grad.dtype == dtype
    g_max = max(g.abs().max().item() for g in grads)
    assert_close(grad, grad_ref, atol + slack * g_max / temperature * math.log(V + 1), rtol, "logits grad")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_max_moving_between_blocks(dtype, atol, rtol):
    # the online max, sum and entropy terms are rescaled whenever a later block raises the max
    gen = torch.Generator().manual_seed(4)
    V = 3 * BLOCK_V + 5
    x = torch.randn(4, V, generator=gen)
    x[0] = torch.linspace(-6, 6, V)  # raised in every block
    x[1, -1] = 9.0  # in the last (masked) block
    x[2, 0] = 9.0  # in the first block: never rescaled
    x[3, V // 2] = 9.0  # in a middle block
    logits = x.to(dtype).to(DEVICE)
    targets = torch.tensor([V - 1, 0, V // 2, 1], device=DEVICE)
    grads = [torch.randn(4, generator=gen).to(DEVICE) for _ in range(2)]
    results = []
    for op in (token_logprobs, token_logprobs_reference):
        x = logits.clone().requires_grad_()
        logprobs, entropy = op(x, targets, temperature=0.8, return_entropy=True)
        results.append((logprobs, entropy, *torch.autograd.grad([logprobs, entropy], x, grads)))
    for name, actual, expected in zip(["logprobs", "entropy"], results[0][:2], results[1][:2]):
        assert_close(actual, expected, 1e-5, 1e-5, name)
    assert_close(results[0][2], results[1][2], atol, rtol, "logits grad")


def test_token_logprobs_leading_dims_and_int32_targets():
    gen = torch.Generator().manual_seed(0)
    B, T, V = 2, 3, 37
    logits = torch.randn(B, T, V, generator=gen).to(DEVICE).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen).to(DEVICE)
    logprobs, entropy = token_logprobs(logits, targets.int(), temperature=0.7, return_entropy=True)
    logprobs_ref, entropy_ref = token_logprobs_reference(logits, targets, temperature=0.7, return_entropy=True)
    assert logprobs.shape == entropy.shape == (B, T)
    assert_close(logprobs, logprobs_ref, 1e-5, 1e-5, "logprobs")
    assert_close(entropy, entropy_ref, 1e-5, 1e-5, "entropy")
    (grad,) = torch.autograd.grad(logprobs.sum(), logits)  # a .sum() hands back a stride-0 gradient
    (grad_ref,) = torch.autograd.grad(logprobs_ref.sum(), logits)
    assert_close(grad, grad_ref, 1e-5, 1e-5, "logits grad")


def test_token_logprobs_non_contiguous_logits():
    # logits[:, :-1] of (B, T, V): the next-token slice PPO takes
    gen = torch.Generator().manual_seed(1)
    full = torch.randn(2, 5, 23, generator=gen).to(DEVICE)
    logits = full[:, :-1]
    targets = torch.randint(0, 23, (2, 4), generator=gen).to(DEVICE)
    assert_close(token_logprobs(logits, targets), token_logprobs_reference(logits, targets), 1e-5, 1e-5, "logprobs")


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@settings(max_examples=EXAMPLES)
@given(
    N=st.integers(1, MAX_N),
    V=VOCABS,
    kind=st.sampled_from([k for k in LOGIT_KINDS if k != "neg_inf"]),
    temperature=st.sampled_from([1.0, 0.5, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_logprob_nonpositive_entropy_bounded_grad_rows_sum_to_zero(dtype, atol, rtol, N, V, kind, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    x = make_logits(kind, N, V, dtype, gen).requires_grad_()
    targets = make_targets(N, V, 0.0, gen)
    logprobs, entropy = token_logprobs(x, targets, temperature=temperature, return_entropy=True)
    assert (logprobs <= 0).all()
    assert (entropy >= 0).all()
    assert (entropy <= math.log(V) + 1e-5 * (1 + math.log(V))).all()
    if kind == "ties":
        assert_close(entropy, torch.full_like(entropy, math.log(V)), 1e-5, 1e-5, "entropy of a uniform row")

    # d logprob / d z = onehot - p sums to 1 - sum(p) = 0 in every row
    (grad,) = torch.autograd.grad(logprobs.sum(), x)
    grad = grad.float()
    row_sums = grad.sum(-1)
    tol = torch.finfo(dtype).eps * grad.abs().sum(-1) + 1e-5 / temperature
    assert (row_sums.abs() <= tol).all(), f"gradient rows sum to {row_sums.tolist()}, tolerance {tol.tolist()}"


# shifts that keep x + c exact in each dtype, for x on a grid of quarters in [-8, 8)
EXACT_SHIFT = {torch.float32: 1e4, torch.float16: 448.0, torch.bfloat16: 48.0}


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@settings(max_examples=EXAMPLES)
@given(
    N=st.integers(1, MAX_N),
    V=st.integers(1, MAX_V),
    sign=st.sampled_from([1.0, -1.0]),
    temperature=st.sampled_from([1.0, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_adding_a_constant_to_a_row_changes_nothing(dtype, atol, rtol, N, V, sign, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(-32, 32, (N, V), generator=gen) / 4).to(dtype).to(DEVICE)
    shift = sign * EXACT_SHIFT[dtype] * torch.rand(N, 1, generator=gen).round().to(DEVICE)  # 0 or +-c per row
    targets = make_targets(N, V, 0.2, gen)
    results = []
    for logits in (x, x + shift.to(dtype)):
        logits = logits.clone().requires_grad_()
        logprobs, entropy = token_logprobs(logits, targets, temperature=temperature, return_entropy=True)
        (grad,) = torch.autograd.grad([logprobs, entropy], logits, [torch.ones_like(logprobs)] * 2)
        results.append((logprobs, entropy, grad))
    # the kernel subtracts the max on the raw logits, so the shifted rows give the same numbers
    assert_close(results[1][0], results[0][0], 1e-5, 1e-5, "logprobs")
    assert_close(results[1][1], results[0][1], 1e-5, 1e-5, "entropy")
    assert_close(results[1][2], results[0][2], atol, rtol, "logits grad")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ignored_rows_give_zero_logprob_and_zero_gradient(dtype, atol, rtol):
    gen = torch.Generator().manual_seed(2)
    N, V = 6, 1029
    x = make_logits("normal", N, V, dtype, gen).requires_grad_()
    targets = make_targets(N, V, 0.0, gen)
    targets[[1, 4]] = IGNORE_INDEX
    logprobs, entropy = token_logprobs(x, targets, return_entropy=True)
    assert (logprobs[[1, 4]] == 0).all() and (logprobs[[0, 2, 3, 5]] < 0).all()
    assert (entropy[[1, 4]] > 0).all()  # the entropy does not depend on the target
    (grad,) = torch.autograd.grad(logprobs, x, torch.randn(N, generator=gen).to(DEVICE))
    assert (grad[[1, 4]] == 0).all() and (grad[[0, 2, 3, 5]] != 0).any(dim=-1).all()


def test_all_negative_rows_verl_bug():
    # a running max initialised to 0 instead of -inf makes s = sum exp(x - 0) underflow to 0 here
    # and every log-prob -inf or NaN (verl PR #7439)
    x = torch.tensor([[-1e4, -1e4 - 1.0, -1e4 - 2.0], [-5e3, -3e3, -4e3]], device=DEVICE)
    targets = torch.tensor([0, 1], device=DEVICE)
    logprobs, entropy = token_logprobs(x, targets, return_entropy=True)
    expected = torch.log_softmax(torch.tensor([[0.0, -1.0, -2.0], [-2e3, 0.0, -1e3]]), -1)
    assert_close(logprobs.cpu(), expected[[0, 1], [0, 1]], 1e-6, 1e-6, "logprobs")
    assert torch.isfinite(entropy).all()


# Rows whose first whole block (or more) is -inf and whose finite logits all lie far below 0.
# A running max that is stored as 0 while only -inf has been seen is floored at 0 for the rest of
# the row: s = sum exp((x - 0) / T) underflows to 0, and the log-prob comes out +inf, the entropy
# and the gradients NaN (the verl bug of PR #7439, reached through masked vocabulary entries).
# V crosses two block boundaries, so the -inf prefixes below fill whole blocks whatever the
# alignment shift of a row (the kernel's first block holds at most BLOCK_V columns of the row).
MASKED_PREFIX_V = 3 * BLOCK_V + 5
MASKED_PREFIX_TEMPERATURES = [1.0, 0.25, 2.5]


def make_masked_prefix_logits(dtype, gen):
    """(6, MASKED_PREFIX_V) logits and targets (each target on a finite logit, or ignored)."""
    V = MASKED_PREFIX_V
    inf = float("-inf")
    x = torch.full((6, V), inf)
    x[0, BLOCK_V:] = -200 + 3 * torch.randn(V - BLOCK_V, generator=gen)  # one -inf block
    x[1, BLOCK_V + 37:] = -1e4 + 3 * torch.randn(V - BLOCK_V - 37, generator=gen)  # one block and some
    x[1, BLOCK_V + 37:][torch.rand(V - BLOCK_V - 37, generator=gen) < 0.3] = inf  # and -inf among the finite ones
    x[2, 2 * BLOCK_V + 3:] = -1e3 - 1.9e4 * torch.rand(V - 2 * BLOCK_V - 3, generator=gen)  # two blocks, spread
    x[3, V - 1] = -500.0  # -inf but for one column, in the last block: logprob 0, entropy 0
    x[4, BLOCK_V:] = -1e4 + 3 * torch.randn(V - BLOCK_V, generator=gen)  # ignored target, entropy still counted
    x[5] = -300 + 3 * torch.randn(V, generator=gen)  # no -inf at all, for comparison
    targets = []
    for row in x[:4]:
        finite = torch.isfinite(row).nonzero().squeeze(-1)
        targets.append(finite[torch.randint(len(finite), (1,), generator=gen)].item())
    targets += [IGNORE_INDEX, V // 2]
    return x.to(dtype).to(DEVICE), torch.tensor(targets, device=DEVICE)


def shifted_reference(x, targets, temperature):
    """token_logprobs_reference of x - rowmax(x) in fp32: the same function (it is
    shift-invariant) and the same gradient w.r.t. x, but without the reference's rounding of
    x / T at the size of x, so it can be held to fp32 tolerances on rows near -1e4."""
    row_max = x.detach().float().amax(-1, keepdim=True)
    return token_logprobs_reference(x.float() - row_max, targets, temperature=temperature, return_entropy=True)


@pytest.mark.parametrize("temperature", MASKED_PREFIX_TEMPERATURES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_masked_leading_blocks_with_very_negative_logits(dtype, atol, rtol, temperature):
    gen = torch.Generator().manual_seed(5)
    logits, targets = make_masked_prefix_logits(dtype, gen)
    N, V = logits.shape
    grad_logprobs, grad_entropy = torch.randn(N, generator=gen).to(DEVICE), torch.randn(N, generator=gen).to(DEVICE)
    results = []
    for op in (token_logprobs, shifted_reference):
        x = logits.clone().requires_grad_()
        if op is token_logprobs:
            logprobs, entropy = op(x, targets, temperature=temperature, return_entropy=True)
        else:
            logprobs, entropy = op(x, targets, temperature)
        # each output's gradient on its own: the kernel skips the work of an unused one
        (grad_lp,) = torch.autograd.grad(logprobs, x, grad_logprobs, retain_graph=True)
        (grad_ent,) = torch.autograd.grad(entropy, x, grad_entropy)
        results.append((logprobs, entropy, grad_lp, grad_ent))
    (logprobs, entropy, grad_lp, grad_ent), (logprobs_ref, entropy_ref, grad_lp_ref, grad_ent_ref) = results

    assert_close(logprobs, logprobs_ref, 1e-5, 1e-5, "logprobs")
    assert_close(entropy, entropy_ref, 1e-5 * (1 + math.log(V)), 1e-5, "entropy")
    assert logprobs[3] == 0 and entropy[3] == 0  # one finite logit: probability 1
    assert grad_lp.dtype == grad_ent.dtype == dtype
    assert_close(grad_lp, grad_lp_ref, atol, rtol, "logits grad of the logprobs")
    assert_close(grad_ent, grad_ent_ref, atol, rtol, "logits grad of the entropy")
    assert (grad_lp[~torch.isfinite(logits)] == 0).all() and (grad_ent[~torch.isfinite(logits)] == 0).all()


def test_vocabulary_of_one():
    x = torch.randn(3, 1, device=DEVICE, requires_grad=True)
    logprobs, entropy = token_logprobs(x, torch.tensor([0, IGNORE_INDEX, 0], device=DEVICE), return_entropy=True)
    assert (logprobs == 0).all() and (entropy == 0).all()
    (grad,) = torch.autograd.grad([logprobs, entropy], x, [torch.ones(3, device=DEVICE)] * 2)
    assert (grad == 0).all()


# ----------------------------------------------------------------------------------------------
# linear_token_logprobs == linear_token_logprobs_reference
# ----------------------------------------------------------------------------------------------

# (dtype, atol, rtol) of the outputs and of grad_hidden / grad_weight. Both sides round the
# logits to the dtype, but the chunked matmuls need not round exactly as the unchunked ones,
# and grad_weight is rounded once per chunk.
LINEAR_DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16"),
] + ([pytest.param(torch.bfloat16, 5e-2, 5e-2, id="bf16")] if ON_CUDA else [])


@pytest.mark.parametrize("dtype, atol, rtol", LINEAR_DTYPES)
@settings(max_examples=EXAMPLES)
@given(
    N=st.integers(1, 4 * MAX_N),
    C=st.integers(1, 64),
    V=st.integers(1, 1500 if not ON_CUDA else MAX_V),
    chunk_size=st.integers(1, 16 if not ON_CUDA else 128),
    temperature=st.sampled_from([1.0, 0.6]),
    ignore_fraction=st.sampled_from([0.0, 0.3]),
    uses=st.sampled_from(["logprobs", "entropy", "both"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_token_logprobs_matches_reference(dtype, atol, rtol, N, C, V, chunk_size, temperature, ignore_fraction,
                                                 uses, seed):
    # at most 16 chunks: grad_weight is rounded to the dtype once per chunk (bf16: 2^-9 each)
    chunk_size = max(chunk_size, -(-N // 16))
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(V, C, generator=gen) * 2 / math.sqrt(C)).to(dtype).to(DEVICE)
    targets = make_targets(N, V, ignore_fraction, gen)
    return_entropy = uses != "logprobs"
    grads = [torch.randn(N, generator=gen).to(DEVICE) for _ in range(2)]

    results = []
    for op, kwargs in ((linear_token_logprobs, dict(chunk_size=chunk_size)), (linear_token_logprobs_reference, {})):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = op(h, w, targets, temperature=temperature, return_entropy=return_entropy, **kwargs)
        logprobs, entropy = out if return_entropy else (out, None)
        outputs = {"logprobs": [logprobs], "entropy": [entropy], "both": [logprobs, entropy]}[uses]
        grad_h, grad_w = torch.autograd.grad(outputs, (h, w), grads[: len(outputs)])
        results.append((logprobs, entropy, grad_h, grad_w))
    (logprobs, entropy, grad_h, grad_w), (logprobs_ref, entropy_ref, grad_h_ref, grad_w_ref) = results

    assert_close(logprobs, logprobs_ref, atol, rtol, "logprobs")
    if return_entropy:
        assert_close(entropy, entropy_ref, atol, rtol, "entropy")
    assert grad_h.dtype == grad_w.dtype == dtype
    assert_close(grad_h, grad_h_ref, atol, rtol, "grad hidden")
    assert_close(grad_w, grad_w_ref, atol, rtol, "grad weight")


def test_linear_token_logprobs_default_chunks_leading_dims_and_frozen_weight():
    gen = torch.Generator().manual_seed(3)
    B, T, C, V = 3, 7, 16, 300
    hidden = torch.randn(B, T, C, generator=gen).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, C, generator=gen) / 4).to(DEVICE)  # no grad: a frozen lm_head
    targets = torch.randint(0, V, (B, T), generator=gen).to(DEVICE)
    targets[0, :2] = IGNORE_INDEX
    logprobs = linear_token_logprobs(hidden, weight, targets, temperature=0.9)
    logprobs_ref = linear_token_logprobs_reference(hidden, weight, targets, temperature=0.9)
    assert logprobs.shape == (B, T)
    assert_close(logprobs, logprobs_ref, 1e-4, 1e-4, "logprobs")
    (grad_h,) = torch.autograd.grad(logprobs.sum(), hidden)
    (grad_h_ref,) = torch.autograd.grad(logprobs_ref.sum(), hidden)
    assert_close(grad_h, grad_h_ref, 1e-4, 1e-4, "grad hidden")
    assert (grad_h[0, :2] == 0).all()
    with torch.no_grad():  # the reference / old-policy pass of PPO
        assert_close(linear_token_logprobs(hidden, weight, targets, temperature=0.9), logprobs_ref, 1e-4, 1e-4,
                     "no_grad")


@pytest.mark.parametrize("masked", ["leading_block", "all_but_last"])
@pytest.mark.parametrize("temperature", MASKED_PREFIX_TEMPERATURES)
@pytest.mark.parametrize("dtype, atol, rtol", LINEAR_DTYPES)
def test_linear_masked_leading_blocks_with_very_negative_logits(dtype, atol, rtol, temperature, masked):
    # hidden @ weight.T is -inf where the product overflows the dtype (as an fp16 lm_head can):
    # hidden rows [a, b] with a in {2, 3}, weight rows [-big, c] for the masked words and [0, c]
    # for the others, big * 2 past the dtype's max and c around -200, so that the logits are
    # -inf on the masked words and b * c (-200 to -1e4) on the others. The masked words are the
    # first BLOCK_V + 10 (a whole -inf block at the start of every row) or all but the last.
    # Every row has the same masked words, so that -big only ever meets a zero gradient:
    # d/dhidden and d/dweight stay finite and free of cancellation.
    gen = torch.Generator().manual_seed(6)
    V = 2 * BLOCK_V + 76
    n_masked = BLOCK_V + 10 if masked == "leading_block" else V - 1
    weight = torch.zeros(V, 2)
    weight[:n_masked, 0] = -0.9 * torch.finfo(dtype).max
    weight[:, 1] = -200 + 3 * torch.randn(V, generator=gen)
    hidden = torch.tensor([[2.0, 1.0], [3.0, 50.0], [2.0, 20.0], [3.0, 1.0]])
    weight, hidden = weight.to(dtype).to(DEVICE), hidden.to(dtype).to(DEVICE)
    targets = torch.tensor([n_masked, V - 1, V - 1 - (masked == "leading_block"), IGNORE_INDEX], device=DEVICE)
    N = len(targets)
    grads = [torch.randn(N, generator=gen).to(DEVICE) for _ in range(2)]
    logits = hidden @ weight.t()
    assert torch.isinf(logits[:, :n_masked]).all() and torch.isfinite(logits[:, n_masked:]).all()  # as constructed

    results = []
    for op, kwargs in ((linear_token_logprobs, dict(chunk_size=3)), (linear_token_logprobs_reference, {})):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logprobs, entropy = op(h, w, targets, temperature=temperature, return_entropy=True, **kwargs)
        grad_h, grad_w = torch.autograd.grad([logprobs, entropy], (h, w), grads)
        results.append((logprobs, entropy, grad_h, grad_w))
    (logprobs, entropy, grad_h, grad_w), (logprobs_ref, entropy_ref, grad_h_ref, grad_w_ref) = results

    # the reference rounds x / T at |x / T| up to 4e4: a few ulp of fp32 there
    slack = reference_slack(logits, temperature)
    assert_close(logprobs, logprobs_ref, atol + slack, rtol, "logprobs")
    assert_close(entropy, entropy_ref, atol + slack * (1 + math.log(V)), rtol, "entropy")
    assert_close(grad_h, grad_h_ref, atol, rtol, "grad hidden")
    assert_close(grad_w, grad_w_ref, atol, rtol, "grad weight")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def _bad_token_inputs():
    x = torch.randn(4, 10, device=DEVICE)
    t = torch.randint(0, 10, (4,), device=DEVICE)
    return [
        ("int logits", (x.long(), t), {}),
        ("fp64 logits", (x.double(), t), {}),
        ("float targets", (x, t.float()), {}),
        ("int16 targets", (x, t.short()), {}),
        ("targets shape", (x, t[:3]), {}),
        ("empty vocabulary", (x[:, :0], t), {}),
        ("target == V", (x, torch.tensor([0, 10, 1, 2], device=DEVICE)), {}),
        ("target -1", (x, torch.tensor([0, -1, 1, 2], device=DEVICE)), {}),
        ("target -5 among -100", (x, torch.tensor([-100, -5, 1, 9], device=DEVICE)), {}),
        ("temperature 0", (x, t), dict(temperature=0.0)),
        ("temperature < 0", (x, t), dict(temperature=-1.0)),
        ("temperature nan", (x, t), dict(temperature=float("nan"))),
        ("devices", (torch.randn(4, 10, device="meta"), t.cpu()), {}),
    ]


@pytest.fixture
def check_targets(monkeypatch):
    """On a GPU the Triton ops check the targets' range only when asked to; on the CPU they always do."""
    if ON_CUDA:
        monkeypatch.setattr(kernels.logprobs, "CHECK_TARGETS_ON_GPU", True)


@pytest.mark.parametrize("op", [token_logprobs, token_logprobs_reference])
@pytest.mark.parametrize("case", _bad_token_inputs(), ids=lambda case: case[0])
def test_token_logprobs_rejects_bad_inputs(op, case, check_targets):
    _, args, kwargs = case
    with pytest.raises(ValueError):
        op(*args, **kwargs)


def test_unchecked_out_of_range_targets_give_nan(monkeypatch):
    """On a GPU the Triton ops skip the range check (a host-device sync per call): a target outside
    [0, V) then gives a NaN logprob and a NaN logits gradient in its row, and leaves the other rows as
    they are. On the CPU the check is turned off here to run the same kernel path."""
    monkeypatch.setattr(kernels.logprobs, "_check_range", lambda tensor: False)
    gen = torch.Generator().manual_seed(7)
    V = 37
    logits = torch.randn(6, V, generator=gen).to(DEVICE)
    targets = torch.tensor([0, V, -1, IGNORE_INDEX, V - 1, -5], device=DEVICE)
    bad = torch.tensor([False, True, True, False, False, True], device=DEVICE)
    x = logits.clone().requires_grad_()
    logprobs, entropy = token_logprobs(x, targets, return_entropy=True)
    (grad,) = torch.autograd.grad(logprobs, x, torch.ones(6, device=DEVICE))
    assert logprobs[bad].isnan().all() and grad[bad].isnan().all()
    safe = targets.masked_fill(bad, 0)
    x_ref = logits.clone().requires_grad_()
    logprobs_ref, entropy_ref = token_logprobs_reference(x_ref, safe, return_entropy=True)
    (grad_ref,) = torch.autograd.grad(logprobs_ref, x_ref, torch.ones(6, device=DEVICE))
    assert_close(logprobs[~bad], logprobs_ref[~bad], 1e-5, 1e-5, "logprobs of the other rows")
    assert_close(grad[~bad], grad_ref[~bad], 1e-5, 1e-5, "logits grad of the other rows")
    assert_close(entropy, entropy_ref, 1e-5, 1e-5, "entropy (does not depend on the target)")
    hidden, weight = torch.randn(6, 8, generator=gen).to(DEVICE), torch.randn(V, 8, generator=gen).to(DEVICE)
    assert linear_token_logprobs(hidden, weight, targets, chunk_size=4).isnan().eq(bad).all()


def _bad_linear_inputs():
    h = torch.randn(5, 8, device=DEVICE)
    w = torch.randn(11, 8, device=DEVICE)
    t = torch.randint(0, 11, (5,), device=DEVICE)
    return [
        ("dtype mismatch", (h, w.half(), t), {}),
        ("C mismatch", (h, w[:, :7], t), {}),
        ("1-d weight", (h, w[0], t), {}),
        ("targets shape", (h, w, t[:4]), {}),
        ("target == V", (h, w, torch.full((5,), 11, device=DEVICE)), {}),
        ("int targets of wrong dtype", (h, w, t.to(torch.uint8)), {}),
        ("temperature 0", (h, w, t), dict(temperature=0)),
    ]


@pytest.mark.parametrize("op", [linear_token_logprobs, linear_token_logprobs_reference])
@pytest.mark.parametrize("case", _bad_linear_inputs(), ids=lambda case: case[0])
def test_linear_token_logprobs_rejects_bad_inputs(op, case, check_targets):
    _, args, kwargs = case
    with pytest.raises(ValueError):
        op(*args, **kwargs)


def test_linear_token_logprobs_rejects_bad_chunk_size():
    h, w = torch.randn(5, 8, device=DEVICE), torch.randn(11, 8, device=DEVICE)
    t = torch.zeros(5, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError):
        linear_token_logprobs(h, w, t, chunk_size=0)


def test_triton_ops_reject_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, t = torch.randn(2, 5), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="token_logprobs_reference"):
        token_logprobs(x, t)
    with pytest.raises(ValueError, match="linear_token_logprobs_reference"):
        linear_token_logprobs(torch.randn(2, 3), torch.randn(5, 3), t)
