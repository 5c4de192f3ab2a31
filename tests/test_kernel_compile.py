"""
The static GPU check in CI (benchmarks/kernel_compile.py): every Triton kernel of kernels/ compiled ahead
of time for sm_90a (H100/H200) in bf16 at head dims 64 and 128, the log-prob kernels in bf16 and fp32 at
V = 50304 and 128256, with every configuration their launchers and autotuners can pick. None may fail to
compile, need more shared memory than a block may have, or spill registers. No GPU is needed: Triton
compiles for a target named by hand and ships the ptxas that reports registers and spills; missing
tools fail the test, they do not skip it. The whole matrix (sm_80, fp16, D = 96, non-causal
attention) is `python benchmarks/kernel_compile.py`.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")  # no Triton at all (macOS, Windows): there is nothing to compile

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "kernel_compile.py"
spec = importlib.util.spec_from_file_location("kernel_compile", SCRIPT)
kernel_compile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_compile)  # its helpers only: it imports triton and the kernels in main()
H100 = kernel_compile.GPUS["sm_90a"]


def compile_env():
    """The test session runs the kernels in the interpreter (tests/conftest.py): the check must not."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.slow
def test_every_kernel_compiles_for_h100_without_spilling(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--ci", f"--json={out}"], cwd=ROOT, env=compile_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode != 2, f"the static check's tools are missing: {done.stderr}"
    rows = json.loads(out.read_text())["rows"]
    failed = [f"{r['case']['kernel']} {r['case']['shape']} {r['case']['variant']} {r['case']['config']} "
              f"w={r['case']['num_warps']} s={r['case']['num_stages']}: {r['errors']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for r in rows:  # numbers read from ptxas, not blanks
        assert r["registers"] > 0 and r["spill_stores"] == r["spill_loads"] == 0 and r["warps_per_sm"] > 0, r
        assert 0 <= r["shared"] <= H100.smem_per_block, r
    # every kernel of kernels/ is in the matrix, at every size asked for
    kernels = {name for path in (ROOT / "kernels").glob("*.py")
               for name in re.findall(r"^def (_\w+_kernel)\(", path.read_text(), re.M)}
    seen = {(r["case"]["kernel"], r["case"]["shape"]) for r in rows}
    for kernel in kernels:
        shapes = ["V=50304", "V=128256"] if "logprobs" in kernel else ["D=64", "D=128"]
        assert all((kernel, shape) in seen for shape in shapes), (kernel, shapes)
    assert {r["case"]["dtype"] for r in rows if "logprobs" in r["case"]["kernel"]} == {"bf16", "fp32"}


def test_a_spilling_kernel_fails_the_check():
    """The check is not vacuous: attention on fp32 inputs with a 16 x 64 tile (exact fp32 dots hold their
    operands in registers) spills on sm_90a, and that row fails."""
    code = ("import os, sys, json; os.environ['TRITON_INTERPRET'] = '0'; sys.path.insert(0, 'benchmarks')\n"
            "import kernel_compile as K\n"
            "case = K.Case('_attn_fwd_kernel', 'kernels.attention', 'sm_90a', 'fp32', 'D=64', 'causal', '16x64', "
            "dict(HEAD_DIM=64, BLOCK_D=64, DOT_PRECISION='ieee', CAUSAL=True, BLOCK_M=16, BLOCK_N=64), 4, 3)\n"
            "row = K.compile_case(case)\n"
            "print(json.dumps(dict(errors=row.errors, spill=row.spill_stores, registers=row.registers)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=compile_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["spill"] > 0 and any("spills" in e for e in row["errors"]), row


def test_shared_memory_and_spills_decide_the_verdict():
    assert kernel_compile.verdict(H100, 0, 0, H100.smem_per_block) == []
    assert "shared memory" in kernel_compile.verdict(H100, 0, 0, H100.smem_per_block + 1)[0]
    assert kernel_compile.verdict(H100, 0, 8, 0) == ["spills 0 B"]  # spill loads alone fail too
    a100 = kernel_compile.GPUS["sm_80"]
    assert kernel_compile.verdict(a100, 0, 0, 200 * 1024) and not kernel_compile.verdict(H100, 0, 0, 200 * 1024)


def test_occupancy():
    # 8 warps of 128 registers: 4096 registers a warp, 16 warps fit in 65536; no shared memory limit
    assert kernel_compile.occupancy(H100, 128, 0, 8) == 16
    # 255 registers are allocated as 256: 8 warps, one block of 8
    assert kernel_compile.occupancy(H100, 255, 0, 8) == 8
    # 100 KiB of shared memory a block: two blocks of 4 warps fit in 228 KiB
    assert kernel_compile.occupancy(H100, 32, 100 * 1024, 4) == 8
    assert kernel_compile.occupancy(H100, 32, 0, 1) == 32  # at most 32 blocks an SM


def test_ptxas_report_is_read():
    log = ("ptxas info    : Compiling entry function '_attn_fwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _attn_fwd_kernel\n"
           "    376 bytes stack frame, 848 bytes spill stores, 968 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 376 bytes cumulative stack size\n")
    assert kernel_compile.read_report(log) == (255, 848, 968, 376)
    assert kernel_compile.read_report("no report") is None


def test_missing_tools_are_an_error_not_a_skip():
    """Without Triton's NVIDIA backend (and its ptxas) the check exits with status 2, which the CI test
    above turns into a failure."""
    code = ("import runpy, sys; sys.modules['triton.backends.nvidia.compiler'] = None\n"
            f"sys.argv = ['kernel_compile.py', '--ci']; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=compile_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "cannot run the static check" in done.stderr, done.stderr[-2000:]
