"""flash_attention (Triton kernels) == attention_reference (plain PyTorch, fp32 math): outputs and
gradients, on random shapes, masks and dtypes; and so is attention_sdpa, the model's plain-PyTorch
path. On the CPU the kernels run in Triton's interpreter, which is slow, so shapes stay small there;
on CUDA they grow."""
import math
import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kernels.attention
from kernels.attention import attention_reference, attention_sdpa, flash_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# benchmarks/gpu.py sets KERNEL_TESTS_QUICK=1 to fit its GPU window: the model's head dims, no fp16 (the
# CPU tests cover it), fewer examples; every kernel still compiles there, which is most of the time taken
QUICK = os.environ.get("KERNEL_TESTS_QUICK") == "1"
MAX_T = 300 if CUDA else 40  # longest sequence drawn; 40 already spans three 16-wide tiles of the interpreter
MAX_BH = 4 if CUDA else 2  # largest batch and head count drawn
EXAMPLES = 10 if QUICK else 100 if CUDA else 35  # random examples per (dtype, causal), and the explicit ones
HEAD_DIMS = [64, 128] if QUICK else [16, 32, 64, 80, 96, 128]

# (dtype, atol, rtol). fp32 is the precise check. In fp16 and bf16 the kernel rounds p and dS to the
# input dtype before their matmuls, as FlashAttention does, which costs dq and dk up to ~1% (fp16) and
# ~5% (bf16) of their scale once the scores are peaked; these tolerances still catch a wrong mask or
# scale. bf16 only on CUDA: Triton's interpreter computes bf16 dots wrongly.
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
] + ([] if QUICK and CUDA else [pytest.param(torch.float16, 2e-2, 2e-2, id="fp16")]) + (
    [pytest.param(torch.bfloat16, 1e-1, 1e-1, id="bf16")] if CUDA else [])


def randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def run(fn, q, k, v, do, **kwargs):
    """Output of fn and the gradients of (o * do).sum() with respect to q, k, v."""
    o = fn(q, k, v, **kwargs)
    return (o, *torch.autograd.grad(o, (q, k, v), do))


def assert_matches_reference(q, k, v, atol, rtol, seed=0, op=flash_attention, **kwargs):
    """op (flash_attention) and attention_reference agree on o, dq, dk, dv (from the same leaves), and
    nothing is NaN. Returns op's (o, dq, dk, dv)."""
    do = randn(*q.shape, dtype=q.dtype, seed=seed + 1)
    ours = run(op, *leaves(q, k, v), do, **kwargs)
    ref = run(attention_reference, *leaves(q, k, v), do, **kwargs)
    assert ours[0].shape == q.shape and ours[0].dtype == q.dtype
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, ref):
        assert not a.isnan().any(), f"NaN in {name}"
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    return ours


@st.composite
def attention_problems(draw):
    B, H = draw(st.integers(1, MAX_BH)), draw(st.integers(1, MAX_BH))
    Tk = draw(st.integers(1, MAX_T))
    Tq = draw(st.sampled_from([1, Tk, draw(st.integers(1, Tk))]))  # a decode step, full attention, or a chunk
    # key_start up to Tk: a row whose keys are all padding, and with causality early queries that see none
    key_start = draw(st.none() | st.lists(st.integers(0, Tk), min_size=B, max_size=B))
    return dict(
        B=B, H=H, Tq=Tq, Tk=Tk, D=draw(st.sampled_from(HEAD_DIMS)),
        sm_scale=draw(st.none() | st.floats(0.05, 0.25)),  # 0.25 = 1/sqrt(16), the largest default
        key_start=None if key_start is None else (key_start, draw(st.sampled_from([torch.int32, torch.int64]))),
        seed=draw(st.integers(0, 2**20)),
    )


@pytest.mark.parametrize("op", [flash_attention, attention_sdpa], ids=["triton", "sdpa"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@settings(max_examples=EXAMPLES, deadline=None)
@given(p=attention_problems())
# Hypothesis spends many of its few examples on tiny shapes; these always run and cross tile edges
# (16 keys a tile in the interpreter): key_start inside a tile and on an edge, a prefill chunk,
# a decode step next to a row that is all padding.
@example(p=dict(B=2, H=2, Tq=40, Tk=40, D=64, sm_scale=None, key_start=([5, 16], torch.int64), seed=0))
@example(p=dict(B=1, H=2, Tq=19, Tk=40, D=80, sm_scale=0.2, key_start=None, seed=1))
@example(p=dict(B=2, H=1, Tq=1, Tk=37, D=128, sm_scale=None, key_start=([37, 3], torch.int32), seed=2))
def test_flash_attention_matches_reference(op, dtype, atol, rtol, causal, p):
    q = randn(p["B"], p["H"], p["Tq"], p["D"], dtype=dtype, seed=p["seed"])
    k = randn(p["B"], p["H"], p["Tk"], p["D"], dtype=dtype, seed=p["seed"] + 2)
    v = randn(p["B"], p["H"], p["Tk"], p["D"], dtype=dtype, seed=p["seed"] + 3)
    key_start = None if p["key_start"] is None else torch.tensor(p["key_start"][0], dtype=p["key_start"][1],
                                                                 device=DEVICE)
    assert_matches_reference(q, k, v, atol, rtol, seed=p["seed"], op=op, causal=causal, sm_scale=p["sm_scale"],
                             key_start=key_start)


@pytest.mark.parametrize("op", [flash_attention, attention_sdpa], ids=["triton", "sdpa"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("Tq", [37, 9])
def test_rows_that_see_no_key_are_exactly_zero(op, dtype, atol, rtol, Tq):
    """Row 0 is all padding; in row 1 the first queries, with causality, see only padding.
    Their outputs and gradients are exactly zero, as are dk, dv of every padding key; no NaN."""
    B, H, Tk, D = 2, 2, 37, 32
    q, k, v = (randn(B, H, T, D, dtype=dtype, seed=s) for s, T in ((0, Tq), (1, Tk), (2, Tk)))
    key_start = torch.tensor([Tk, 33], device=DEVICE)  # row 1: queries before position 33 see nothing
    o, dq, dk, dv = assert_matches_reference(q, k, v, atol, rtol, op=op, causal=True, key_start=key_start)
    blind = Tk - Tq + torch.arange(Tq, device=DEVICE) < 33  # row 1's queries that see no key
    assert blind.any() and not blind.all()
    assert (o[0] == 0).all() and (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    assert (o[1, :, blind] == 0).all() and (dq[1, :, blind] == 0).all()
    assert (dk[1, :, :33] == 0).all() and (dv[1, :, :33] == 0).all()
    assert (o[1, :, ~blind] != 0).any()


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("Tq", [1, 6])
def test_decode_step_equals_last_rows_of_full_attention(dtype, atol, rtol, Tq):
    """Queries for the last Tq positions only (a KV-cache decode step when Tq = 1, a prefill chunk
    otherwise) give the last Tq rows of full causal attention over the same keys."""
    B, H, Tk, D = 2, 2, 35, 64
    q, k, v = (randn(B, H, Tk, D, dtype=dtype, seed=s) for s in range(3))
    key_start = torch.tensor([0, 7], device=DEVICE)
    full = flash_attention(q, k, v, key_start=key_start)  # (B, H, Tk, D)
    step = flash_attention(q[:, :, -Tq:], k, v, key_start=key_start)  # (B, H, Tq, D)
    torch.testing.assert_close(step, full[:, :, -Tq:], atol=atol, rtol=rtol)
    torch.testing.assert_close(step.float(), attention_reference(q, k, v, key_start=key_start)[:, :, -Tq:].float(),
                               atol=atol, rtol=rtol)


# A decode step (Tq = 1) splits its keys over several programs when B * H rows would leave the GPU idle
# (under the interpreter the kernels plan for a GPU of 4 SMs). (B, H, Tk, D, key_start, split): on CUDA
# Tk and key_start of the split cases grow 64-fold, since a split there holds at least 4 tiles of 64 keys.
DECODE_CASES = [
    pytest.param(1, 1, 64, 64, None, True, id="one row, keys in 4 splits"),
    pytest.param(2, 1, 37, 128, [37, 3], True, id="a row that sees no key, the last split cut by Tk"),
    pytest.param(1, 2, 100, 80, [50], True, id="whole splits of padding, one cut by key_start"),
    pytest.param(2, 2, 45, 32, [17, 0], True, id="padding in one row"),
    pytest.param(8, 4, 37, 16, [0, 1, 2, 3, 30, 36, 37, 0], False, id="32 rows, one program each"),
]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, H, Tk, D, key_start, split", DECODE_CASES)
def test_decode_step_split_over_keys(dtype, atol, rtol, B, H, Tk, D, key_start, split):
    """The split decode path (per-split softmax, then the merge) == attention_reference, outputs and the
    gradients (which read the merged log-sum-exp); rows that see no key are exactly zero."""
    scale = 64 if CUDA and split else 1
    Tk = Tk * scale
    n_splits, _ = kernels.attention._decode_splits(B, H, Tk, torch.device(DEVICE))
    assert (n_splits > 1) == split
    q = randn(B, H, 1, D, dtype=dtype, seed=Tk)
    k, v = randn(B, H, Tk, D, dtype=dtype, seed=Tk + 1), randn(B, H, Tk, D, dtype=dtype, seed=Tk + 2)
    starts = None if key_start is None else torch.tensor([s * scale for s in key_start], device=DEVICE)
    o, dq, dk, dv = assert_matches_reference(q, k, v, atol, rtol, key_start=starts)
    if starts is not None:
        blind = starts >= Tk  # rows whose every key is padding
        assert (o[blind] == 0).all() and (dq[blind] == 0).all() and (dk[blind] == 0).all()
        assert (o[~blind] != 0).any()


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_non_contiguous_inputs(dtype, atol, rtol):
    """The layouts the model passes: q a transpose of (B, T, H, D), k and v slices of a preallocated
    (B, H, maxT, D) cache; and, through a copy, a head dim that is not contiguous."""
    B, H, Tq, Tk, maxT, D = 2, 3, 5, 21, 40, 48
    q = randn(B, Tq, H, D, dtype=dtype, seed=0).transpose(1, 2)  # (B, H, Tq, D), strides of (B, Tq, H, D)
    k_cache, v_cache = randn(B, H, maxT, D, dtype=dtype, seed=1), randn(B, H, maxT, D, dtype=dtype, seed=2)
    k, v = k_cache[:, :, :Tk], v_cache[:, :, :Tk]  # (B, H, Tk, D) views of the cache
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    key_start = torch.tensor([0, 4], device=DEVICE)
    assert_matches_reference(q, k, v, atol, rtol, key_start=key_start)
    q_strided = randn(B, H, Tq, 2 * D, dtype=dtype, seed=3)[..., ::2]  # head-dim stride 2
    assert_matches_reference(q_strided, k, v, atol, rtol, causal=False)


def _tensors(*shapes, dtype=torch.float32, device=DEVICE):
    return [torch.zeros(s, dtype=dtype, device=device) for s in shapes]


BAD_INPUTS = [
    # (id, q, k, v, kwargs, message)
    ("rank", *_tensors((2, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16)), {}, "4-d tensor"),
    ("batch", *_tensors((2, 1, 5, 16), (3, 1, 5, 16), (3, 1, 5, 16)), {}, "agree on B, H and D"),
    ("heads", *_tensors((2, 1, 5, 16), (2, 2, 5, 16), (2, 2, 5, 16)), {}, "agree on B, H and D"),
    ("head dim", *_tensors((2, 1, 5, 16), (2, 1, 5, 32), (2, 1, 5, 32)), {}, "agree on B, H and D"),
    ("Tq > Tk", *_tensors((2, 1, 6, 16), (2, 1, 5, 16), (2, 1, 5, 16)), {}, "Tq <= Tk"),
    ("v unlike k", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 4, 16)), {}, "v must have the shape of k"),
    ("D too small", *_tensors((2, 1, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8)), {}, r"\[16, 128\]"),
    ("D too large", *_tensors((2, 1, 5, 160), (2, 1, 5, 160), (2, 1, 5, 160)), {}, r"\[16, 128\]"),
    ("mixed dtypes", *_tensors((2, 1, 5, 16)), *_tensors((2, 1, 5, 16), (2, 1, 5, 16), dtype=torch.float16), {},
     "share a dtype"),
    ("float64", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16), dtype=torch.float64), {}, "dtype must be"),
    ("mixed devices", *_tensors((2, 1, 5, 16)), *_tensors((2, 1, 5, 16), (2, 1, 5, 16), device="meta"), {},
     "one device"),
    ("key_start shape", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16)),
     dict(key_start=torch.zeros(3, dtype=torch.int64, device=DEVICE)), r"shape \(B,\)"),
    ("key_start dtype", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16)),
     dict(key_start=torch.zeros(2, device=DEVICE)), "int32 or int64"),
    ("key_start list", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16)), dict(key_start=[0, 0]),
     "int32 or int64"),
    ("key_start device", *_tensors((2, 1, 5, 16), (2, 1, 5, 16), (2, 1, 5, 16)),
     dict(key_start=torch.zeros(2, dtype=torch.int64, device="meta")), "key_start must be on"),
]


@pytest.mark.parametrize("q, k, v, kwargs, message", [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_bad_inputs_raise_value_error(q, k, v, kwargs, message):
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, **kwargs)


def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    monkeypatch.setattr(kernels.attention, "_INTERPRET", False)
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="attention_reference.*TRITON_INTERPRET=1"):
        flash_attention(q, q, q)


def test_bfloat16_under_the_interpreter_raises(monkeypatch):
    monkeypatch.setattr(kernels.attention, "_INTERPRET", True)
    q = torch.zeros(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="interpreter"):
        flash_attention(q, q, q)


def test_reference_is_softmax_attention():
    """The oracle itself, on a case small enough to write out: no mask, one key per query seen."""
    q, k, v = torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1) @ v
    torch.testing.assert_close(attention_reference(q, k, v, causal=False), expected)
    torch.testing.assert_close(attention_reference(q, k, v, key_start=torch.tensor([2]))[0, 0, 2], v[0, 0, 2])
