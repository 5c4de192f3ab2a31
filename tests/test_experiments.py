"""The experiments (experiments/*.py): their estimators and fits against exact answers, and each
script end to end on tiny models (built here with the training scripts), checking that what they
write is consistent: tables with a row per model, point and round; finite fits; JSON that parses;
PNG figures; one RESULTS.md section per experiment with the command that made it. Tiny models show
none of the results the experiments look for, so nothing here asserts them."""
import importlib.util
import itertools
import json
import math
import os
import random
import subprocess
import sys
from math import comb

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scripts import text_only

from minirlhf.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
sys.path.insert(0, EXPERIMENTS)
import common  # noqa: E402
import overoptimization  # noqa: E402
import rm_flaws  # noqa: E402

# the figures need matplotlib (the plot extra); without it the scripts run with --plot=false
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
CPU = ["--device=cpu", "--threads=1"]  # one thread: tiny models run far faster than on threads that wait
PNG = b"\x89PNG\r\n\x1a\n"
KINDS = ("sort", "reverse", "upper", "add", "count")
# one process runs the module (pytest -n), so the base fixture, a tiny default run, is built once
pytestmark = pytest.mark.xdist_group("test_experiments")


def run(script, *args, ok=True, env=None):
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *CPU, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if ok:
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def experiment(name, out, *args):
    """Run experiments/<name>.py into out/; returns (results.json, RESULTS.md text, stdout)."""
    done = run(f"experiments/{name}.py", f"--out_dir={out}/{name}", f"--results_md={out}/RESULTS.md",
               f"--plot={HAVE_MATPLOTLIB}", *args)
    return json.loads((out / name / "results.json").read_text()), (out / "RESULTS.md").read_text(), done.stdout


def section(text, key):
    """The lines of experiment key's section of a RESULTS.md, checking it is there exactly once."""
    assert text.count(f"<!-- BEGIN {key} -->") == 1 and text.count(f"<!-- END {key} -->") == 1
    return text.split(f"<!-- BEGIN {key} -->")[1].split(f"<!-- END {key} -->")[0].splitlines()


def table_after(lines, marker):
    """The body rows (lists of cells) of the first markdown table after the line starting with marker."""
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows, i = [], next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def tiny_sft(out, name="sft"):
    run("train_sft.py", f"--out_dir={out}/{name}", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64",
        "--max_iters=60", "--warmup_iters=10", "--learning_rate=3e-3", "--log_interval=20", "--eval_interval=60",
        "--n_builtin=2000", "--n_gold_eval=8", "--batch_size=16", "--eval_batches=2")
    return out / name / "ckpt.pt"


def tiny_rm(out, sft, name="rm", n_prompts=24):
    run("train_rm.py", f"--out_dir={out}/{name}", f"--sft_ckpt={sft}", f"--n_prompts={n_prompts}",
        "--n_eval_prompts=8", "--batch_size=8", "--log_interval=3", "--eval_interval=6", "--n_bias_samples=16")
    return out / name / "ckpt.pt"


def tiny_ppo(out, sft, rm, name="ppo", iterations=4, max_new_tokens=24):
    run("train_ppo.py", f"--out_dir={out}/{name}", f"--sft_ckpt={sft}", f"--rm_ckpt={rm}",
        f"--iterations={iterations}", f"--max_new_tokens={max_new_tokens}", "--batch_size=8", "--n_minibatches=2",
        "--ppo_epochs=1", "--n_eval=8", "--learning_rate=3e-4", "--save_interval=2")
    return out / name / "ckpt.pt"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny default run: SFT -> RM -> PPO, the checkpoints every experiment starts from."""
    out = tmp_path_factory.mktemp("base")
    sft = tiny_sft(out)
    rm = tiny_rm(out, sft)
    ppo = tiny_ppo(out, sft, rm)
    return out, [f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", f"--ppo_ckpt={ppo}"]


def train_config(path):
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["train_config"]


def same_but(a, b, *keys):
    """The options of two runs agree but for keys and where and how they ran."""
    skip = set(keys) | set(common.PLACE_OPTIONS)
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


# --- experiments/alignment_vs_scale.py ----------------------------------------------------------

@pytest.mark.slow
def test_alignment_vs_scale(base, tmp_path):
    out_base, ckpts = base
    res, md, _ = experiment("alignment_vs_scale", tmp_path, *ckpts, "--sizes=1x16x2,2x64x2", "--n_eval=10")
    rows, ppo = res["sft"], res["ppo"]
    assert [r["name"] for r in rows] == ["sft_1x16x2", "sft_1x32x2", "sft_2x64x2"]  # by parameters
    assert [r["default_size"] for r in rows] == [False, True, False]
    params = [r["parameters"] for r in rows]
    assert params == sorted(params) and params[1] == ppo["parameters"]
    assert [r["x_ppo_parameters"] for r in rows] == pytest.approx([p / ppo["parameters"] for p in params])
    assert res["target"]["sft_models_with_4x"] == ["sft_2x64x2"]  # 5.2x the parameters
    assert res["target"]["met"] == (rows[2]["ppo_win_rate_sampled"] >= 0.6)
    for r in rows:  # a win rate over PPO (ties half) is one minus PPO's over it
        for mode in ("sampled", "greedy"):
            assert 0 <= r[f"ppo_win_rate_{mode}"] <= 1
            assert r[f"ppo_win_rate_{mode}"] + res["compare"][f"win_rate_{r['name']}_{mode}"] == pytest.approx(1)
        assert 0 <= r["exact_sampled"] <= r["gold_sampled"] + 1e-9 <= 1 + 1e-9
    assert set(res["by_kind"]) <= set(KINDS) and sum(e["n"] for e in res["by_kind"].values()) == 10
    # the other sizes repeat the default-size SFT run but for the shape: same data, steps, batch, schedule
    base_config = train_config(out_base / "sft" / "ckpt.pt")
    for shape in ("1x16x2", "2x64x2"):
        config = train_config(tmp_path / "alignment_vs_scale" / f"sft_{shape}" / "ckpt.pt")
        same_but(config, base_config, "n_layer", "n_embd", "n_head")
        assert [config[k] for k in ("n_layer", "n_embd", "n_head")] == [int(x) for x in shape.split("x")]
    lines = section(md, "alignment_vs_scale")
    assert any("python experiments/alignment_vs_scale.py" in line and "--sizes=1x16x2,2x64x2" in line for line in lines)
    assert [row[0] for row in table_after(lines, "Every SFT model")] == [
        "sft_1x16x2", "sft_1x32x2 (default size)", "sft_2x64x2", "ppo (default size)"]
    assert len(table_after(lines, "By kind of prompt")) == len(res["by_kind"])
    check_figures(tmp_path, "alignment_vs_scale", ["gold_vs_params.png"])

    # run again: the trained sizes are reused, the section replaced (once in the file)
    mtime = os.path.getmtime(tmp_path / "alignment_vs_scale" / "sft_2x64x2" / "ckpt.pt")
    _, md2, stdout = experiment("alignment_vs_scale", tmp_path, *ckpts, "--sizes=1x16x2,2x64x2", "--n_eval=10")
    assert os.path.getmtime(tmp_path / "alignment_vs_scale" / "sft_2x64x2" / "ckpt.pt") == mtime
    assert "running `python train_sft.py" not in stdout
    section(md2, "alignment_vs_scale")


def check_figures(out, key, names):
    """The PNGs in the experiment's out_dir and their copies in figures/ beside RESULTS.md, which links them."""
    for name in names:
        for path in (out / key / name, out / "figures" / f"{key}_{name}"):
            if HAVE_MATPLOTLIB:
                assert path.read_bytes()[:8] == PNG, path
            else:
                assert not path.exists(), path
    md = (out / "RESULTS.md").read_text()
    assert all((f"](figures/{key}_{name})" in md) == HAVE_MATPLOTLIB for name in names)


# --- experiments/overoptimization.py ------------------------------------------------------------

@pytest.mark.slow
def test_overoptimization(base, tmp_path):
    out_base, ckpts = base
    res, md, _ = experiment("overoptimization", tmp_path, *ckpts, "--rm_prompts=8,16", "--bon_prompts=4",
                            "--bon_max_n=8", "--snapshot_interval=1", "--n_eval=8")
    assert [r["n_prompts"] for r in res["reward_models"]] == [8, 16, 24]  # the default run's RM labeled 24
    ns = [1, 2, 4, 8]
    for n_rm in ("8", "16", "24"):
        bon = res["bon"][n_rm]
        assert [p["n"] for p in bon["points"]] == ns
        assert [p["kl"] for p in bon["points"]] == pytest.approx([math.log(n) - (n - 1) / n for n in ns])
        assert [p["d"] for p in bon["points"]] == pytest.approx([math.sqrt(p["kl"]) for p in bon["points"]])
        # best-of-1 keeps every sample: the same SFT samples for every proxy
        assert bon["points"][0]["gold"] == pytest.approx(res["gold_sft_bon"]) == pytest.approx(bon["gold_sft"])
        rl = res["rl"][n_rm]
        assert [p["iteration"] for p in rl["points"]] == [0, 1, 2, 3, 4]  # SFT, then a snapshot per iteration
        assert rl["points"][0]["kl"] == 0 and all(p["d"] == math.sqrt(max(p["kl"], 0)) for p in rl["points"])
        for f in (bon["fit"], rl["fit"]):
            assert math.isfinite(f["alpha"]) and math.isfinite(f["beta"]) and f["n_points"] >= 2
            assert f["r2"] is None or f["r2"] <= 1
        assert bon["fit"]["n_points"] == 3  # the points with d > 0
        for c in (bon["curve"], rl["curve"]):
            assert c["gold_peak"] >= c["gold_at_max_d"] and c["fall"] >= 0 and c["rise"] >= 0
            assert c["fall_se"] is not None and math.isfinite(c["fall_se"])
        assert all(p["gold_se"] is not None for p in rl["points"])
    assert res["default_ppo"]["rm_prompts"] == 24 and res["default_ppo"]["kl_coef"] == 0.2
    assert all(isinstance(v, bool) for method in res["verdict"].values() for v in method.values())
    # the proxies repeat the default run's RM but for the prompts labeled; the PPO runs its PPO but for
    # the KL coefficient, the reward model and the snapshots
    out = tmp_path / "overoptimization"
    rm_config = train_config(out_base / "rm" / "ckpt.pt")
    ppo_config = train_config(out_base / "ppo" / "ckpt.pt")
    for n in (8, 16):
        same_but(train_config(out / f"rm_{n}" / "ckpt.pt"), rm_config, "n_prompts")
    for n in (8, 16, 24):
        config = train_config(out / f"ppo_rm_{n}" / "ckpt.pt")
        same_but(config, ppo_config, "kl_coef", "rm_ckpt", "snapshot_interval", "train_missing")
        assert config["kl_coef"] == 0.01 and config["snapshot_interval"] == 1
        assert sorted(os.listdir(out / f"ppo_rm_{n}" / "snapshots")) == [f"iter_{i}.pt" for i in (1, 2, 3, 4)]
    lines = section(md, "overoptimization")
    assert len(table_after(lines, "Proxies")) == 3
    assert [row[0] for row in table_after(lines, "**Best-of-n**")] == ["1", "2", "4", "8"]
    for n in (8, 16, 24):
        assert len(table_after(lines, f"RM {n} (`")) == 5
    fits = table_after(lines, "**Fits**")
    assert [(row[0], row[1]) for row in fits] == [(m, f"RM {n}") for m in ("BoN", "RL") for n in (8, 16, 24)]
    assert sum(line.startswith("- BON:") or line.startswith("- RL:") for line in lines) == 2
    check_figures(tmp_path, "overoptimization", ["bon.png", "rl.png"])


def test_best_of_n_estimates_are_unbiased():
    """Averaged over every order of the samples, the disjoint-groups estimate of best-of-n equals the
    exact expectation over the n-subsets of the samples: sorted by proxy, the i-th lowest is the best
    of a random n-subset with probability C(i - 1, n - 1) / C(N, n)."""
    rng = np.random.default_rng(0)
    N = 6
    proxy, gold = rng.normal(size=(1, N)), rng.normal(size=(1, N))
    ranked = gold[0][np.argsort(proxy[0])]
    for n in (1, 2, 3, 6):
        exact = sum(comb(i - 1, n - 1) / comb(N, n) * ranked[i - 1] for i in range(1, N + 1))
        estimates = [overoptimization.best_of_n_estimates(proxy[:, list(p)], gold[:, list(p)], n)
                     for p in itertools.permutations(range(N))]
        assert np.mean([e[1] for e in estimates]) == pytest.approx(exact)
        assert np.mean([e[0] for e in estimates]) >= proxy.mean() - 1e-12
    # within one order: each group keeps its proxy-best sample, the first of equals
    proxy = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 5.0, 1.0]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]])
    proxy_mean, gold_mean, se, per_prompt = overoptimization.best_of_n_estimates(proxy, gold, 2)
    assert list(per_prompt) == [(20 + 30) / 2, (50 + 70) / 2] and gold_mean == 42.5
    assert proxy_mean == (3 + 3 + 2 + 5) / 4 and se == pytest.approx(np.std([25, 60], ddof=1) / math.sqrt(2))
    with pytest.raises(ValueError, match="multiple of 3"):
        overoptimization.best_of_n_estimates(proxy, gold, 3)


@settings(max_examples=30)
@given(alpha=st.floats(0.05, 1.0), beta=st.floats(0.3, 2.0), form=st.sampled_from(["bon", "rl"]))
def test_fit_recovers_a_known_curve_and_its_peak(alpha, beta, form):
    d = np.array([0.0, 0.3, 0.7, 1.0, 1.5, 2.2, 3.0])
    second = d * d if form == "bon" else d * np.log(np.where(d > 0, d, 1.0))
    f = overoptimization.fit(d, d * alpha - beta * second, form)
    assert f["alpha"] == pytest.approx(alpha, rel=1e-6) and f["beta"] == pytest.approx(beta, rel=1e-6)
    assert f["r2"] == pytest.approx(1.0) and f["n_points"] == 6
    def gain(x):
        return x * (alpha - beta * (x if form == "bon" else np.log(x)))
    grid = np.linspace(1e-6, 50, 200001)
    assert f["d_peak"] == pytest.approx(grid[np.argmax(gain(grid))], abs=1e-3)
    assert f["gain_peak"] == pytest.approx(gain(f["d_peak"])) and f["gain_peak"] >= gain(grid).max() - 1e-12


def test_fit_without_a_peak_or_points():
    d = np.array([0.5, 1.0, 2.0])
    assert overoptimization.fit(d, 0.3 * d, "bon")["d_peak"] is None  # rising: beta 0
    assert overoptimization.fit(d, -0.3 * d - 0.1 * d * d, "bon")["d_peak"] is None  # falling from d = 0
    assert overoptimization.fit([0.0, 1.0], [0.0, 0.5], "rl") is None  # one point with d > 0
    assert overoptimization.fit(d, [0.0, 0.0, 0.0], "rl")["r2"] is None  # nothing to explain


def test_curve_shape():
    c = overoptimization.curve([0.0, 2.0, 1.0, 3.0], [0.1, 0.3, 0.5, 0.2], [0.0, 2.0, 1.0, 3.0],
                               [0.01, 0.02, 0.03, 0.04])
    assert (c["gold_peak_d"], c["gold_peak"], c["max_d"], c["gold_at_max_d"]) == (1.0, 0.5, 3.0, 0.2)
    assert (c["rise"], c["fall"], c["fall_se"]) == pytest.approx((0.4, 0.3, 0.05))
    assert c["gold_rises_then_falls"] and c["proxy_rises_past_gold_peak"]
    c = overoptimization.curve([0.0, 1.0, 2.0], [0.1, 0.2, 0.3], [0.0, -1.0, -2.0])
    assert not c["gold_rises_then_falls"] and not c["proxy_rises_past_gold_peak"]
    c = overoptimization.curve([0.0, 1.0, 2.0], [0.3, 0.2, 0.1], [0.0, 1.0, 2.0])  # falls from the start
    assert not c["gold_rises_then_falls"] and c["proxy_rises_past_gold_peak"]


# --- experiments/rounds_vs_one.py ---------------------------------------------------------------

@pytest.mark.slow
def test_rounds_vs_one(base, tmp_path):
    out_base = base[0]
    sft = text_only(out_base / "sft" / "ckpt.pt", tmp_path / "sft.pt")  # valid text to label
    rm = tiny_rm(tmp_path, sft, n_prompts=12)
    ppo = tiny_ppo(tmp_path, sft, rm, iterations=3, max_new_tokens=8)
    ckpts = [f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", f"--ppo_ckpt={ppo}", f"--rounds_dir={tmp_path}/rounds2",
             "--rounds=2"]  # 2 rounds run every path that 3 do, in less time
    res, md, _ = experiment("rounds_vs_one", tmp_path, *ckpts, "--n_eval=8", "--drift_prompts=4",
                            "--rm_eval_prompts=8", "--probe_prompts=8")
    assert res["budget"] == {"labels": {"one_round": 12, "rounds": 12}, "ppo_iterations": {"one_round": 3, "rounds": 3},
                             "k": {"one_round": 4, "rounds": 4}}
    assert [(r["round"], r["labels"], r["iterations"]) for r in res["rounds"]] == [(1, 6, 2), (2, 12, 3)]
    win = res["win_rate_rounds_over_one"]
    assert win["sampled"] == res["compare"]["win_rate_rounds_sampled"] and 0 <= win["sampled"] <= 1
    assert res["target_met"] == (win["sampled"] >= 0.55)
    assert list(res["drift"]) == ["one_round_rm", "round_1_rm", "round_2_rm"]
    for row in res["drift"].values():
        assert list(row) == ["sft", "one_round", "rounds"]
        assert all(0 <= v["accuracy"] <= 1 and (v["gold_accuracy"] is None or 0 <= v["gold_accuracy"] <= 1)
                   for v in row.values())
    # the run of rounds has the one-round run's options, and its budget split over the rounds
    rounds_config = json.loads((tmp_path / "rounds2" / "rounds.json").read_text())["config"]
    one = train_config(ppo)
    for key in ("task", "iterations", "batch_size", "max_new_tokens", "temperature", "eos_penalty_score", "seed"):
        assert rounds_config[key] == one[key], key
    assert {"--n_minibatches=2", "--learning_rate=0.0003"} <= set(rounds_config["ppo_options"].split())
    assert (rounds_config["rounds"], rounds_config["rm_prompts"], rounds_config["rm_eval_prompts"]) == (2, 12, 8)
    lines = section(md, "rounds_vs_one")
    assert [row[0] for row in table_after(lines, "8 held-out prompts")][:2] == ["gold, sampled", "gold, greedy"]
    assert [row[0] for row in table_after(lines, "The rounds, from")] == ["1", "2"]
    assert [row[0] for row in table_after(lines, "Reward-model drift")] == ["1-round RM", "round 1 RM", "round 2 RM"]
    assert any("Gold win rate of 2 rounds over 1 round" in line for line in lines)
    check_figures(tmp_path, "rounds_vs_one", ["rounds_vs_one.png"])
    # a run of rounds with another budget is refused, not compared
    path = tmp_path / "rounds2" / "rounds.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "config": {**state["config"], "rm_prompts": 24}}))
    done = run("experiments/rounds_vs_one.py", *ckpts, f"--out_dir={tmp_path}/again", "--plot=false",
               f"--results_md={tmp_path}/RESULTS.md", ok=False)
    assert done.returncode == 2 and "was made with --rm_prompts=24, not 12" in done.stderr


# --- what all experiments share -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script", ["alignment_vs_scale", "overoptimization", "rounds_vs_one"])
def test_without_matplotlib_a_clear_error_before_any_work(script, tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hidden), ROOT, os.environ.get("PYTHONPATH")]))}
    done = run(f"experiments/{script}.py", f"--out_dir={tmp_path}/out", "--sft_ckpt=missing.pt", ok=False, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "matplotlib is not installed" in done.stderr and "--plot=false" in done.stderr
    assert not (tmp_path / "out").exists()


def test_results_sections_are_replaced_in_place(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    common.write_section(path, "a", ["first a"])
    common.write_section(path, "b", ["only b"])
    common.write_section(path, "a", ["second a", "two lines"])
    text = open(path).read()
    assert text.startswith(common.RESULTS_HEADER)
    assert section(text, "a") == ["", "second a", "two lines"] and section(text, "b") == ["", "only b"]
    assert text.index("BEGIN a") < text.index("BEGIN b")  # a kept its place
    open(path, "a").write("<!-- BEGIN a -->\n")
    with pytest.raises(ValueError, match="markers of section 'a' are broken"):
        common.write_section(path, "a", ["third a"])


def test_derived_runs_check_their_options():
    common.check_options({"n_prompts": 500, "device": "cuda"}, ["--n_prompts=500", "--device=cpu"], "x")
    with pytest.raises(ValueError, match="x was made with --n_prompts=500, not 1500"):
        common.check_options({"n_prompts": 500}, ["--n_prompts=1500"], "x")


# --- experiments/rm_flaws.py ------------------------------------------------------------------------

@pytest.mark.parametrize("task_name", ["instruct", "chat"])
def test_rm_flaws_counts_what_a_scorer_prefers(task_name):
    task = get_task(task_name)
    records = task.prompt_records(60, "dev", 0)

    def scorer(sign):  # the gold scorer (or its opposite) as the reward model
        return lambda indices, replies: [sign * task.gold_score(records[i], r, True) for i, r in zip(indices, replies)]
    right = rm_flaws.preferences(scorer(1), task, records, random.Random(0))
    wrong = rm_flaws.preferences(scorer(-1), task, records, random.Random(0))
    assert right.keys() == wrong.keys() and {flaw for _, flaw in right} >= {"chatty word"}
    assert sum(n for _, n in right.values()) >= 2 * len(records)  # every prompt, at least two flaws each
    tie = rm_flaws.preferences(lambda indices, replies: [0.0] * len(replies), task, records, random.Random(0))
    assert all(w == n for w, n in right.values()) and all(w == 0 for w, _ in wrong.values())
    assert all(w == 0 for w, _ in tie.values())  # a tie is no preference for the right reply
    cases = {rm_flaws.case_of(task, r) for r in records}
    assert {case for case, _ in right} == cases


@pytest.mark.slow
def test_rm_flaws(base, tmp_path):
    out, _ = base
    done = run("experiments/rm_flaws.py", f"--runs={out}", "--n_prompts=20", f"--out_dir={tmp_path}/rf",
               f"--results_md={tmp_path}/RESULTS.md")
    results = json.loads((tmp_path / "rf" / "results.json").read_text())
    numbers = results["tasks"]["instruct"][str(out)]
    assert sum(n for _, n in numbers["preferences"].values()) >= 40
    assert all(0 <= w <= n for w, n in numbers["preferences"].values())
    lines = section((tmp_path / "RESULTS.md").read_text(), "rm_flaws")
    assert any(line.startswith("Command: `python experiments/rm_flaws.py") for line in lines)
    rows = table_after(lines, "**instruct**")
    assert {f"{r[0]}|{r[1]}" for r in rows} == set(numbers["preferences"])
    head = lines.index("| kind | prompts per run | greedy exact | greedy verdict right |")
    policies = table_after(lines[head - 1:], "")  # the table that header opens
    assert {r[0] for r in policies} == set(numbers["greedy"]["sft"]) and "->" in policies[0][2]
    assert "done in" in done.stdout
    missing = run("experiments/rm_flaws.py", f"--runs={tmp_path}/nothing", ok=False)
    assert missing.returncode == 2 and "--runs:" in missing.stderr and "Traceback" not in missing.stderr
