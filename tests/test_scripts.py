"""The real scripts, end to end, as subprocesses with tiny settings: each stage learns something."""
import json
import os
import subprocess
import sys

import pytest
import torch

# under pytest -n, this module's tests run in one process, which builds the pipeline fixture once
pytestmark = [pytest.mark.xdist_group("test_scripts"), pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64"]
SMALL_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64"]


def command(script):
    """The command line of a script of the repository, or of a module given as "-m minirlhf.x"."""
    return [sys.executable, *(script.split() if script.startswith("-m ") else [os.path.join(ROOT, script)])]


def run(script, *args, ok=True, env=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run([*command(script), "--device=cpu", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    if ok:
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def text_only(src, dst):
    """A copy of a byte-level policy checkpoint that samples only ASCII bytes and EOS, so every sample of
    an untrained tiny policy is valid text (a run of rounds leaves out groups that are not): one hidden
    coordinate is held at 1 after the final norm, and only the other tokens' rows read it, at -30."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    m, eos = ckpt["model"], ckpt["tokenizer"]["eos_id"]
    m["transformer.ln_f.weight"][0], m["transformer.ln_f.bias"][0] = 0.0, 1.0
    for key in ("lm_head.weight", "transformer.wte.weight"):
        m[key][:, 0] = 0.0
        m[key][128:, 0] = -30.0
        m[key][eos, 0] = 0.0
    torch.save(ckpt, dst)
    return dst


def rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """SFT -> RM -> PPO on the built-in task, small enough for CI, large enough to learn: SFT on the
    built-in demonstrations; a reward model on the built-in SFT samples (the default pipeline's
    path) and one on exported labeled comparisons (a clear signal, to show it learns); PPO on the latter."""
    out = tmp_path_factory.mktemp("run")
    from minirlhf.tasks.__main__ import main as export
    export(["--task=instruct", f"--out_dir={out}/data", "--n_sft=10", "--n_prompts=10", "--n_comparisons=300",
            "--n_eval=100"])
    sft = run("train_sft.py", f"--out_dir={out}/sft", *SMALL_MODEL, "--max_iters=150", "--warmup_iters=10",
              "--learning_rate=3e-3", "--log_interval=25", "--eval_interval=75", "--n_builtin=3000",
              "--n_gold_eval=32", "--batch_size=32")
    rm = run("train_rm.py", f"--out_dir={out}/rm", f"--sft_ckpt={out}/sft/ckpt.pt", "--n_prompts=12",
             "--n_eval_prompts=6", "--k=3", "--batch_size=4", "--log_interval=1", "--eval_interval=2",
             "--n_bias_samples=8")
    rmj = run("train_rm.py", f"--out_dir={out}/rmj", f"--sft_ckpt={out}/sft/ckpt.pt",
              f"--data={out}/data/comparisons_train.jsonl", f"--eval_data={out}/data/comparisons_eval.jsonl",
              "--batch_size=16", "--log_interval=10", "--eval_interval=20", "--n_bias_samples=16",
              "--learning_rate=1e-3")
    ppo = run("train_ppo.py", f"--out_dir={out}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rmj/ckpt.pt",
              "--iterations=10", "--batch_size=16", "--n_minibatches=2", "--ppo_epochs=2", "--n_eval=16",
              "--learning_rate=3e-4", "--save_interval=5", "--ptx_coef=0.1", "--adaptive_kl=true", "--kl_estimator=k3",
              "--ref_temperature=1", "--advantage=gae", "--group_size=1")  # with a value model, as chat's preset
    return out, sft, rm, rmj, ppo


def test_sft_learns(pipeline):
    out, sft, _, _, _ = pipeline
    summary = json.loads((out / "sft" / "summary.json").read_text())
    metrics = rows(out / "sft" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [25, 50, 75, 100, 125, 150]
    # the loss falls well below where it starts (ln 258 = 5.55 for an untrained byte model)
    assert metrics[-1]["train/loss"] < 0.5 * metrics[0]["train/loss"]
    assert metrics[-1]["eval/loss"] < metrics[2]["eval/loss"] < 3.0
    # and the samples are better answers than an untrained model's, judged by the gold scorer
    assert summary["gold_greedy"] > summary["gold_untrained_greedy"] + 0.1
    ckpt = torch.load(out / "sft" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 150 and ckpt["finished"] and "state" not in ckpt
    assert ckpt["train_config"]["max_iters"] == 150 and ckpt["tokenizer"]["name"] == "bytes"
    assert "eta" in sft.stdout and "tok/s" in sft.stdout


def test_rm_builtin_mechanics(pipeline):
    out, _, rm, _, _ = pipeline
    summary = json.loads((out / "rm" / "summary.json").read_text())
    assert 0 <= summary["eval_accuracy"] <= 1 and 0 <= summary["labeler_agreement"] <= 1
    assert summary["n_train_pairs"] == 12 * 3  # C(3, 2) pairs for each of the 12 prompts
    # the bias step: the SFT samples score 0 on average afterwards
    assert abs(summary["sft_mean_reward_before_bias"]) > 1e-3 and abs(summary["sft_mean_reward_after_bias"]) < 1e-4
    ckpt = torch.load(out / "rm" / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["scalar_head"] and "score_head.weight" in ckpt["model"] and ckpt["finished"]
    assert "pairs/s" in rm.stdout


def test_rm_beats_chance(pipeline):
    out = pipeline[0]
    summary = json.loads((out / "rmj" / "summary.json").read_text())
    metrics = rows(out / "rmj" / "metrics.jsonl")
    # 300 labeled comparisons of 4 responses; on 100 held-out ones (600 pairs) chance is 50%
    assert summary["eval_accuracy"] > 0.62
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]


def test_ppo_learns(pipeline):
    out, _, _, _, ppo = pipeline
    metrics = rows(out / "ppo" / "metrics.jsonl")
    assert [r["iteration"] for r in metrics] == list(range(1, 11))
    # iteration 1: the policy is the reference, and the rollout's log-probs are the update's
    assert abs(metrics[0]["objective/kl"]) < 1e-4
    assert all(r["debug/first_minibatch_logprob_error"] < 1e-4 for r in metrics)
    # the policy moves away from the reference, toward what the reward model likes
    assert metrics[-1]["objective/kl"] > 0.1
    first, last = [r["objective/rm_score"] for r in metrics[:3]], [r["objective/rm_score"] for r in metrics[-3:]]
    assert sum(last) / 3 > sum(first) / 3 + 0.2
    for key in ("objective/gold", "objective/kl_coef", "policy/entropy", "losses/pg_loss", "losses/vf_loss",
                "policy/approx_kl", "policy/clipfrac", "val/explained_variance", "charts/response_length",
                "charts/tokens_per_s", "losses/ptx_loss"):
        assert all(r[key] is not None for r in metrics), key
    coefs = [r["objective/kl_coef"] for r in metrics]
    assert len(set(coefs)) == len(coefs)  # the adaptive controller moved it every iteration

    summary = json.loads((out / "ppo" / "summary.json").read_text())
    for key in ("win_rate_ppo_sampled", "ppo_gold_sampled", "sft_gold_sampled", "ppo_kl", "ppo_rm_score",
                "ppo_mean_length", "sft_mean_length", "by_kind", "examples"):
        assert key in summary, key
    assert summary["ppo_rm_score"] > summary["sft_rm_score"]  # on held-out prompts too
    assert summary["ppo_kl"] > 0
    report = (out / "ppo" / "report.md").read_text()
    assert "win rate" in report and "KL(PPO || SFT)" in report and "By kind of prompt" in report
    # the reward model's ceiling beside PPO, and the breakdown of greedy responses too
    ceiling = summary["ceiling"]
    assert ceiling["n_prompts"] == 16 and list(ceiling["best_of_n"]) == ["1", "4", "16"]
    assert 0 <= ceiling["best_of_n"]["16"]["win_rate"] <= 1 and ceiling["best_of_n"]["1"]["kl_bound"] == 0
    assert "The reward model's ceiling" in report and "greedy responses):" in report
    assert summary["by_kind_greedy"].keys() == summary["by_kind"].keys()
    ckpt = torch.load(out / "ppo" / "ckpt.pt", weights_only=True)
    assert ckpt["finished"] and ckpt["value_model"]["model_config"]["scalar_head"]
    assert not os.path.exists(out / "ppo" / "value.pt")


def test_the_kl_penalty_reads_the_reference_at_ref_temperature(tmp_path, pipeline):
    """The pipeline's PPO ran with the reference at the sampling temperature (iteration 1: a KL of 0); the same first
    rollout against the reference at 0.5 is far from it, as KL(pi || pi_0.5) > 0 for any policy that is not greedy."""
    out = pipeline[0]
    run("train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rmj/ckpt.pt",
        "--iterations=1", "--batch_size=16", "--n_eval=2", "--ceiling_prompts=0", "--ref_temperature=0.5")
    (row,) = rows(tmp_path / "ppo" / "metrics.jsonl")
    assert abs(rows(out / "ppo" / "metrics.jsonl")[0]["objective/kl"]) < 1e-4 and row["objective/kl"] > 0.1
    bad = run("train_ppo.py", f"--out_dir={tmp_path}/bad", "--ref_temperature=0", ok=False)
    assert bad.returncode == 2 and "--ref_temperature must be > 0" in bad.stderr


def test_ppo_against_the_gold_oracle(tmp_path, pipeline):
    """--reward=gold: every rollout's reward is its gold score over the labelers' temperature, less one constant (the
    SFT samples' mean), and the policy climbs it; prompts the gold scorer cannot judge are refused before training."""
    out = pipeline[0]
    args = [f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rmj/ckpt.pt", "--iterations=15", "--batch_size=64",
            "--n_eval=8", "--ceiling_prompts=4", "--learning_rate=3e-4", "--kl_coef=0.05", "--reward=gold",
            "--advantage=gae", "--group_size=1"]
    run("train_ppo.py", f"--out_dir={tmp_path}/ppo", *args)
    from minirlhf.tasks.instruct import LABELER_TEMPERATURE
    metrics = rows(tmp_path / "ppo" / "metrics.jsonl")
    offsets = [r["objective/rm_score"] - r["objective/gold"] / LABELER_TEMPERATURE for r in metrics]
    assert max(offsets) - min(offsets) < 1e-4 and offsets[0] < -0.5
    first, last = [r["objective/gold"] for r in metrics[:3]], [r["objective/gold"] for r in metrics[-3:]]
    assert sum(last) / 3 > sum(first) / 3 + 0.03
    assert "PPO's reward was the gold scorer (--reward=gold)" in (tmp_path / "ppo" / "report.md").read_text()
    assert "--reward=gold" not in (out / "ppo" / "report.md").read_text()
    prompts = tmp_path / "poems.jsonl"
    prompts.write_text(json.dumps({"prompt": "write a poem\n"}) + "\n")
    bad = run("train_ppo.py", f"--out_dir={tmp_path}/bad", *args, f"--prompts={prompts}", f"--eval_prompts={prompts}",
              ok=False)
    assert bad.returncode == 2 and "--reward=gold: the instruct task's gold scorer cannot judge" in bad.stderr
    assert not os.path.exists(tmp_path / "bad" / "ckpt.pt")
    bad = run("train_ppo.py", f"--out_dir={tmp_path}/bad", "--reward=human", ok=False)
    assert bad.returncode == 2 and "--reward must be rm or gold" in bad.stderr


@pytest.mark.parametrize("advantage, kl_in, loss_agg", [("grpo", "loss", "sequence"), ("rloo", "reward", "token")])
def test_critic_free_ppo_learns_without_a_value_model(tmp_path, pipeline, advantage, kl_in, loss_agg):
    """--advantage=grpo|rloo: 4 responses per prompt, each against its group; no value model loaded, trained or
    saved; the policy moves toward what the reward model likes, on held-out prompts too."""
    out = pipeline[0]
    args = [f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt", f"--rm_ckpt={out}/rmj/ckpt.pt",
            "--iterations=10", "--batch_size=16", "--n_minibatches=2", "--ppo_epochs=2", "--n_eval=16",
            "--learning_rate=3e-4", "--save_interval=5", f"--advantage={advantage}", "--group_size=4",
            f"--kl_in={kl_in}", f"--loss_agg={loss_agg}", "--ceiling_prompts=0"]
    done = run("train_ppo.py", *args)
    assert f"advantages: {advantage}, 4 per prompt, no value model" in done.stdout
    metrics = rows(tmp_path / "ppo" / "metrics.jsonl")
    assert not any(k in r for r in metrics for k in ("losses/vf_loss", "val/explained_variance", "val/clipfrac"))
    assert all(("losses/kl_loss" in r) == (kl_in == "loss") for r in metrics)
    assert metrics[-1]["objective/kl"] > 0.1
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["ppo_rm_score"] > summary["sft_rm_score"] + 0.3 and summary["ppo_kl"] > 0
    ckpt = torch.load(tmp_path / "ppo" / "ckpt.pt", weights_only=True)
    assert ckpt["finished"] and "value_model" not in ckpt
    again = run("train_ppo.py", *args, "--group_size=1", "--overwrite", ok=False)  # a group of one compares nothing
    assert again.returncode == 2 and "--group_size must be at least 2" in again.stderr


def test_non_finite_rewards_skip_the_update_and_keep_the_checkpoint(tmp_path, pipeline):
    out = pipeline[0]
    from minirlhf.checkpoint import load_checkpoint
    rm, tokenizer, ckpt = load_checkpoint(str(out / "rmj" / "ckpt.pt"))
    state = rm.state_dict()
    state["score_head.bias"] = torch.full_like(state["score_head.bias"], float("nan"))
    torch.save({**ckpt, "model": state}, tmp_path / "rm_nan.pt")  # every reward (and initial value) is NaN
    done = run("train_ppo.py", f"--out_dir={tmp_path}/ppo", f"--sft_ckpt={out}/sft/ckpt.pt",
               f"--rm_ckpt={tmp_path}/rm_nan.pt", "--iterations=3", "--batch_size=4", "--n_minibatches=2",
               "--ppo_epochs=1", "--n_eval=4", "--save_interval=5", "--max_bad_steps=2", ok=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stdout.count("non-finite rewards or advantages; skipping this update") == 2
    assert "2 updates in a row had a non-finite loss, reward or gradient" in done.stderr
    metrics = rows(tmp_path / "ppo" / "metrics.jsonl")  # valid JSON: no NaN in it
    assert [r["charts/skipped_updates"] for r in metrics] == [1, 2]
    # it stopped before its first checkpoint, so nothing was saved
    assert not os.path.exists(tmp_path / "ppo" / "ckpt.pt")


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
        "--batch_size=2", "--group_size=2", "--n_minibatches=1", "--ppo_epochs=1")
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert "win_rate_ppo_sampled" not in summary  # no gold scorer for these prompts
    # but the report shows the responses side by side
    assert [e["prompt"] for e in summary["examples"]] == ["add 1 2\n", "User: hi\nAssistant: "]
    report = (tmp_path / "ppo" / "report.md").read_text()
    assert "| prompt | SFT | PPO |" in report and "greedy" not in report  # no gold scorer: no greedy rows
