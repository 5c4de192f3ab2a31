"""
The static GPU check of the Triton kernels in kernels/, run without a GPU: every kernel is compiled
ahead of time for a GPU named by hand, with every launch configuration its launcher or autotuner can
pick, and the report of ptxas (which Triton ships) is read: registers per thread, bytes spilled to
local memory, shared memory per block, and the occupancy that follows (warps resident per SM, of 64).

    python benchmarks/kernel_compile.py              # the whole matrix: sm_90a and sm_80, bf16, fp16 and fp32, ...
    python benchmarks/kernel_compile.py --ci         # the part CI runs (tests/test_kernel_compile.py)
    python benchmarks/kernel_compile.py --json rows.json --jobs 4

A row fails when its kernel does not compile for the target, needs more shared memory than a block
may have on that GPU, or spills registers (a spilling kernel runs far below what its tile promises).
Exit status: 0 when every row passes, 1 when one fails, 2 when the tools are missing (Triton without
its NVIDIA backend or the ptxas it ships).

What is compiled is what Triton's JIT compiles at a launch from the launchers in kernels/: pointers
16-byte aligned and strides multiples of 16 elements (the launchers guarantee both, copying an input
that is not), sizes (lengths, the vocabulary) not specialized (the kernels opt out of it). --no-hints
compiles without alignment hints, a worse case that no launch produces. This is static analysis: it
shows that the kernels build and fit on the GPU, not how fast they run.
"""
import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `kernels` lives at the repository root


@dataclass(frozen=True)
class Gpu:
    """What bounds a kernel on one GPU (CUDA C++ Programming Guide, "Compute Capabilities")."""
    name: str
    capability: int
    smem_per_block: int  # bytes of shared memory one block may use
    smem_per_sm: int
    smem_reserved: int = 1024  # per block, by the CUDA runtime
    regs_per_sm: int = 65536
    max_warps: int = 64
    max_blocks: int = 32


GPUS = {
    "sm_90a": Gpu("H100/H200", 90, smem_per_block=227 * 1024, smem_per_sm=228 * 1024),
    "sm_80": Gpu("A100", 80, smem_per_block=163 * 1024, smem_per_sm=164 * 1024),
}
# The whole matrix, and the part of it CI compiles: the model attends causally, in bf16 under autocast,
# and takes its log-probs from the fp32 lm_head weight (bf16 when the model is cast). Attention on fp32
# inputs (a model run without autocast) is outside it: its small FMA tiles are slow whatever they spill
# (benchmarks/RESULTS.md); `--dtypes fp32` compiles them.
FULL = dict(targets=["sm_90a", "sm_80"], dtypes=["bf16", "fp16"], head_dims=[64, 96, 128],
            vocabs=[50304, 128256], causal=[True, False], logprob_dtypes=["bf16", "fp16", "fp32"])
CI = dict(targets=["sm_90a"], dtypes=["bf16"], head_dims=[64, 128], vocabs=[50304, 128256], causal=[True],
          logprob_dtypes=["bf16", "fp32"])

# the roles of the kernels' arguments, by name: pointers to the inputs' dtype, to integers and to fp32; floats
ROLES = {
    "kernels.attention": dict(data={"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}, ints={"KEY_START"},
                              fp32={"LSE", "DELTA", "PARTIAL_ACC", "PARTIAL_M", "PARTIAL_L"},
                              floats={"qk_scale", "sm_scale"}),
    "kernels.logprobs": dict(data={"logits_ptr", "grad_logits_ptr"}, ints={"targets_ptr"},
                             fp32={"logprobs_ptr", "entropy_ptr", "row_max_ptr", "row_log_sum_ptr", "grad_logprobs_ptr",
                                   "grad_entropy_ptr"}, floats={"inv_temperature"}),
}


@dataclass
class Case:
    """One compilation: a kernel, its compile-time arguments and launch options, for one GPU and dtype."""
    kernel: str  # the function's name in its module
    module: str  # kernels.attention or kernels.logprobs
    target: str  # a key of GPUS
    dtype: str  # bf16, fp16, fp32
    shape: str  # "D=64", "V=50304"
    variant: str  # the compile-time switches, e.g. "causal"
    config: str  # the tile, e.g. "BLOCK_M=128 BLOCK_N=64"
    constexprs: dict
    num_warps: int
    num_stages: int
    hints: bool = True


@dataclass
class Row:
    case: dict
    registers: int = None  # per thread
    spill_stores: int = None  # bytes
    spill_loads: int = None
    stack: int = None  # bytes of stack frame per thread
    shared: int = None  # bytes of shared memory per block
    warps_per_sm: int = None
    seconds: float = None
    errors: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.errors


# ----------------------------------------------------------------------------------------------
# The matrix: every kernel, every configuration its launcher or autotuner can pick


def _label(config):
    return " ".join(f"{k}={v}" for k, v in config.kwargs.items())


def attention_cases(target, dtype, D, causal):
    import triton

    from kernels import attention as A

    block_d = max(16, triton.next_power_of_2(D))
    meta = dict(HEAD_DIM=D, BLOCK_D=block_d, DOT_PRECISION="ieee" if dtype == "fp32" else None)  # as A._meta
    cases = []

    def add(kernel, variant, config, constexprs):
        cases.append(Case(kernel, "kernels.attention", target, dtype, f"D={D}", variant, _label(config),
                          {**meta, **constexprs, **config.kwargs}, config.num_warps, config.num_stages))

    for is_causal in causal:
        for name, kernel in (("fwd", "_attn_fwd_kernel"), ("dkdv", "_attn_bwd_dkdv_kernel"),
                             ("dq", "_attn_bwd_dq_kernel")):
            for config in A._autotune_configs(name, block_d, meta["DOT_PRECISION"], GPUS[target].capability):
                add(kernel, "causal" if is_causal else "full", config, {"CAUSAL": is_causal})
    for split in (False, True):  # a decode step in one program per row, or its keys split over several
        add("_attn_decode_kernel", "split" if split else "one program", A._DECODE_CONFIG, {"SPLIT": split})
    add("_attn_decode_combine_kernel", "", A._DECODE_COMBINE_CONFIG, {})
    add("_attn_bwd_preprocess_kernel", "", triton.Config({"BLOCK_M": A._PREPROCESS_BLOCK_M}), {})
    return cases


def logprobs_cases(target, dtype, V):
    from kernels import logprobs as L

    block_v, num_warps = L._block_config(V)
    common = dict(IGNORE=L.IGNORE_INDEX, ALIGN=16 // (4 if dtype == "fp32" else 2), BLOCK_V=block_v)  # as launched
    cases = []

    def add(kernel, variant, constexprs):
        # launched without num_stages: Triton's default, 3
        cases.append(Case(kernel, "kernels.logprobs", target, dtype, f"V={V}", variant, f"BLOCK_V={block_v}",
                          {**common, **constexprs}, num_warps, 3))

    for entropy in (False, True):
        add("_token_logprobs_fwd_kernel", "entropy" if entropy else "logprobs", {"COMPUTE_ENTROPY": entropy})
    for grad_logprobs, grad_entropy in ((True, False), (False, True), (True, True)):
        variant = " + ".join(name for name, on in (("d logprobs", grad_logprobs), ("d entropy", grad_entropy)) if on)
        add("_token_logprobs_bwd_kernel", variant, {"HAS_GRAD_LOGPROBS": grad_logprobs,
                                                    "HAS_GRAD_ENTROPY": grad_entropy})
    return cases


def matrix(targets, dtypes, head_dims, vocabs, causal, logprob_dtypes, hints=True):
    cases = []
    for target in targets:
        for dtype in dtypes:
            for D in head_dims:
                cases += attention_cases(target, dtype, D, causal)
        for dtype in logprob_dtypes:
            for V in vocabs:
                cases += logprobs_cases(target, dtype, V)
    for case in cases:
        case.hints = hints
    return cases


# ----------------------------------------------------------------------------------------------
# Compiling one case and reading ptxas's report


def _signature(fn, case):
    """Triton's signature, constexprs and alignment hints for the kernel's arguments, by their roles."""
    roles = ROLES[case.module]
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if name in case.constexprs:
            signature[name], constexprs[name] = "constexpr", case.constexprs[name]
            continue
        if name in roles["data"]:
            signature[name] = f"*{case.dtype}"
        elif name in roles["ints"]:
            signature[name] = "*i64"
        elif name in roles["fp32"]:
            signature[name] = "*fp32"
        elif name in roles["floats"]:
            signature[name] = "fp32"
        else:  # sizes and strides
            signature[name] = "i32"
        hinted = signature[name].startswith("*") or name.startswith("stride")  # see the module docstring
        if case.hints and hinted and not (param.do_not_specialize or param.do_not_specialize_on_alignment):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def read_report(log):
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from ptxas -v, or None."""
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (registers and frame):
        return None
    return int(registers.group(1)), int(frame.group(2)), int(frame.group(3)), int(frame.group(1))


def _run_ptxas(ptxas, ptx, gpu_name):
    """ptxas -v on the PTX, with the flags Triton assembles it with."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        out = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu_name}", str(src),
                              "-o", str(Path(tmp) / "kernel.o")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed: {out.stderr.strip()[-500:]}")
    return out.stderr


def occupancy(gpu, registers, shared, num_warps):
    """Warps resident per SM, from the three limits: registers (allocated 256 per warp at a time),
    shared memory and warp slots."""
    regs_per_warp = -(-registers * 32 // 256) * 256
    blocks = min(gpu.regs_per_sm // regs_per_warp // num_warps, gpu.max_warps // num_warps, gpu.max_blocks)
    if shared:
        blocks = min(blocks, gpu.smem_per_sm // (shared + gpu.smem_reserved))
    return blocks * num_warps


def verdict(gpu, spill_stores, spill_loads, shared):
    """Why a compiled kernel fails the check (empty: it passes)."""
    errors = []
    if shared > gpu.smem_per_block:
        errors.append(f"needs {shared} B of shared memory, a block on {gpu.name} may have {gpu.smem_per_block}")
    if spill_stores or spill_loads:
        errors.append(f"spills {spill_stores} B")
    return errors


def compile_case(case):
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = GPUS[case.target]
    row = Row(asdict(case))
    start = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(case.module), case.kernel)
        signature, constexprs, attrs = _signature(fn, case)
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        # Triton runs ptxas -v when it assembles the kernel: it prints the report when asked to
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(io.StringIO()) as log:
            kernel = triton.compile(src, target=GPUTarget("cuda", gpu.capability, 32),
                                    options=dict(num_warps=case.num_warps, num_stages=case.num_stages))
        report = read_report(log.getvalue()) or read_report(  # not printed (a cache hit): run ptxas here
            _run_ptxas(get_ptxas(gpu.capability).path, kernel.asm["ptx"], f"sm_{case.target[3:]}"))
        if report is None:
            raise RuntimeError("cannot read ptxas's report")
        row.registers, row.spill_stores, row.spill_loads, row.stack = report
        row.shared = kernel.metadata.shared
    except Exception as e:  # a kernel that does not build is a failed row, not the end of the check
        row.errors.append(f"does not compile: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
    row.seconds = time.perf_counter() - start
    if row.registers is not None:
        row.errors += verdict(gpu, row.spill_stores, row.spill_loads, row.shared)
        row.warps_per_sm = occupancy(gpu, row.registers, row.shared, case.num_warps)
    return row


def _key(case):
    """Cases that compile the same kernel: the log-prob kernels do not depend on V beyond BLOCK_V."""
    return json.dumps({k: v for k, v in asdict(case).items() if k != "shape"}, sort_keys=True, default=str)


def run(cases, jobs=1):
    """Compile every case once; returns (rows, number of compilations)."""
    todo = list({_key(c): c for c in cases}.values())
    if jobs > 1:
        # spawned workers import Triton afresh, with this process's environment
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = dict(zip(map(_key, todo), pool.map(compile_case, todo)))
    else:
        done = {_key(c): compile_case(c) for c in todo}
    return [Row(**{**asdict(done[_key(c)]), "case": asdict(c)}) for c in cases], len(todo)


def tools_missing():
    """Why the check cannot run here, or None."""
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError as e:
        return f"Triton with its NVIDIA backend is needed: {e}"
    for gpu in GPUS.values():
        try:
            ptxas = get_ptxas(gpu.capability).path
        except Exception as e:  # Triton raises when it finds no ptxas
            return f"no ptxas for {gpu.name}: {e}"
        if not (ptxas and os.access(ptxas, os.X_OK)):
            return f"no ptxas for {gpu.name} (Triton ships it in triton/backends/nvidia/bin): {ptxas}"
    return None


def versions():
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    out = {"triton": triton.__version__}
    for name, gpu in GPUS.items():
        v = subprocess.run([get_ptxas(gpu.capability).path, "--version"], capture_output=True, text=True).stdout
        out[f"ptxas for {name}"] = (re.findall(r"release [\d.]+, V[\d.]+", v) or ["?"])[0]
    return out


# ----------------------------------------------------------------------------------------------
# Report


def _cell(x):
    return "-" if x is None else str(x)


def print_table(rows):
    head = (f"{'target':<7} {'dtype':<5} {'kernel':<27} {'shape':<8} {'variant':<22} {'config':<24} {'warps':>5} "
            f"{'stages':>6} {'regs':>4} {'spill B':>7} {'smem KiB':>8} {'warps/SM':>8}  status")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r.case
        smem = "-" if r.shared is None else f"{r.shared / 1024:.1f}"
        print(f"{c['target']:<7} {c['dtype']:<5} {c['kernel'].strip('_'):<27} {c['shape']:<8} {c['variant']:<22} "
              f"{c['config']:<24} {c['num_warps']:>5} {c['num_stages']:>6} {_cell(r.registers):>4} "
              f"{_cell(r.spill_stores):>7} {smem:>8} {_cell(r.warps_per_sm):>8}  "
              f"{'ok' if r.ok else 'FAIL: ' + '; '.join(r.errors)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true", help="only the part CI runs: sm_90a, bf16 attention at D = 64 "
                        "and 128, causal; the log-prob kernels in bf16 and fp32")
    parser.add_argument("--targets", nargs="+", choices=sorted(GPUS), help="only these GPUs")
    parser.add_argument("--dtypes", nargs="+", choices=["bf16", "fp16", "fp32"], help="only these dtypes")
    parser.add_argument("--head_dims", nargs="+", type=int, help="only these attention head dims")
    parser.add_argument("--vocabs", nargs="+", type=int, help="only these vocabulary sizes")
    parser.add_argument("--no-hints", dest="hints", action="store_false", help="compile without alignment hints")
    parser.add_argument("--jobs", type=int, default=1, help="compilations in parallel (default 1)")
    parser.add_argument("--json", help="write the versions, the matrix and every row here")
    args = parser.parse_args(argv)

    # The kernels must be Triton's JIT functions, not its interpreter's, and kernels/attention.py picks
    # its GPU tiles only outside the interpreter: both are decided when triton and the kernels are imported.
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default; set, 3.9 does not warn about it
    # a fresh cache: every row is compiled in this run, none read back from an earlier one
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel_compile_")
    missing = tools_missing()
    if missing:
        print(f"kernel_compile.py: cannot run the static check: {missing}", file=sys.stderr)
        return 2
    sizes = dict(CI if args.ci else FULL)
    for name in ("targets", "dtypes", "head_dims", "vocabs"):
        if getattr(args, name):
            sizes[name] = getattr(args, name)
    if args.dtypes:
        sizes["logprob_dtypes"] = args.dtypes
    cases = matrix(**sizes, hints=args.hints)
    start = time.perf_counter()
    rows, n_compiled = run(cases, args.jobs)
    seconds = time.perf_counter() - start
    info = versions()
    print(f"Static check of kernels/ (no GPU): {', '.join(f'{k} {v}' for k, v in info.items())}; "
          f"{'alignment hints as the launchers give them' if args.hints else 'no alignment hints'}\n")
    print_table(rows)
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} rows, {len(failed)} failed; {n_compiled} compilations in {seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(versions=info, matrix=sizes, hints=args.hints, seconds=seconds,
                                                   rows=[{**asdict(r), "ok": r.ok} for r in rows]), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
