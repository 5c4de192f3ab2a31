"""
Runs that survive: a run killed with SIGKILL at any point and resumed ends with the same weights as
an uninterrupted one (bitwise, on the CPU); nothing a user has is lost or half-written; non-finite
weights never reach a checkpoint; every bad input is a one-line error that leaves existing files
byte-identical.
"""
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from test_scripts import ROOT, TINY_MODEL, command, run

from minirlhf.checkpoint import read_checkpoint

# the real scripts, as subprocesses; one process runs the module (pytest -n), so the runs fixture is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_resume")]

SFT = [*TINY_MODEL, "--max_iters=12", "--log_interval=3", "--eval_interval=6", "--n_builtin=200", "--n_gold_eval=4",
       "--batch_size=8", "--threads=1", "--max_new_tokens=8"]
GAE = ["--advantage=gae", "--group_size=1"]  # PPO with a value model, which resumes with the policy
PPO = ["--iterations=6", "--batch_size=4", "--n_minibatches=2", "--ppo_epochs=2", "--n_eval=4", "--save_interval=2",
       "--max_new_tokens=8", "--threads=1", "--ptx_coef=0.1", "--adaptive_kl=true", *GAE]


def killed_at(script, marker, *args):
    """Run script and SIGKILL it as soon as a line of its output starts with marker."""
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([*command(script), "--device=cpu", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=ROOT)
    for line in p.stdout:
        if line.startswith(marker):
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL, f"{script} ended before {marker!r}"


def weights(path, key="model"):
    ckpt = torch.load(path, weights_only=True)
    return ckpt[key] if key == "model" else ckpt[key]["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_rows(path):
    """The metrics without the clock readings (times, throughputs)."""
    return [{k: v for k, v in json.loads(line).items() if not (k.startswith("time") or k.endswith("per_s"))}
            for line in open(path)]


def snapshot(directory):
    """{relative path: sha256} of every file below directory, but a lock a killed run left (the next run
    takes it over: minirlhf/runs.py hold)."""
    return {os.path.relpath(os.path.join(root, name), directory): hashlib.sha256(open(os.path.join(root, name), "rb")
                                                                                   .read()).hexdigest()
            for root, _, names in os.walk(directory) for name in names if name != "run.lock"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted SFT run, a reward model, and an uninterrupted PPO run, all tiny."""
    out = tmp_path_factory.mktemp("resume")
    run("train_sft.py", f"--out_dir={out}/sft", *SFT)
    run("train_rm.py", f"--out_dir={out}/rm", f"--sft_ckpt={out}/sft/ckpt.pt", "--n_prompts=8", "--n_eval_prompts=4",
        "--k=2", "--batch_size=4", "--log_interval=1", "--eval_interval=2", "--n_bias_samples=4",
        "--max_new_tokens=8")
    run("train_ppo.py", f"--out_dir={out}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rm/ckpt.pt", *PPO)
    return out


@pytest.mark.parametrize("marker", ["step  9/12", "held-out gold score"])  # between checkpoints; after the last step
def test_sft_killed_and_resumed_ends_bitwise_equal(runs, tmp_path, marker):
    killed_at("train_sft.py", marker, f"--out_dir={tmp_path}/sft", *SFT)
    ckpt = read_checkpoint(str(tmp_path / "sft" / "ckpt.pt"))
    assert not ckpt["finished"] and "state" in ckpt
    done = run("train_sft.py", f"--out_dir={tmp_path}/sft", *SFT, ok=False)  # a plain rerun refuses to touch it
    assert done.returncode == 2 and "unfinished run" in done.stderr and "--resume" in done.stderr
    stale = tmp_path / "sft" / "ckpt.pt.tmp999999999"  # what a kill in the middle of a save leaves
    stale.write_bytes(b"half a checkpoint")
    run("train_sft.py", f"--out_dir={tmp_path}/sft", "--resume", *SFT)
    assert not stale.exists()
    assert same_weights(weights(tmp_path / "sft" / "ckpt.pt"), weights(runs / "sft" / "ckpt.pt"))
    assert metric_rows(tmp_path / "sft" / "metrics.jsonl") == metric_rows(runs / "sft" / "metrics.jsonl")
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["gold_greedy"] == json.loads((runs / "sft" / "summary.json").read_text())["gold_greedy"]


def test_ppo_killed_and_resumed_ends_bitwise_equal(runs, tmp_path):
    args = [f"--sft_ckpt={runs}/sft/ckpt.pt", f"--rm_ckpt={runs}/rm/ckpt.pt", *PPO]
    killed_at("train_ppo.py", "iter 4/6", f"--out_dir={tmp_path}/ppo", *args)
    assert read_checkpoint(str(tmp_path / "ppo" / "ckpt.pt"))["step"] == 2  # the line comes before the save
    run("train_ppo.py", f"--out_dir={tmp_path}/ppo", "--resume", *args)
    for key in ("model", "value_model"):  # policy and value model, saved together
        assert same_weights(weights(tmp_path / "ppo" / "ckpt.pt", key), weights(runs / "ppo" / "ckpt.pt", key)), key
    assert metric_rows(tmp_path / "ppo" / "metrics.jsonl") == metric_rows(runs / "ppo" / "metrics.jsonl")
    # the run's time counts the killed process's iterations too, not only the resumed ones
    times = [r["time/iteration"] for r in map(json.loads, open(tmp_path / "ppo" / "metrics.jsonl"))]
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["ppo_seconds"] > sum(times)


def test_critic_free_ppo_killed_and_resumed_ends_bitwise_equal(runs, tmp_path):
    """A run without a value model: its checkpoints hold the policy alone, and resuming one goes on exactly."""
    args = [f"--sft_ckpt={runs}/sft/ckpt.pt", f"--rm_ckpt={runs}/rm/ckpt.pt", *PPO, "--advantage=rloo",
            "--group_size=2", "--kl_in=loss"]
    run("train_ppo.py", f"--out_dir={tmp_path}/whole", *args)
    killed_at("train_ppo.py", "iter 4/6", f"--out_dir={tmp_path}/ppo", *args)
    assert "value_model" not in read_checkpoint(str(tmp_path / "ppo" / "ckpt.pt"))
    run("train_ppo.py", f"--out_dir={tmp_path}/ppo", "--resume", *args)
    assert same_weights(weights(tmp_path / "ppo" / "ckpt.pt"), weights(tmp_path / "whole" / "ckpt.pt"))
    assert metric_rows(tmp_path / "ppo" / "metrics.jsonl") == metric_rows(tmp_path / "whole" / "metrics.jsonl")


def test_resume_checks_the_run(runs, tmp_path):
    done = run("train_sft.py", f"--out_dir={tmp_path}/new", "--resume", *SFT, ok=False)
    assert done.returncode == 2 and "holds no run to resume" in done.stderr
    done = run("train_sft.py", f"--out_dir={runs}/sft", "--resume", *SFT, ok=False)
    assert done.returncode == 2 and "finished run, there is nothing to resume" in done.stderr
    killed_at("train_sft.py", "step  9/12", f"--out_dir={tmp_path}/sft", *SFT)
    before = snapshot(tmp_path / "sft")
    done = run("train_sft.py", f"--out_dir={tmp_path}/sft", "--resume", *SFT[:-1], "--max_new_tokens=9", ok=False)
    assert done.returncode == 2 and "--max_new_tokens=9 (was 8)" in done.stderr
    # what to do instead: the command the run was started with, or start over
    assert f"finish it with `python train_sft.py --device=cpu --out_dir={tmp_path}/sft {' '.join(SFT)} --resume`, " \
           "or start over with --overwrite" in done.stderr
    assert snapshot(tmp_path / "sft") == before


def test_later_stages_never_take_an_unfinished_checkpoint(runs, tmp_path):
    killed_at("train_sft.py", "step  9/12", f"--out_dir={tmp_path}/sft", *SFT)
    done = run("train_rm.py", f"--out_dir={tmp_path}/rm", f"--sft_ckpt={tmp_path}/sft/ckpt.pt", ok=False)
    assert done.returncode == 2 and "is an unfinished run (stopped at step 6 of 12)" in done.stderr
    assert f"finish it first with `python train_sft.py --device=cpu --out_dir={tmp_path}/sft " in done.stderr
    done = run("train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={tmp_path}/sft/ckpt.pt",
               f"--rm_ckpt={runs}/rm/ckpt.pt", ok=False)
    assert done.returncode == 2 and "is an unfinished run" in done.stderr
    # a typo in --sft_ckpt is an error, not a new default SFT run somewhere
    done = run("train_ppo.py", f"--out_dir={tmp_path}/ppo2", f"--sft_ckpt={tmp_path}/sfx/ckpt.pt", ok=False)
    assert done.returncode == 2 and "does not exist" in done.stderr and not (tmp_path / "sfx").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(runs, tmp_path):
    (tmp_path / "sft").mkdir()
    for name in os.listdir(runs / "sft"):
        (tmp_path / "sft" / name).write_bytes((runs / "sft" / name).read_bytes())
    before = snapshot(tmp_path / "sft")
    done = run("train_sft.py", f"--out_dir={tmp_path}/sft", *SFT, ok=False)
    assert done.returncode == 2 and "already holds a finished run" in done.stderr
    killed_at("train_sft.py", "step  3/12", f"--out_dir={tmp_path}/sft", "--overwrite", *SFT[:-1],
              "--max_new_tokens=9")
    assert snapshot(tmp_path / "sft") == before  # killed before its first checkpoint: the old run is intact
    run("train_sft.py", f"--out_dir={tmp_path}/sft", "--overwrite", *SFT, "--max_iters=6")
    assert read_checkpoint(str(tmp_path / "sft" / "ckpt.pt"))["step"] == 6
    assert [r["step"] for r in metric_rows(tmp_path / "sft" / "metrics.jsonl")] == [3, 6]


def test_non_finite_weights_are_never_saved(tmp_path):
    # a learning rate so high that the first step's weights overflow: the loss turns NaN, steps are
    # skipped, and the checkpoint step refuses the weights
    done = run("train_sft.py", f"--out_dir={tmp_path}/sft", *SFT, "--learning_rate=1e38", "--min_lr=0",
               "--warmup_iters=0", "--max_bad_steps=100", ok=False)
    assert done.returncode == 2 and "refusing to save a checkpoint" in done.stderr and "Traceback" not in done.stderr
    assert "non-finite loss, reward or gradient: step skipped" in done.stdout
    assert not (tmp_path / "sft" / "ckpt.pt").exists()
    rows = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]  # valid JSON
    assert any(r["train/loss"] is None for r in rows)  # NaN is written as null
    # and after max_bad_steps skipped steps in a row the run stops
    done = run("train_sft.py", f"--out_dir={tmp_path}/sft2", *SFT, "--learning_rate=1e38", "--min_lr=0",
               "--warmup_iters=0", "--max_bad_steps=2", ok=False)
    assert done.returncode == 2 and "2 steps in a row had a non-finite loss, reward or gradient" in done.stderr


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, args, message", [
    ("train_sft", ["--learning_rate=inf"], "--learning_rate must be a finite number"),
    ("train_sft", ["--device=banana"], "--device must be auto, cpu, cuda or cuda:N"),
    ("train_ppo", ["--kl_coef"], "--kl_coef needs a value"),
    ("train_rm", ["k=3"], "argument 'k=3': options are written --key=value"),
    ("train_sft", ["--threads=-1"], "--threads must be >= 0"),
    ("train_sft", ["--out_dir="], "--out_dir must be a directory path"),
    ("train_sft", ["--out_dir={runs}/sft/summary.json"], "is a file, not a directory"),
    ("train_sft", ["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    ("train_sft", ["--data=nowhere.jsonl"], "--data: nowhere.jsonl does not exist"),
    ("train_rm", ["--n_bias_samples=0"], "--n_bias_samples must be at least 1"),
    ("train_rm", ["--sample_temperature=-1"], "--sample_temperature must be >= 0"),
    ("train_rm", ["--k=1"], "--k must be at least 2"),
    ("train_ppo", ["--n_eval=0"], "--n_eval must be at least 1"),
    ("train_ppo", ["--kl_coef=-1"], "--kl_coef must be >= 0"),
    ("train_ppo", ["--clip_range=-0.2"], "--clip_range must be > 0"),
    ("train_ppo", ["--gamma=5"], "--gamma must be in [0, 1]"),
    ("train_ppo", ["--lam=-3"], "--lam must be in [0, 1]"),
    ("train_ppo", ["--kl_target=0"], "--kl_target must be > 0"),
    ("train_ppo", ["--temperature=-1"], "--temperature must be > 0"),
    ("train_ppo", ["--temperature=nan"], "--temperature must be a finite number"),
    ("train_ppo", ["--batch_size=ten"], "--batch_size: expected int"),
    ("train_ppo", ["--batch_size=10", "--n_minibatches=4"], "--n_minibatches must be a divisor of --batch_size=10"),
    ("train_ppo", ["--task=poetry"], "--task=poetry: unknown task 'poetry'"),
    ("train_ppo", ["--max_iterz=3"], "unknown option --max_iterz"),
] + ([("train_sft", ["--device=cuda"], "no such CUDA GPU here")] if not torch.cuda.is_available() else []))
def test_bad_options_are_one_line_errors_that_touch_nothing(runs, monkeypatch, capsys, name, args, message):
    """Checked when the options are parsed, before anything is read or written (in-process: the
    command line's parse-and-run, without starting an interpreter per case)."""
    module = script(name)
    out_dir = runs / {"train_sft": "sft", "train_rm": "rm", "train_ppo": "ppo"}[name]
    args = [a.format(runs=runs) for a in args]
    before = {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")}
    monkeypatch.setattr(sys, "argv", [f"{name}.py", f"--out_dir={out_dir}", *args])
    with pytest.raises(SystemExit) as exit_:
        module.config.main(module.main, module.Config, f"{name}.py", name.split("_")[1])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"{name}.py: error: ") and message in err
    assert {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")} == before


@pytest.mark.parametrize("args, message", [
    (["--max_new_tokens=64"], "--max_new_tokens=64 leaves no room for a prompt, block_size=64"),
    (["--prompts={long}", "--eval_prompts={short}"], "long.jsonl:2: prompt of 72 tokens, more than the 40"),
    (["--prompts={short}", "--eval_prompts={long}"], "long.jsonl:2: prompt of 72 tokens, more than the 40"),
])
def test_ppo_prompts_without_room_for_a_response_are_errors_before_any_update(runs, tmp_path, monkeypatch, capsys,
                                                                              args, message):
    """Checked once the models are loaded (their block_size decides), the report's prompts included,
    before the first rollout: nothing is written."""
    (tmp_path / "short.jsonl").write_text(json.dumps({"prompt": "add 1 2"}) + "\n")
    (tmp_path / "long.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in ("add 1 2", "add 1 2 " * 9)))
    module = script("train_ppo")
    args = [a.format(long=tmp_path / "long.jsonl", short=tmp_path / "short.jsonl") for a in args]
    monkeypatch.setattr(sys, "argv", ["train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={runs}/sft/ckpt.pt",
                                      f"--rm_ckpt={runs}/rm/ckpt.pt", "--device=cpu", *args])
    with pytest.raises(SystemExit) as exit_:
        module.config.main(module.main, module.Config, "train_ppo.py", "ppo")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "ppo").exists()  # the out_dir this run made is gone with it, lock and all


def in_process(name, *args):
    """(exit status, stderr) of scripts/<name>.py run in this process with args (a failure's path)."""
    module = script(name)
    sys_argv = sys.argv
    sys.argv = [f"{name}.py", "--device=cpu", *args]
    try:
        module.config.main(module.main, module.Config, f"{name}.py", name.split("_")[1])
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = sys_argv
    return 0


def test_every_stage_checks_the_kind_of_each_checkpoint(runs, tmp_path, capsys):
    """A reward model where a policy belongs, or the other way round, or a file that is no checkpoint, is a
    one-line error naming the option, before anything is trained or written."""
    sft, rm, ppo = runs / "sft" / "ckpt.pt", runs / "rm" / "ckpt.pt", runs / "ppo" / "ckpt.pt"
    (tmp_path / "sft.jsonl").write_text(json.dumps({"prompt": "add 1 2", "completion": "3"}) + "\n")
    policy, reward = "a policy (a language model, no scalar head), not a reward model", \
        "a reward or value model (it has a scalar head), not a policy"
    cases = [("train_ppo", [f"--sft_ckpt={rm}", f"--rm_ckpt={rm}"], f"--sft_ckpt={rm} is {reward}"),
             ("train_ppo", [f"--sft_ckpt={sft}", f"--rm_ckpt={sft}"], f"--rm_ckpt={sft} is {policy}"),
             ("train_ppo", [f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", f"--init_from={rm}"],
              f"--init_from={rm} is {reward}"),
             ("train_ppo", [f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", f"--init_from={sft}", *GAE],
              "holds no value_model"),
             ("train_rm", [f"--sft_ckpt={rm}"], f"--sft_ckpt={rm} is {reward}"),
             ("train_rm", [f"--sft_ckpt={sft}", f"--init_from={ppo}"], f"--init_from={ppo} is {policy}"),
             ("train_rm", [f"--sft_ckpt={sft}", f"--sample_from={rm}"], f"--sample_from={rm} is {reward}"),
             ("train_sft", [f"--init_from={rm}"], f"--init_from={rm} is {reward}"),
             ("train_sft", [f"--init_from={tmp_path / 'sft.jsonl'}"], "sft.jsonl is not a minirlhf checkpoint")]
    before = {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")}
    for i, (name, args, message) in enumerate(cases):
        code = in_process(name, f"--out_dir={tmp_path}/out{i}", *args, *SFT[-2:])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (name, args, err)
        assert not (tmp_path / f"out{i}").exists()
    assert {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")} == before


def test_a_second_run_into_a_running_out_dir_is_refused(runs, tmp_path):
    """While a run lives its out_dir is its own (run.lock holds its pid): a second one, even with --resume,
    is refused; once it is gone (killed here) its lock is stale and --resume takes the run over."""
    args = [f"--out_dir={tmp_path}/sft", *SFT[:SFT.index("--max_iters=12")], "--max_iters=400",
            *SFT[SFT.index("--max_iters=12") + 1:]]
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([*command("train_sft.py"), "--device=cpu", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        for line in first.stdout:
            if line.startswith("step") and "eval_loss" in line:  # training, its first checkpoint written
                break
        done = run("train_sft.py", *args, "--resume", ok=False)
        assert done.returncode == 2 and f"{tmp_path}/sft is in use by another run (pid {first.pid})" in done.stderr
        assert first.poll() is None  # the first run goes on untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    done = run("train_sft.py", *args[:-1], "--max_iters=6", "--resume", ok=False)  # other options: not this run
    assert "in use" not in done.stderr and "was started with other options" in done.stderr
    assert f"finish it with `python train_sft.py --device=cpu {' '.join(args)} --resume`" in done.stderr


def test_a_rerun_into_a_finished_run_changes_nothing(runs):
    before = {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")}
    for script_name, d in (("train_sft.py", "sft"), ("train_ppo.py", "ppo")):
        done = run(script_name, f"--out_dir={runs}/{d}", f"--sft_ckpt={runs}/sft/ckpt.pt" if d == "ppo" else "--seed=1",
                   ok=False)
        assert done.returncode == 2 and "already holds a finished run: --overwrite to train it again" in done.stderr
        assert "--resume" not in done.stderr  # nothing to resume: not offered
        assert "is missing: running" not in done.stdout  # refused before training a missing stage (the RM here)
    assert {d: snapshot(runs / d) for d in ("sft", "rm", "ppo")} == before


def test_rm_with_a_moved_tokenizer_and_long_prompts(runs, tmp_path):
    """A checkpoint whose tokenizer file moved is usable with --tokenizer; the reward bias step fits
    prompt + sample + EOS in block_size even for the longest prompts."""
    from test_tokenizer import write_tiktoken_file
    write_tiktoken_file(tmp_path / "tok.tiktoken")
    block = 32
    (tmp_path / "sft.jsonl").write_text(json.dumps({"prompt": "add 1 2\n", "completion": "3"}) + "\n")
    run("train_sft.py", f"--out_dir={tmp_path}/sft", "--n_layer=1", "--n_head=2", "--n_embd=32",
        f"--block_size={block}",
        f"--tokenizer={tmp_path}/tok.tiktoken", "--max_iters=2", "--log_interval=1", "--eval_interval=2",
        f"--data={tmp_path}/sft.jsonl")
    os.rename(tmp_path / "tok.tiktoken", tmp_path / "moved.tiktoken")
    long_prompt = "x" * (block - 4)  # prompt + a 3-token response + EOS = block_size exactly
    comparisons = tmp_path / "cmp.jsonl"
    comparisons.write_text("\n".join(json.dumps({"prompt": long_prompt, "chosen": "abc", "rejected": "ab"})
                                     for _ in range(4)) + "\n")
    args = [f"--out_dir={tmp_path}/rm", f"--sft_ckpt={tmp_path}/sft/ckpt.pt", f"--data={comparisons}",
            f"--eval_data={comparisons}", "--batch_size=2", "--n_bias_samples=4", "--max_new_tokens=8"]
    done = run("train_rm.py", *args, ok=False)
    assert done.returncode == 2 and "cannot rebuild its tokenizer" in done.stderr
    run("train_rm.py", *args, f"--tokenizer={tmp_path}/moved.tiktoken")
    assert read_checkpoint(str(tmp_path / "rm" / "ckpt.pt"))["finished"]


def test_resume_names_an_option_the_run_predates():
    """A run saved before an option existed: the error names the new option rather than an old value of None."""
    from types import SimpleNamespace

    from minirlhf.runs import check_same_config
    cfg = SimpleNamespace(seed=1, kl_coef=0.2, ref_temperature=0.3)
    with pytest.raises(ValueError) as e:
        check_same_config(cfg, {"seed": 1, "kl_coef": 0.1}, "out/ppo")
    assert "--kl_coef=0.2 (was 0.1), --ref_temperature=0.3 (an option newer than the run)" in str(e.value)
    check_same_config(cfg, {"seed": 1, "kl_coef": 0.2, "ref_temperature": 0.3}, "out/ppo")  # the same run: no error
