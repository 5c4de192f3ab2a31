"""
The code path CUDA takes, run on the CPU: the Triton kernels (attention, log-probs) under
TRITON_INTERPRET=1 (tests/conftest.py sets it) and 16-bit autocast (fp16: the interpreter has no
bf16), through SFT, the reward model and PPO. What must hold there as on a GPU: no error; the
rollout's log-probs are the update's (at the first minibatch the ratio is 1 and at iteration 1 the
KL to the reference is 0, to fp16 noise); the losses are finite. And the lr = 0 check (trlx#508,
"The N+ implementation details of RLHF with PPO"): with a learning rate of 0 nothing may move, so
every minibatch's approx_kl and clipfrac are 0 and the KL to the reference stays 0, on both paths.
"""
import json
import os

import pytest
import torch
from test_scripts import run

# the real scripts, as subprocesses; one process runs the module (pytest -n), so the stages fixture is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_cuda_path")]

# on a GPU the same tests run there, natively in bf16
CUDA_PATH = ["--device=cuda", "--kernels=triton", "--dtype=bf16"] if torch.cuda.is_available() else \
    ["--kernels=triton", "--dtype=fp16"]
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=48"]  # head size 16: the kernels' smallest
# log-prob differences between a cached decode step and a full forward in 16 bits, on these tiny models
# (measured: ~2e-5); tests/test_model.py checks the precision of the rollout's log-probs more sharply
FP16_NOISE = 1e-3


def rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py
    out = tmp_path_factory.mktemp("cuda_path")
    run("train_sft.py", f"--out_dir={out}/sft", *CUDA_PATH, *TINY, "--max_iters=2", "--batch_size=4",
        "--log_interval=1", "--eval_interval=2", "--eval_batches=1", "--n_builtin=50", "--n_gold_eval=4",
        "--max_new_tokens=6")
    run("train_rm.py", f"--out_dir={out}/rm", f"--sft_ckpt={out}/sft/ckpt.pt", *CUDA_PATH, "--n_prompts=4",
        "--n_eval_prompts=2", "--k=2", "--batch_size=2", "--epochs=1", "--log_interval=1", "--eval_interval=2",
        "--n_bias_samples=2", "--max_new_tokens=6")
    return out


def ppo(out, name, *args):
    run("train_ppo.py", f"--out_dir={out}/{name}", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rm/ckpt.pt",
        "--batch_size=4", "--n_minibatches=2", "--ppo_epochs=1", "--n_eval=2", "--max_new_tokens=6",
        "--ref_temperature=1", "--advantage=gae", "--group_size=1", *args)  # a KL of 0 at iteration 1; a value model
    return rows(out / name / "metrics.jsonl")


def test_sft_and_rm_on_the_cuda_path(stages):
    for stage, keys in (("sft", ("train/loss", "eval/loss")), ("rm", ("train/loss", "eval/accuracy"))):
        metrics = rows(stages / stage / "metrics.jsonl")
        assert metrics and all(r[k] is not None for r in metrics for k in keys if k in r)
        assert json.loads((stages / stage / "summary.json").read_text())["skipped_steps"] == 0


def test_ppo_iteration_on_the_cuda_path(stages):
    metrics = ppo(stages, "ppo", *CUDA_PATH, "--iterations=1", "--learning_rate=1e-3")
    (row,) = metrics
    assert abs(row["objective/kl"]) < FP16_NOISE  # policy == reference at iteration 1
    assert row["debug/first_minibatch_logprob_error"] < FP16_NOISE  # ratio == 1 on the first minibatch
    for key in ("losses/pg_loss", "losses/vf_loss", "policy/entropy", "objective/rm_score"):
        assert row[key] is not None, key  # None is what a NaN becomes in metrics.jsonl


@pytest.mark.parametrize("name, path", [("torch", ["--kernels=torch"]), ("triton", CUDA_PATH)])
def test_nothing_moves_at_learning_rate_zero(stages, name, path):
    metrics = ppo(stages, f"lr0_{name}", *path, "--iterations=2", "--learning_rate=0", "--ppo_epochs=2")
    noise = 1e-5 if name == "torch" else FP16_NOISE
    for row in metrics:
        # approx_kl = mean (log ratio)^2 / 2 and clipfrac are >= 0 per minibatch: a mean of 0 means every one is 0
        assert row["policy/approx_kl"] < noise ** 2 and row["policy/clipfrac"] == 0.0
        assert abs(row["objective/kl"]) < noise and row["debug/first_minibatch_logprob_error"] < noise
