"""The real scripts, end to end, as subprocesses with tiny settings."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64"]


def run(script, *args, ok=True):
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), "--device=cpu", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    if ok:
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """SFT -> RM -> PPO on the built-in task, tiny."""
    out = tmp_path_factory.mktemp("run")
    sft = run("train_sft.py", f"--out_dir={out}/sft", *TINY_MODEL, "--max_iters=6", "--log_interval=3",
              "--eval_interval=3", "--n_builtin=300", "--n_gold_eval=8", "--batch_size=8")
    rm = run("train_rm.py", f"--out_dir={out}/rm", f"--sft_ckpt={out}/sft/ckpt.pt", "--n_prompts=12",
             "--n_eval_prompts=6", "--k=3", "--batch_size=4", "--log_interval=1", "--eval_interval=2",
             "--n_bias_samples=8")
    ppo = run("train_ppo.py", f"--out_dir={out}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rm/ckpt.pt",
              "--iterations=2", "--batch_size=8", "--n_minibatches=2", "--ppo_epochs=2", "--n_eval=8",
              "--ptx_coef=0.1", "--adaptive_kl=true", "--kl_estimator=k3")
    return out, sft, rm, ppo


def test_sft_end_to_end(pipeline):
    out, sft, _, _ = pipeline
    summary = json.loads((out / "sft" / "summary.json").read_text())
    for key in ("eval_loss", "gold_greedy", "gold_sampled", "gold_untrained_greedy", "gold_demonstrations"):
        assert key in summary and summary[key] is not None
    assert 0 <= summary["gold_greedy"] <= 1
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all("eval/loss" in r for r in rows)
    ckpt = torch.load(out / "sft" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["train_config"]["max_iters"] == 6 and ckpt["tokenizer"]["name"] == "bytes"
    assert "eta" in sft.stdout and "tok/s" in sft.stdout


def test_rm_end_to_end(pipeline):
    out, _, rm, _ = pipeline
    summary = json.loads((out / "rm" / "summary.json").read_text())
    assert 0 <= summary["eval_accuracy"] <= 1 and 0 <= summary["labeler_agreement"] <= 1
    assert summary["n_train_pairs"] == 12 * 3  # C(3, 2) pairs for each of the 12 prompts
    ckpt = torch.load(out / "rm" / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["scalar_head"] and "score_head.weight" in ckpt["model"]
    assert "pairs/s" in rm.stdout


def test_ppo_end_to_end(pipeline):
    out, _, _, ppo = pipeline
    summary = json.loads((out / "ppo" / "summary.json").read_text())
    for key in ("win_rate_sampled", "ppo_gold_sampled", "sft_gold_sampled", "kl_ppo_sft", "ppo_rm_score",
                "ppo_mean_length", "sft_mean_length"):
        assert key in summary
    assert 0 <= summary["win_rate_sampled"] <= 1
    report = (out / "ppo" / "report.md").read_text()
    assert "win rate" in report and "KL(PPO || SFT)" in report
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in ("objective/rm_score", "objective/gold", "objective/kl", "objective/kl_coef", "policy/entropy",
                "losses/pg_loss", "losses/vf_loss", "policy/approx_kl", "policy/clipfrac", "val/explained_variance",
                "charts/response_length", "charts/tokens_per_s", "losses/ptx_loss"):
        assert key in rows[0], key
    start_coef = summary["config"]["kl_coef"]
    assert rows[0]["objective/kl_coef"] != start_coef != rows[1]["objective/kl_coef"]  # the adaptive controller moved it
    assert (out / "ppo" / "ckpt.pt").exists() and (out / "ppo" / "value.pt").exists()


def test_non_finite_rewards_skip_the_update_and_keep_the_checkpoint(tmp_path, pipeline):
    out = pipeline[0]
    from minirlhf.checkpoint import load_checkpoint, save_checkpoint
    rm, tokenizer, ckpt = load_checkpoint(str(out / "rm" / "ckpt.pt"))
    with torch.no_grad():
        rm.score_head.bias.fill_(float("nan"))  # every reward (and every initial value) is NaN
    save_checkpoint(str(tmp_path / "rm_nan.pt"), rm, tokenizer, ckpt["train_config"], ckpt["step"])
    good = tmp_path / "ppo" / "ckpt.pt"  # a good policy checkpoint from an earlier run, in the out_dir
    good.parent.mkdir()
    good.write_bytes((out / "ppo" / "ckpt.pt").read_bytes())
    before = good.read_bytes()
    done = run("train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={tmp_path}/rm_nan.pt",
               "--iterations=2", "--batch_size=4", "--n_minibatches=2", "--ppo_epochs=1", "--n_eval=4", "--save_interval=1")
    assert done.stdout.count("non-finite rewards or advantages; skipping this update") == 2
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["skipped_updates"] == 2
    assert good.read_bytes() == before  # no update happened, so nothing overwrote the last good checkpoint


def test_jsonl_data_and_chat(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "add 1 2\n", "completion": "3"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}] * 4) + "\n")
    run("train_sft.py", f"--out_dir={tmp_path}/sft", f"--data={sft}", f"--eval_data={sft}", *TINY_MODEL,
        "--max_iters=2", "--log_interval=1", "--eval_interval=2")
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["eval_loss"] > 0
    comparisons = tmp_path / "cmp.jsonl"
    comparisons.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "add 1 2\n", "chosen": "3", "rejected": "4"},
        {"prompt": "add 2 2\n", "responses": ["4", "5", "44"], "ranking": [0, 2, 1]}] * 3) + "\n")
    run("train_rm.py", f"--out_dir={tmp_path}/rm", f"--sft_ckpt={tmp_path}/sft/ckpt.pt", f"--data={comparisons}",
        f"--eval_data={comparisons}", "--batch_size=2", "--n_bias_samples=4")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "add 1 2\n"}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    run("train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={tmp_path}/sft/ckpt.pt",
        f"--rm_ckpt={tmp_path}/rm/ckpt.pt", f"--prompts={prompts}", f"--eval_prompts={prompts}", "--iterations=1",
        "--batch_size=2", "--n_minibatches=1", "--ppo_epochs=1")
    assert "win_rate_sampled" not in json.loads((tmp_path / "ppo" / "summary.json").read_text())


def test_bad_input_is_a_clear_error(tmp_path, pipeline):
    out = pipeline[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n{oops\n")
    done = run("train_sft.py", f"--out_dir={tmp_path}/x", f"--data={bad}", ok=False)
    assert done.returncode == 2 and f"{bad}:2" in done.stderr and "Traceback" not in done.stderr

    done = run("train_sft.py", "--max_iterz=3", ok=False)
    assert done.returncode == 2 and "unknown option --max_iterz" in done.stderr
    done = run("train_ppo.py", "--batch_size=ten", ok=False)
    assert done.returncode == 2 and "--batch_size: expected int" in done.stderr
    done = run("train_ppo.py", "--batch_size=10", "--n_minibatches=4", ok=False)
    assert done.returncode == 2 and "not divisible" in done.stderr

    done = run("train_ppo.py", f"--sft_ckpt={tmp_path}/none.pt", "--train_missing=false", ok=False)
    assert done.returncode == 2 and "none.pt" in done.stderr
    done = run("train_rm.py", f"--sft_ckpt={tmp_path}/none.pt", f"--out_dir={tmp_path}/rm", ok=False)
    assert done.returncode == 2 and "does not exist" in done.stderr

    # a checkpoint with a different tokenizer than the one asked for
    (tmp_path / "t.tiktoken").write_text("".join(f"{__import__('base64').b64encode(bytes([i])).decode()} {i}\n"
                                                 for i in range(256)) + "YWI= 256\n")
    done = run("train_sft.py", f"--init_from={out}/sft/ckpt.pt", f"--tokenizer={tmp_path}/t.tiktoken",
               f"--out_dir={tmp_path}/y", ok=False)
    assert done.returncode == 2 and "trained with tokenizer 'bytes'" in done.stderr
    assert not (tmp_path / "y" / "ckpt.pt").exists()
