"""
Past one device: two Gloo ranks on the CPU, each with half of every batch, take the same steps as one
process with the whole batch (to fp32 noise), with DistributedDataParallel and with FSDP2 (the
ranks' SFT, RM and PPO steps also in micro-batches); FSDP's
checkpoint loads in a single process; a rank that fails stops the whole job.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from test_scripts import ROOT, TINY_MODEL, run

# the real scripts, as subprocesses; one process runs the module (pytest -n), so the SFT runs fixture is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_distributed")]

ENV = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def torchrun(script, *args, ok=True, n=2):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--standalone",
                           os.path.join(ROOT, script), *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)
    if ok:
        assert done.returncode == 0, f"torchrun {script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def weights(path, key="model"):
    return torch.load(path, weights_only=True)[key]


def assert_same_weights(a, b, skip=()):
    assert a.keys() == b.keys()
    for k in a:
        if k not in skip:
            torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")


SFT = [*TINY_MODEL, "--max_iters=3", "--log_interval=1", "--eval_interval=3", "--eval_batches=2", "--n_builtin=200",
       "--n_gold_eval=4", "--batch_size=8", "--warmup_iters=1", "--max_new_tokens=8", "--threads=1"]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run("train_sft.py", f"--out_dir={out}/one", *SFT)
    # the ranks in micro-batches: gradients that add up on each rank, reduced over ranks once per step
    torchrun("train_sft.py", "--device=cpu", f"--out_dir={out}/ddp", "--micro_batches=2", *SFT)
    torchrun("train_sft.py", "--device=cpu", f"--out_dir={out}/fsdp", "--fsdp", "--micro_batches=2", *SFT)
    return out


def test_sft_steps_on_two_ranks_equal_one_process(sft_runs):
    one = [json.loads(line) for line in open(sft_runs / "one" / "metrics.jsonl")]
    for name in ("ddp", "fsdp"):
        assert_same_weights(weights(sft_runs / name / "ckpt.pt"), weights(sft_runs / "one" / "ckpt.pt"))
        rows = [json.loads(line) for line in open(sft_runs / name / "metrics.jsonl")]
        for a, b in zip(rows, one):  # the losses of the whole batch, not of one rank's half
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5), name
            assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4), name
        assert rows[-1]["eval/loss"] == pytest.approx(one[-1]["eval/loss"], rel=1e-5)


def test_fsdp_checkpoint_loads_in_one_process(sft_runs):
    from minirlhf.checkpoint import load_checkpoint
    model, tokenizer, ckpt = load_checkpoint(str(sft_runs / "fsdp" / "ckpt.pt"))
    assert ckpt["finished"] and ckpt["train_config"]["fsdp"]
    idx = torch.tensor([tokenizer.encode("add 1 2\n")])
    reference, _, _ = load_checkpoint(str(sft_runs / "one" / "ckpt.pt"))
    torch.testing.assert_close(model(idx), reference(idx), atol=1e-5, rtol=1e-5)


def test_rm_steps_on_two_ranks_equal_one_process(sft_runs, tmp_path):
    from minirlhf.tasks.__main__ import main as export
    export(["--task=instruct", f"--out_dir={tmp_path}/data", "--n_sft=4", "--n_prompts=4", "--n_comparisons=12",
            "--n_eval=6"])
    args = [f"--sft_ckpt={sft_runs}/one/ckpt.pt", f"--data={tmp_path}/data/comparisons_train.jsonl",
            f"--eval_data={tmp_path}/data/comparisons_eval.jsonl", "--batch_size=4", "--epochs=1", "--log_interval=1",
            "--eval_interval=3", "--n_bias_samples=4", "--threads=1", "--max_new_tokens=8"]
    run("train_rm.py", f"--out_dir={tmp_path}/one", *args)
    torchrun("train_rm.py", "--device=cpu", f"--out_dir={tmp_path}/ddp", "--micro_batches=2", *args)
    # FSDP2 too: a prompt read once for its responses runs every block twice in one forward
    torchrun("train_rm.py", "--device=cpu", f"--out_dir={tmp_path}/fsdp", "--micro_batches=2", "--fsdp", *args)
    one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    for name in ("ddp", "fsdp"):
        # the final bias step averages the reward of samples each rank draws with its own seed: only it differs
        assert_same_weights(weights(tmp_path / name / "ckpt.pt"), weights(tmp_path / "one" / "ckpt.pt"),
                            skip=("score_head.bias",))
        two = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        assert [r["train/loss"] for r in two] == pytest.approx([r["train/loss"] for r in one], rel=1e-5)
        assert [r["train/accuracy"] for r in two] == [r["train/accuracy"] for r in one]
        assert two[-1]["eval/accuracy"] == one[-1]["eval/accuracy"]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_ppo_update_on_two_ranks_equals_one_process(tmp_path, fsdp):
    flags = ["--fsdp"] if fsdp else []
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "dist_ppo_step.py"), str(tmp_path / "one.pt")],
                   check=True, env=ENV, cwd=ROOT, timeout=300)
    torchrun(os.path.join("tests", "dist_ppo_step.py"), str(tmp_path / "two.pt"), *flags)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    # the whitening and the logged statistics are the whole batch's
    torch.testing.assert_close(two["advantages"], one["advantages"], atol=1e-6, rtol=1e-5)
    assert two["explained_variance"] == pytest.approx(one["explained_variance"], rel=1e-5)
    assert two["stats"].keys() == one["stats"].keys()
    for k in one["stats"]:
        assert two["stats"][k] == pytest.approx(one["stats"][k], rel=1e-4, abs=1e-7), k
    assert_same_weights(two["policy"], one["policy"])
    assert_same_weights(two["value"], one["value"])
    assert one["first_error"] < 1e-5 and two["first_error"] < 1e-5


def test_ppo_runs_under_torchrun(sft_runs, tmp_path):
    """The whole script on two ranks, as `torchrun --nproc_per_node=2 train_ppo.py --iterations=3` runs it."""
    run("train_rm.py", f"--out_dir={tmp_path}/rm", f"--sft_ckpt={sft_runs}/one/ckpt.pt", "--n_prompts=8",
        "--n_eval_prompts=4", "--k=2", "--batch_size=4", "--n_bias_samples=4", "--max_new_tokens=8", "--threads=1")
    done = torchrun("train_ppo.py", "--device=cpu", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={sft_runs}/one/ckpt.pt",
                    f"--rm_ckpt={tmp_path}/rm/ckpt.pt", "--iterations=3", "--batch_size=8", "--n_minibatches=2",
                    "--n_eval=6", "--max_new_tokens=8", "--save_interval=2", "--threads=1")
    assert done.stdout.count("iter 3/3") == 1  # one rank speaks
    rows = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["n_prompts"] == 6 and len(summary["examples"]) == 6  # gathered from both ranks
    from minirlhf.checkpoint import read_checkpoint
    assert read_checkpoint(str(tmp_path / "ppo" / "ckpt.pt"))["finished"]


def test_a_failing_rank_stops_the_job(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "import time\n"
        "from dataclasses import dataclass\n"
        "import torch.distributed as dist\n"
        "from minirlhf import distributed\n"
        "from minirlhf.config import main\n"
        "def run(cfg):\n"
        "    d, _, _ = distributed.setup(cfg, show_config=False)\n"
        "    if d.rank == 1:\n"
        "        raise ValueError('rank 1 found bad input')\n"
        "    dist.barrier()  # rank 0 waits for a rank that will never come\n"
        "    time.sleep(600)\n"
        "@dataclass\n"
        "class Config:\n"
        "    device: str = 'cpu'\n"
        "    dtype: str = 'fp32'\n"
        "    threads: int = 0\n"
        "main(run, Config, 'fail.py')\n")
    t0 = time.time()
    done = torchrun(str(script), ok=False)
    assert done.returncode != 0 and time.time() - t0 < 60
    assert "fail.py: error: rank 1 found bad input" in done.stderr


def test_a_bad_option_under_torchrun_is_said_once(tmp_path):
    """Every rank refuses a bad option (exit 2); only rank 0 says why, in one line (torchrun then adds its
    own report of the failed ranks), and nothing is written."""
    done = torchrun("train_sft.py", "--device=cpu", f"--out_dir={tmp_path}/sft", "--learning_rate=-1", ok=False)
    assert done.returncode != 0 and done.stderr.count("train_sft.py: error: --learning_rate must be > 0") == 1
    assert not (tmp_path / "sft").exists()


def test_shutdown_runs_the_exit_handlers_and_skips_finalization(tmp_path):
    # Gloo's threads may free Python-backed tensors after a run; once the interpreter is finalizing that aborts the
    # process, so a rank leaves after its exit handlers (which release the out_dir) without finalizing
    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, os\n"
        "import torch.distributed as dist\n"
        "from minirlhf import distributed\n"
        "class Finalized:\n"
        "    def __del__(self): print('finalized', flush=True)\n"
        "kept = Finalized()\n"
        "atexit.register(lambda: print('exit handler', flush=True))\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='0')\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "distributed.shutdown()\n"
        "print('shut down', flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shut", "down", "exit", "handler"]  # no "finalized": the interpreter never was
