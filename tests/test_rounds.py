"""Iterated RLHF (python -m minirlhf.rounds): the bookkeeping of rounds, red-team over-sampling, a run
killed in its second round that resumes there, and the human-label loop through two rounds with the
printed instructions followed literally, on tiny settings."""
import json
import re
import shlex
from collections import Counter

import pytest
from test_resume import killed_at, snapshot
from test_scripts import TINY_MODEL, run, text_only

from minirlhf.checkpoint import read_checkpoint
from minirlhf.rounds import kind_weights, shares
from minirlhf.tasks import instruct

# under pytest -n, this module's tests run in one process, which builds the rounds_run fixture once
pytestmark = pytest.mark.xdist_group("test_rounds")

ROUNDS = ["--rounds=2", "--iterations=5", "--batch_size=4", "--n_eval=4", "--max_new_tokens=8", "--rm_prompts=8",
          "--rm_eval_prompts=4", "--rm_k=2", "--rm_epochs=1", "--probe_prompts=10", "--threads=1",
          "--ppo_options=--n_minibatches=2 --ppo_epochs=1 --save_interval=1"]


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


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tiny SFT policy that samples only valid text (an untrained policy's bytes are rarely UTF-8)."""
    out = tmp_path_factory.mktemp("sft")
    run("train_sft.py", f"--out_dir={out}/sft", *TINY_MODEL, "--max_iters=6", "--log_interval=3", "--eval_interval=3",
        "--n_builtin=200", "--n_gold_eval=0", "--batch_size=8")
    return text_only(out / "sft" / "ckpt.pt", out / "sft.pt")


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory, sft):
    """Two rounds, killed in round 2's PPO (after its first iteration's checkpoint) and resumed."""
    out = tmp_path_factory.mktemp("rounds")
    args = [f"--out_dir={out}/rounds", f"--sft_ckpt={sft}", *ROUNDS]
    killed_at("-m minirlhf.rounds", "iter 2/2", *args)  # the driver, and with it its child, round 2's train_ppo.py
    assert not read_checkpoint(str(out / "rounds" / "round_2" / "ppo" / "ckpt.pt"))["finished"]  # resumed below
    state = json.load(open(out / "rounds" / "rounds.json"))
    assert [r["round"] for r in state["rounds"]] == [1] and not state["finished"]
    round_1 = snapshot(out / "rounds" / "round_1")
    done = run("-m minirlhf.rounds", *args, ok=False)
    assert done.returncode == 2 and "unfinished run of rounds (1 of 2 done)" in done.stderr
    assert "--resume` goes on with it" in done.stderr
    run("-m minirlhf.rounds", *args, "--resume")
    assert snapshot(out / "rounds" / "round_1") == round_1  # the finished round was not redone
    return out


@pytest.mark.slow
def test_rounds_bookkeeping(rounds_run, sft):
    out = rounds_run / "rounds"
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
    # round 2's reward model saw both rounds' comparisons; its PPO went on from round 1's policy, on fresh
    # prompts drawn with the weights round 1's probe set gave, with the options passed on to it
    rm2 = read_checkpoint(str(out / "round_2" / "rm" / "ckpt.pt"), mmap=True)["train_config"]
    assert rm2["data"].split(",") == [str(out / f"round_{r}" / "comparisons_train.jsonl") for r in (1, 2)]
    ppo2 = read_checkpoint(str(out / "round_2" / "ppo" / "ckpt.pt"), mmap=True)["train_config"]
    assert ppo2["init_from"] == str(out / "round_1" / "ppo" / "ckpt.pt") and ppo2["iterations"] == 2
    assert ppo2["prompts"] == str(out / "round_2" / "prompts_train.jsonl") and ppo2["ppo_epochs"] == 1
    assert len((out / "round_2" / "prompts_train.jsonl").read_text().splitlines()) == 2 * 4
    assert rows[1]["weights"] == rows[0]["next_weights"]
    # the run's policy is the last round's, and the report has the per-round table
    assert (out / "ckpt.pt").read_bytes() == (out / "round_2" / "ppo" / "ckpt.pt").read_bytes()
    report = (out / "report.md").read_text()
    assert "| round | labeled prompts so far |" in report and report.count("\n| 2 | 8 |") == 1
    done = run("-m minirlhf.rounds", f"--out_dir={out}", f"--sft_ckpt={sft}", *ROUNDS, "--resume", ok=False)
    assert done.returncode == 2 and "finished run of rounds" in done.stderr


@pytest.mark.slow
def test_bad_options_of_the_rounds_are_one_line_errors_before_any_work(tmp_path, sft):
    for args, message in ((["--ppo_options=--kl_coef=-1"], "--kl_coef must be >= 0"),
                          (["--ppo_options=--iterations=9"], "--iterations=9 is set by the rounds themselves"),
                          (["--labels=files"], "--labels=files: people rank samples of your --prompts"),
                          (["--rm_k=1"], "--rm_k must be at least 2")):
        done = run("-m minirlhf.rounds", f"--out_dir={tmp_path}/r", f"--sft_ckpt={sft}", *args, ok=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
        assert not (tmp_path / "r").exists()  # nothing written, not even an empty directory


@pytest.mark.slow
def test_human_labels_through_two_rounds_as_the_program_says(tmp_path, sft):
    """--labels=files on one's own prompts, played as a person would: run, read what the program asks,
    add a ranking to every record of the files it names, save them where it says, run the command it
    prints; twice, once per round. Then the rounds are done, with each round's labels."""
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n"
                                                    for w in ("hi", "yes", "no", "ok", "abc", "xyz")))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"echo {w}\n"}) + "\n" for w in ("a", "b")))
    done = run("-m minirlhf.rounds", "--rounds=2", "--labels=files", f"--prompts={tmp_path}/prompts.jsonl",
               f"--eval_prompts={tmp_path}/eval.jsonl", f"--sft_ckpt={sft}", f"--out_dir={tmp_path}/rounds",
               "--rm_prompts=8", "--rm_k=3", "--rm_eval_prompts=2", "--rm_epochs=1", "--iterations=4", "--batch_size=4",
               "--n_eval=2", "--max_new_tokens=8", "--threads=1", "--ppo_options=--n_minibatches=1 --ppo_epochs=1")
    for r in (1, 2):
        asked = re.search(r"round (\d): waiting for labels\. Rank the samples in (\S+) and (\S+): .* save them as "
                          r"(\S+) and (\S+); then run `([^`]+)`", done.stdout)
        assert asked and int(asked.group(1)) == r, done.stdout[-2000:]
        for source, target in ((asked.group(2), asked.group(4)), (asked.group(3), asked.group(5))):
            records = [json.loads(line) for line in open(source)]
            with open(target, "w") as f:  # the person's ranking: the longest reply first
                for rec in records:
                    order = sorted(range(len(rec["responses"])), key=lambda i: -len(rec["responses"][i]))
                    f.write(json.dumps({**rec, "ranking": order}) + "\n")
        command = shlex.split(asked.group(6))
        assert command[:3] == ["python", "-m", "minirlhf.rounds"] and command[-1] == "--resume"
        done = run(" ".join(command[1:3]), *command[3:])
    state = json.load(open(tmp_path / "rounds" / "rounds.json"))
    assert state["finished"] and [row["round"] for row in state["rounds"]] == [1, 2]
    n_labeled = [len((tmp_path / "rounds" / f"round_{r}" / "comparisons_train.jsonl").read_text().splitlines())
                 for r in (1, 2)]
    assert [row["labels"] for row in state["rounds"]] == [n_labeled[0], sum(n_labeled)]  # prompts ranked so far
    assert read_checkpoint(str(tmp_path / "rounds" / "ckpt.pt"))["finished"]
    assert "| 2 |" in (tmp_path / "rounds" / "report.md").read_text() and "waiting" not in done.stdout


def test_comparisons_written_are_distinct_valid_text_at_their_best_rank(tmp_path):
    from minirlhf.jsonl import read_comparisons
    from minirlhf.rounds import write_comparisons
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
