"""experiments/seeds.py end to end on tiny models: each seed its own SFT, reward model and PPO on the split asked for,
every seed's numbers and their mean [min, max] in the section, the per-kind table, the runs reused on a rerun; bad
options as one-line errors before any training. Tiny models show none of the results
the experiment looks for, so nothing here asserts them."""
import json
import os
import sys

import pytest
from test_experiments import run, section, table_after, train_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import seeds  # noqa: E402

from minirlhf import config  # noqa: E402

TINY = ["--tasks=instruct", "--seeds=5,6", "--eval_split=dev",
        "--sft_options=--n_layer=1 --n_head=2 --n_embd=32 --block_size=64 --max_iters=40 --warmup_iters=10 "
        "--learning_rate=3e-3 --log_interval=20 --eval_interval=40 --n_builtin=1000 --n_gold_eval=8 --batch_size=16 "
        "--eval_batches=2",
        "--rm_options=--n_prompts=16 --n_eval_prompts=8 --batch_size=8 --log_interval=2 --eval_interval=4 "
        "--n_bias_samples=16",
        "--ppo_options=--iterations=2 --max_new_tokens=8 --batch_size=8 --n_minibatches=2 --ppo_epochs=1 --n_eval=8 "
        "--save_interval=2 --ceiling_prompts=4"]


@pytest.mark.slow
def test_each_seed_its_own_pipeline_and_the_spread_over_them(tmp_path):
    out = tmp_path / "seeds"
    args = [f"--out_dir={out}", f"--results_md={tmp_path}/RESULTS.md", *TINY]
    run("experiments/seeds.py", *args)
    res = json.loads((out / "results.json").read_text())["tasks"]["instruct"]
    assert list(res["seeds"]) == ["5", "6"] and res["n_prompts"] == 8
    for seed, numbers in res["seeds"].items():
        d = out / "instruct" / f"seed{seed}"
        sft, rm, ppo = (train_config(d / stage / "ckpt.pt") for stage in ("sft", "rm", "ppo"))
        assert sft["seed"] == rm["seed"] == ppo["seed"] == int(seed)  # the whole pipeline reseeded
        assert sft["eval_split"] == rm["eval_split"] == ppo["eval_split"] == "dev"
        assert rm["sft_ckpt"] == ppo["sft_ckpt"] == str(d / "sft" / "ckpt.pt")
        assert ppo["rm_ckpt"] == str(d / "rm" / "ckpt.pt")
        summary = json.loads((d / "ppo" / "summary.json").read_text())
        assert numbers["win_sampled"] == summary["win_rate_ppo_sampled"]
        assert numbers["exact_greedy"] == {"sft": summary["sft_exact_greedy"], "ppo": summary["ppo_exact_greedy"]}
        assert numbers["bon16_gold_picked_win"] == summary["ceiling"]["best_of_n"]["16"]["gold_picked_win_rate"]
        seconds = sum(json.loads((d / s / "summary.json").read_text())["total_seconds"] for s in ("sft", "rm", "ppo"))
        assert numbers["minutes"] == pytest.approx(seconds / 60)
    lines = section((tmp_path / "RESULTS.md").read_text(), "seeds")
    table = table_after(lines, "**instruct**")
    assert [row[0] for row in table] == ["5", "6", "mean [min, max]"]
    wins = [res["seeds"][s]["win_sampled"] for s in ("5", "6")]
    assert table[2][1] == f"{50 * sum(wins):.1f}% [{100 * min(wins):.1f}, {100 * max(wins):.1f}]"
    assert table[0][1] == f"{100 * wins[0]:.1f}%"
    kinds = table_after(lines, "By kind of prompt")
    assert kinds and {row[0] for row in kinds} <= {"sort", "reverse", "upper", "add", "count"}
    assert any(line.startswith("Command: `python experiments/seeds.py") for line in lines)
    # a rerun trains nothing (common.train refuses a run made with other options: test_algorithms.py)
    ckpts = {p: p.stat().st_mtime_ns for p in out.rglob("ckpt.pt")}
    assert "running `python" not in run("experiments/seeds.py", *args).stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("ckpt.pt")} == ckpts and len(ckpts) == 6


@pytest.mark.parametrize("option, message", [
    ("--tasks=instruct,poetry", "--tasks must be distinct comma-separated built-in tasks"),
    ("--seeds=1,x", "--seeds must be comma-separated integers"),
    ("--seeds=2,2", "--seeds must be distinct seeds"),
    ("--eval_split=test", "--eval_split must be eval or dev"),
    ("--ppo_options=--seed=3", "--ppo_options must be free of task, seed"),
    ("--sft_options=--eval_split=dev", "--sft_options must be free of task, seed, out_dir"),
    ("--rm_options=n_prompts=3", "--rm_options must be space-separated --key=value options"),
    pytest.param("--rm_options=--k=1", "train_rm.py: --k must be at least 2", marks=pytest.mark.slow),
])
def test_bad_options_are_one_line_errors_before_any_training(option, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        config.main(seeds.main, seeds.Config, "experiments/seeds.py", argv=[f"--out_dir={out}", "--device=cpu", option])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("experiments/seeds.py: error: ") and message in err, err
    assert not out.exists()
