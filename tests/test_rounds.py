"""Iterated RLHF (train_ppo.py --rounds): the bookkeeping of rounds, red-team over-sampling, and a run
killed in its second round that resumes there, on tiny settings."""
import json
from collections import Counter

import pytest
from test_resume import killed_at, snapshot
from test_scripts import TINY_MODEL, run, text_only

from minirlhf.checkpoint import read_checkpoint
from minirlhf.pipeline import kind_weights, shares, weights_text
from minirlhf.tasks import instruct

# under pytest -n, this module's tests run in one process, which builds the rounds_run fixture once
pytestmark = pytest.mark.xdist_group("test_rounds")


def test_budget_shares():
    assert shares(200, 3) == [67, 67, 66] and sum(shares(3000, 7)) == 3000 and shares(5, 1) == [5]


def test_red_team_weights_over_sample_the_worst_kinds():
    w = kind_weights({"sort": 0.9, "add": 0.3, "count": 0.6})
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["add"] > w["count"] > w["sort"] >= 0.5 / 3  # worst first; half of the prompts stay uniform
    assert kind_weights({"sort": 1.0, "add": 1.0}) == {"sort": 0.5, "add": 0.5}  # nothing to fix: uniform
    records = instruct.prompt_records(3000, "train", seed=1, weights=w)
    share = Counter(instruct.kind_of(r) for r in records)
    for kind, weight in w.items():
        assert share[kind] / 3000 == pytest.approx(weight, abs=0.03)
    assert all(instruct.split_of(r["prompt"]) == "train" for r in records)  # weights keep the split
    with pytest.raises(ValueError, match="kind weights"):
        instruct.prompt_records(3, "train", weights={"divide": 1.0})


ROUNDS = ["--rounds=2", "--iterations=5", "--batch_size=4", "--n_minibatches=2", "--ppo_epochs=1", "--n_eval=4",
          "--max_new_tokens=8", "--rm_prompts=8", "--rm_eval_prompts=4", "--rm_k=2", "--rm_epochs=1",
          "--probe_prompts=10", "--save_interval=1", "--threads=1"]


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    """Two rounds, killed in round 2's PPO (after its first iteration's checkpoint) and resumed."""
    out = tmp_path_factory.mktemp("rounds")
    run("train_sft.py", f"--out_dir={out}/sft", *TINY_MODEL, "--max_iters=6", "--log_interval=3", "--eval_interval=3",
        "--n_builtin=200", "--n_gold_eval=0", "--batch_size=8")
    sft = text_only(out / "sft" / "ckpt.pt", out / "sft.pt")  # an untrained policy's bytes are rarely UTF-8
    args = [f"--out_dir={out}/ppo", f"--sft_ckpt={sft}", *ROUNDS]
    killed_at("train_ppo.py", "iter 2/2", *args)  # the driver, and with it its child, round 2's train_ppo.py
    assert not read_checkpoint(str(out / "ppo" / "round_2" / "ppo" / "ckpt.pt"))["finished"]  # resumed below
    state = json.load(open(out / "ppo" / "rounds.json"))
    assert [r["round"] for r in state["rounds"]] == [1] and not state["finished"]
    round_1 = snapshot(out / "ppo" / "round_1")
    done = run("train_ppo.py", *args, ok=False)
    assert done.returncode == 2 and "unfinished (1 of 2 rounds done)" in done.stderr
    run("train_ppo.py", *args, "--resume")
    assert snapshot(out / "ppo" / "round_1") == round_1  # the finished round was not redone
    return out


def test_rounds_bookkeeping(rounds_run):
    out = rounds_run / "ppo"
    state = json.load(open(out / "rounds.json"))
    assert state["finished"]
    rows = state["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["labels"] for r in rows] == [4, 8] and [r["iterations"] for r in rows] == [3, 5]  # budgets split
    assert rows[0]["rm_accuracy_before"] is None  # no reward model before the first round
    for r in rows:
        assert 0 <= r["rm_accuracy_after"] <= 1 and r["gold"] is not None and r["win_rate_over_sft"] is not None
    assert 0 <= rows[1]["rm_accuracy_before"] <= 1 and rows[1]["redteam_size"] == len(rows[0]["new_redteam"])
    for r in (1, 2):
        lines = (out / f"round_{r}" / "comparisons_train.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all(len(json.loads(line)["responses"]) == 2 for line in lines)
        assert read_checkpoint(str(out / f"round_{r}" / "rm" / "ckpt.pt"))["finished"]
    # round 2's reward model saw both rounds' comparisons; its PPO went on from round 1's policy, on
    # prompts drawn with the weights round 1's probe set gave
    rm2 = read_checkpoint(str(out / "round_2" / "rm" / "ckpt.pt"), mmap=True)["train_config"]
    assert rm2["data"].split(",") == [str(out / f"round_{r}" / "comparisons_train.jsonl") for r in (1, 2)]
    ppo2 = read_checkpoint(str(out / "round_2" / "ppo" / "ckpt.pt"), mmap=True)["train_config"]
    assert ppo2["init_from"] == str(out / "round_1" / "ppo" / "ckpt.pt")
    assert ppo2["kind_weights"] == weights_text(rows[0]["next_weights"])
    assert rows[1]["weights"] == rows[0]["next_weights"]
    # the run's policy is the last round's, and the report has the per-round table
    assert (out / "ckpt.pt").read_bytes() == (out / "round_2" / "ppo" / "ckpt.pt").read_bytes()
    report = (out / "report.md").read_text()
    assert "| round | labels so far |" in report and report.count("\n| 2 | 8 |") == 1
    done = run("train_ppo.py", f"--out_dir={out}", f"--sft_ckpt={rounds_run}/sft/ckpt.pt", *ROUNDS, "--resume",
               ok=False)
    assert done.returncode == 2 and "finished run of rounds" in done.stderr


def test_comparisons_written_are_distinct_valid_text_at_their_best_rank(tmp_path):
    from minirlhf.data import read_comparisons
    from minirlhf.pipeline import write_comparisons
    from minirlhf.tokenizer import get_tokenizer
    tok = get_tokenizer("bytes")
    ids = lambda text: list(text.encode()) + [tok.eos_id]  # noqa: E731
    records = [{"prompt": f"add 1 {i}\n"} for i in range(4)]
    groups = [([], [ids("3"), ids("5"), ids("3")], [2, 1, 0]),  # "3" twice: shown once, at its better rank
              ([], [[0xFF, tok.eos_id], ids("2")], [0, 1]),  # a byte that is no UTF-8: left out
              ([], [ids("4"), ids("4")], [1, 0]),  # nothing to compare: left out
              ([], [ids(""), ids("7 ok"), ids("7")], [2, 0, 1])]  # an empty response is a response
    path = tmp_path / "c.jsonl"
    assert write_comparisons(str(path), records, groups, tok) == 2
    assert [{k: v for k, v in r.items() if k != "source"} for r in read_comparisons(str(path))] == [
        {"prompt": "add 1 0\n", "responses": ["3", "5"], "ranking": [0, 1]},
        {"prompt": "add 1 3\n", "responses": ["", "7 ok", "7"], "ranking": [2, 0, 1]}]
    with pytest.raises(ValueError, match="none of the 2 groups has two distinct samples"):
        write_comparisons(str(tmp_path / "none.jsonl"), records[1:3], groups[1:3], tok)
    assert not (tmp_path / "none.jsonl").exists()


def test_kind_weights_option_parses_and_names_itself_when_wrong():
    from minirlhf.tasks import parse_kind_weights
    assert parse_kind_weights("add=2, sort=0.5") == {"add": 2.0, "sort": 0.5}
    assert parse_kind_weights("") is None
    for bad in ("add", "add=x", "add=2,sort"):
        with pytest.raises(ValueError, match="--kind_weights"):
            parse_kind_weights(bad)
