"""experiments/algorithms.py end to end on tiny models, at one seed (tests/test_seeds.py takes two seeds through
the same common.train and common.spread): every method measured on the same prompts with finite numbers, the online
runs at one token budget, the critic-free ones without a value model, best-of-n at its KL bound, the table and the
winner in the section, the runs reused on a rerun and refused with other options; and bad options as one-line errors
before any training. Tiny models show none of the results the experiment looks for, so nothing here asserts them."""
import json
import math
import os
import sys

import pytest
import torch
from test_experiments import HAVE_MATPLOTLIB, PNG, run, section, table_after, train_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import algorithms  # noqa: E402

from minirlhf import config  # noqa: E402

TINY = ["--tasks=instruct", "--seeds=1", "--n_eval=8", "--bon_n=4",
        "--sft_options=--n_layer=1 --n_head=2 --n_embd=32 --block_size=64 --max_iters=60 --warmup_iters=10 "
        "--learning_rate=3e-3 --log_interval=20 --eval_interval=60 --n_builtin=2000 --n_gold_eval=8 --batch_size=16 "
        "--eval_batches=2",
        "--rm_options=--n_prompts=24 --n_eval_prompts=8 --batch_size=8 --log_interval=3 --eval_interval=6 "
        "--n_bias_samples=16",
        "--ppo_options=--iterations=3 --max_new_tokens=8 --batch_size=8 --n_minibatches=2 --ppo_epochs=1 --n_eval=8 "
        "--learning_rate=3e-4 --save_interval=2 --ceiling_prompts=0",
        "--dpo_options=--epochs=1 --batch_size=8 --n_eval=8 --max_new_tokens=8"]
METHODS = ["sft", "ppo", "grpo", "rloo", "dpo", "bon"]
# the numbers that do not exist: SFT's win over itself, best-of-n's greedy answers
UNDEFINED = {("sft", "win_sampled"), ("sft", "win_greedy"), ("bon", "gold_greedy"), ("bon", "exact_greedy"),
             ("bon", "win_greedy")}


@pytest.mark.slow
def test_every_method_from_the_same_sft_and_rm_at_equal_budgets(tmp_path):
    out = tmp_path / "algorithms"
    args = [f"--out_dir={out}", f"--results_md={tmp_path}/RESULTS.md", f"--plot={HAVE_MATPLOTLIB}", *TINY]
    done = run("experiments/algorithms.py", *args)
    res = json.loads((out / "results.json").read_text())
    seeds = res["tasks"]["instruct"]["seeds"]
    assert list(seeds) == ["1"]
    for seed, methods in seeds.items():
        assert list(methods) == METHODS
        for name, numbers in methods.items():
            for key, value in numbers.items():
                assert (value is None) == ((name, key) in UNDEFINED), (seed, name, key)
                assert value is None or math.isfinite(value), (seed, name, key)
            assert all(0 <= numbers[k] <= 1 for k in ("win_sampled", "win_greedy", "exact_sampled", "gold_sampled")
                       if numbers[k] is not None)
        run_dir = out / "instruct" / f"seed{seed}"
        assert train_config(run_dir / "sft" / "ckpt.pt")["seed"] == int(seed)  # each seed its own SFT and RM
        assert train_config(run_dir / "rm" / "ckpt.pt")["sft_ckpt"] == str(run_dir / "sft" / "ckpt.pt")
        # the online runs: one SFT, one RM, one budget of responses and tokens; the critic-free ones without a critic
        budgets, golds = set(), {}
        for name in ("ppo", "grpo", "rloo", "dpo"):
            c = train_config(run_dir / name / "ckpt.pt")
            assert (c["sft_ckpt"], c["rm_ckpt"]) == (str(run_dir / "sft" / "ckpt.pt"), str(run_dir / "rm" / "ckpt.pt"))
            if name == "dpo":
                continue
            rows = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
            assert len(rows) == c["iterations"] == 3
            budgets.add(c["iterations"] * c["batch_size"] * c["max_new_tokens"])
            golds[name] = sum(r["objective/gold"] for r in rows) / len(rows)
            assert methods[name]["token_budget"] == 3 * 8 * 8
            assert methods[name]["response_tokens"] == round(sum(r["charts/response_length"] for r in rows) * 8)
            ckpt = torch.load(run_dir / name / "ckpt.pt", map_location="cpu", weights_only=True, mmap=True)
            assert ("value_model" in ckpt) == (name == "ppo"), name
            assert (c["advantage"], c["group_size"]) == (("gae", 1) if name == "ppo" else (name, 4))
            assert methods[name]["seconds"] == json.loads((run_dir / name / "summary.json").read_text())["ppo_seconds"]
        assert budgets == {3 * 8 * 8}
        # the logged gold is a mean over responses, 4 to a prompt in the critic-free runs: near PPO's, not 4x it
        assert all(0.5 < golds[name] / golds["ppo"] < 2 for name in ("grpo", "rloo")), golds
        assert methods["bon"]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    summary = res["tasks"]["instruct"]["summary"]
    for name in METHODS[1:]:
        value = seeds["1"][name]["win_sampled"]
        assert summary[name]["win_sampled"] == {"mean": value, "min": value, "max": value}
    # the section: a row per method, the spreads, every seed, the winner (printed too)
    lines = section((tmp_path / "RESULTS.md").read_text(), "algorithms")
    table = table_after(lines, "**instruct**")
    assert [row[0] for row in table] == ["SFT", "PPO", "GRPO", "RLOO", "DPO", "best-of-4"]
    assert all(0 <= float(row[1].split("%")[0]) <= 100 for row in table[1:])
    assert table[1][1].startswith(f"{100 * summary['ppo']['win_sampled']['mean']:.1f}% [")
    assert [row[0] for row in table_after(lines, "Each seed")] == [row[0] for row in table]
    win_line = res["tasks"]["instruct"]["winner"]
    assert win_line.startswith("instruct: ") and " wins, " in win_line
    assert f"**{win_line}**" in lines and win_line in done.stdout.splitlines()
    assert any(line.startswith("Command: `python experiments/algorithms.py") for line in lines)
    if HAVE_MATPLOTLIB:
        assert (tmp_path / "figures" / "algorithms_gold_vs_kl.png").read_bytes().startswith(PNG)
    # a rerun trains nothing: the runs are found again, the numbers the same
    ckpts = {p: p.stat().st_mtime_ns for p in out.rglob("ckpt.pt")}
    assert len(ckpts) == 6
    again = run("experiments/algorithms.py", *args)
    assert "running `python" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("ckpt.pt")} == ckpts
    rerun = json.loads((out / "results.json").read_text())["tasks"]["instruct"]["seeds"]
    assert all(rerun[s][m]["gold_sampled"] == seeds[s][m]["gold_sampled"] for s in seeds for m in METHODS)
    # a run made with other options is refused, not reused
    other = [a.replace("--iterations=3", "--iterations=4") for a in args]
    refused = run("experiments/algorithms.py", *other, ok=False)
    assert refused.returncode == 2 and "was made with --iterations=3, not 4" in refused.stderr


@pytest.mark.parametrize("option, message", [
    ("--methods=ppo,foo", "--methods must be distinct comma-separated methods of ppo, grpo, rloo, dpo, bon"),
    ("--methods=ppo,ppo", "--methods must be distinct comma-separated methods"),
    ("--tasks=instruct,poetry", "--tasks must be distinct comma-separated built-in tasks"),
    ("--group_size=1", "--group_size must be at least 2"),
    ("--seeds=", "--seeds must be comma-separated integers, at least one"),
    ("--seeds=1,x", "--seeds must be comma-separated integers"),
    ("--seeds=2,2", "--seeds must be distinct seeds"),
    ("--bon_n=0", "--bon_n must be at least 1"),
    ("--n_eval=0", "--n_eval must be at least 1"),
    ("--kl_in=value", "--kl_in must be reward or loss"),
    ("--ppo_options=--advantage=rloo", "--ppo_options must be free of task, seed"),
    ("--ppo_options=iterations=3", "--ppo_options must be space-separated --key=value options"),
    ("--rm_options=--data='a.jsonl", "--rm_options: No closing quotation"),
    # the child scripts check these, a process each (slow)
    pytest.param("--ppo_options=--batch_size=6", "train_ppo.py: --group_size must be a divisor of --batch_size=6",
                 marks=pytest.mark.slow),
    pytest.param("--sft_options=--n_layers=2", "train_sft.py: unknown option --n_layers", marks=pytest.mark.slow),
    pytest.param("--rm_options=--k=1", "train_rm.py: --k must be at least 2", marks=pytest.mark.slow),
])
def test_bad_options_are_one_line_errors_before_any_training(option, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        config.main(algorithms.main, algorithms.Config, "experiments/algorithms.py",
                    argv=[f"--out_dir={out}", "--plot=false", "--device=cpu", option])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("experiments/algorithms.py: error: ") and message in err, err
    assert not out.exists()
