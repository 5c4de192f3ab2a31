"""
benchmarks/gpu.py, the one command of a GPU window, in its smoke mode: every stage on the CPU, the
kernels under Triton's interpreter, tiny shapes. The GPU run gets one short window, so its code paths
are checked here: every stage must run and succeed, and leave the files and the numbers the summary is
made of (numbers that mean nothing on a CPU, but must be there).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("gpu_smoke")  # one process runs the module: the smoke run is made once

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["env", "tests", "bench_attention", "bench_logprobs", "ppo_iteration", "scripts"]


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_every_stage_runs_and_leaves_its_files(smoke):
    # what comes back from the GPU machine: at most 8 plain files, no folders
    assert sorted(p.name for p in smoke.iterdir()) == sorted(["summary.md", "results.json"] +
                                                             [f"{s}.log" for s in STAGES])
    results = json.loads((smoke / "results.json").read_text())
    assert results["smoke"] is True and list(results["stages"]) == STAGES
    for name, stage in results["stages"].items():
        assert stage["ok"] and stage["returncode"] == 0 and stage["error"] is None, (name, stage)
        assert number(stage["seconds"]) and stage["seconds"] < stage["budget_s"]
        assert (smoke / stage["log"]).read_text().strip()
    summary = (smoke / "summary.md").read_text()
    assert "SMOKE RUN" in summary and all(f"| {s} | ok |" in summary for s in STAGES)


@pytest.mark.slow
def test_every_stage_holds_numbers(smoke):
    s = {name: stage["result"] for name, stage in json.loads((smoke / "results.json").read_text())["stages"].items()}
    assert s["env"]["copy_bandwidth_bytes_per_s"] > 0 and s["env"]["matmul_flops_per_s"] > 0
    assert s["tests"]["passed"] > 0 and s["tests"]["failed"] == s["tests"]["errors"] == 0

    training, decode = s["bench_attention"]["training"], s["bench_attention"]["decode"]
    providers = {"flash (ours)", "sdpa flash", "flash + key_start (ours)", "sdpa + bool mask", "attention_reference"}
    assert {r["provider"] for r in training} == providers
    for r in training:
        assert all(number(r[k]) and r[k] > 0 for k in ("fwd_ms", "fwd_bwd_ms", "fwd_tflops", "fwd_bwd_tflops")), r
    assert {r["B"] for r in decode} == {1, 2} and {r["provider"] for r in decode} == {"flash (ours)", "sdpa"}
    assert all(number(r["latency_us"]) and r["gb_per_s"] > 0 and r["roofline_fraction"] > 0 for r in decode)

    token_rows = s["bench_logprobs"]["token_logprobs"]
    assert {r["impl"] for r in token_rows} == {"triton", "torch"}
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_bwd_roofline_fraction"] > 0 for r in token_rows)
    assert {r["impl"] for r in s["bench_logprobs"]["linear_token_logprobs"]} == {"matmuls", "triton", "torch"}

    ppo = s["ppo_iteration"]
    assert set(ppo["impls"]) == {"triton", "torch"}
    for impl in ppo["impls"].values():
        assert set(impl["phases"]) == {"rollout", "scoring", "update", "iteration"}
        for phase in impl["phases"].values():
            assert all(number(phase[k]) and phase[k] > 0 for k in ("seconds", "tokens_per_s", "flops_per_s", "mfu"))
        assert all(number(v) for v in impl["metrics"]["first_minibatch"].values())

    (row,) = s["scripts"]["ppo_metrics"]  # one PPO iteration
    assert all(number(row[k]) for k in ("objective/rm_score", "objective/kl", "losses/pg_loss", "losses/vf_loss"))
    assert set(s["scripts"]["seconds"]) == {"train_sft.py", "train_rm.py", "train_ppo.py"}
