"""
Iterated RLHF, compared honestly: at an equal budget of labels and PPO iterations, do 3 rounds beat 1?

Question: ChatGPT's makers "performed several iterations" of comparisons, reward model and PPO; Bai
et al. 2022 call it iterated online RLHF. Split over rounds, the same label budget keeps the reward
model on the distribution of the policy it judges (fresh comparisons of the current policy's
samples each round), at the price of fewer labels per round. Does that beat one round (the default
run, out/ppo) on held-out gold? And does the reward-model drift explain it: how well does the
one-round RM judge its own final policy's samples, against the SFT samples it was trained on, and
how well do the rounds' RMs?

The 3-round run is `python -m minirlhf.rounds --rounds=3 --out_dir=out/ppo_rounds3` with the one-round
run's budget: the reward model's labeled prompts (rm_prompts = its n_prompts), samples ranked per
prompt (rm_k = its k), its epochs, the PPO iterations and every other PPO option; a run already in
rounds_dir is checked to have that budget. Both final policies answer the same held-out prompts
(evaluate.compare); the head-to-head gold win rate counts ties half. For the drift, SFT and both
final policies each sample k responses to the same held-out prompts, ranked by a simulated labeler
(reward.comparisons), and every reward model's pairwise accuracy is measured on each set
(reward.accuracy): against the labeler, and against the gold scores on the pairs they order.
Target: the 3-round policy wins >= 55% head-to-head; the results say so either way.

    python experiments/rounds_vs_one.py                   # after (or including) python train_ppo.py
    python experiments/rounds_vs_one.py --n_eval=1000 --drift_prompts=500
    python experiments/rounds_vs_one.py --help

Its running time, as measured, is in its section of experiments/RESULTS.md (the tiny settings of
tests/test_experiments.py run it in well under a minute).

Writes out_dir/results.json, out_dir/rounds_vs_one.png and its section of experiments/RESULTS.md.
"""
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import common
import torch

from minirlhf import evaluate, reward
from minirlhf.checkpoint import read_checkpoint
from minirlhf.config import check
from minirlhf.config import main as cli_main
from minirlhf.tasks import get_task

KEY = "rounds_vs_one"


@dataclass
class Config(common.ExperimentOptions):
    """Rounds vs one: iterated RLHF against one round at an equal budget of labels and PPO iterations."""
    out_dir: str = "out/experiments/rounds_vs_one"
    """where results.json and rounds_vs_one.png go"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT policy both runs start from and are held to (KL reference)"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the one-round reward model: its labels are the budget"""
    ppo_ckpt: str = "out/ppo/ckpt.pt"
    """the one-round PPO policy (trained against rm_ckpt): its iterations are the budget"""
    rounds_dir: str = "out/ppo_rounds3"
    """the run of rounds (python -m minirlhf.rounds); trained here with the one-round run's budget when missing"""
    rounds: int = 3
    """rounds of that run"""
    n_eval: int = 500
    """held-out prompts both final policies answer"""
    drift_prompts: int = 300
    """held-out prompts with k ranked samples from each policy, for the reward models' accuracy"""
    rm_eval_prompts: int = 300
    """the run of rounds: held-out prompts with k ranked samples per round, for its reward models' accuracy"""
    probe_prompts: int = 200
    """the run of rounds: held-out probe prompts per round (red-teaming)"""

    def __post_init__(self):
        super().__post_init__()
        for name in ("n_eval", "drift_prompts"):
            check(self, name, lambda x: x >= 1, "at least 1")
        check(self, "rounds", lambda x: x >= 2, "at least 2")


def main(cfg):
    t_start = time.time()
    device, autocast = common.setup(cfg)
    common.ensure_default_run(cfg, "sft", "rm", "ppo")
    rm_config = read_checkpoint(cfg.rm_ckpt, mmap=True)["train_config"]
    ppo_config = read_checkpoint(cfg.ppo_ckpt, mmap=True)["train_config"]
    if rm_config["data"] != "builtin" or ppo_config["prompts"] != "builtin":
        raise ValueError("the one-round run must be on the built-in task (the rounds' labelers are simulated)")
    if ppo_config["iterations"] < cfg.rounds:
        raise ValueError(f"--rounds={cfg.rounds}: the one-round run has only {ppo_config['iterations']} PPO iterations")

    # 1. the run of rounds, with the one-round run's budget and PPO options
    own = ("task", "iterations", "batch_size", "n_eval", "max_new_tokens", "temperature", "eos_penalty_score", "seed")
    ppo_options = common.options_of(cfg.ppo_ckpt, skip=("rm_ckpt", "init_from", "snapshot_interval", "sft_ckpt",
                                                        "prompts", "eval_prompts", "train_missing", *own))
    args = [*common.options_of(cfg.ppo_ckpt, skip=set(ppo_config) - set(own)), f"--sft_ckpt={cfg.sft_ckpt}",
            f"--rounds={cfg.rounds}", f"--rm_prompts={rm_config['n_prompts']}", f"--rm_k={rm_config['k']}",
            f"--rm_epochs={rm_config['epochs']}", f"--rm_eval_prompts={cfg.rm_eval_prompts}",
            f"--probe_prompts={cfg.probe_prompts}", f"--ppo_options={' '.join(ppo_options)}"]
    state_path = os.path.join(cfg.rounds_dir, "rounds.json")
    state = json.load(open(state_path)) if os.path.isfile(state_path) else None
    if state is not None:
        common.check_options(state["config"], args, cfg.rounds_dir)
    if state is None or not state["finished"]:
        resume = ["--resume"] if state is not None else []
        full = args + [f"--out_dir={cfg.rounds_dir}"] + resume + common.device_args(cfg)
        print(f"the run of rounds: `python -m minirlhf.rounds {' '.join(full)}`", flush=True)
        if subprocess.run([sys.executable, "-m", "minirlhf.rounds", *full], cwd=common.ROOT).returncode != 0:
            raise ValueError("the run of rounds failed; see its output above")
        state = json.load(open(state_path))
    rounds = state["rounds"]
    budget = {"labels": {"one_round": rm_config["n_prompts"], "rounds": rounds[-1]["labels"]},
              "ppo_iterations": {"one_round": ppo_config["iterations"], "rounds": rounds[-1]["iterations"]},
              "k": {"one_round": rm_config["k"], "rounds": state["config"]["rm_k"]}}
    if any(v["one_round"] != v["rounds"] for v in budget.values()):
        raise ValueError(f"{cfg.rounds_dir}: not the one-round run's budget: {budget}")

    # 2. both final policies answer the same held-out prompts
    task = get_task(ppo_config["task"])
    kw = dict(temperature=ppo_config["temperature"], max_new_tokens=ppo_config["max_new_tokens"], d=common.ONE_PROCESS,
              autocast=autocast)
    settings = SimpleNamespace(**ppo_config)  # the sampling of the PPO runs, for every evaluation
    sft, tokenizer = common.load(cfg, cfg.sft_ckpt, device)
    one, _ = common.load(cfg, cfg.ppo_ckpt, device, tokenizer)
    last = os.path.join(cfg.rounds_dir, f"round_{cfg.rounds}", "ppo", "ckpt.pt")
    three, _ = common.load(cfg, last, device, tokenizer)
    rm_one, _ = common.load(cfg, cfg.rm_ckpt, device, tokenizer)
    records = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    result = evaluate.compare({"one_round": one, "rounds": three, "sft": sft}, tokenizer, records, settings,
                              reference=sft, reward_model=rm_one, task=task, seed=cfg.seed + 3, d=common.ONE_PROCESS,
                              autocast=autocast)
    win = {"sampled": result["win_rate_rounds_sampled"], "greedy": result["win_rate_rounds_greedy"]}

    # 3. reward-model drift: every reward model on comparisons of each policy's samples
    drift_records = task.prompt_records(cfg.drift_prompts, "eval", cfg.seed + 11)
    sources = {"sft": sft, "one_round": one, "rounds": three}
    label = {"sft": "SFT", "one_round": "1-round policy", "rounds": f"{cfg.rounds}-round policy",
             "one_round_rm": "1-round RM", **{f"round_{r}_rm": f"round {r} RM" for r in range(1, cfg.rounds + 1)}}
    reward_models = {"one_round_rm": cfg.rm_ckpt,
                     **{f"round_{r}_rm": os.path.join(cfg.rounds_dir, f"round_{r}", "rm", "ckpt.pt")
                        for r in range(1, cfg.rounds + 1)}}
    comparisons = {}
    for i, (name, policy) in enumerate(sources.items()):
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 20 + i)
        comparisons[name] = reward.comparisons(policy, tokenizer, drift_records, task, random.Random(cfg.seed + 30 + i),
                                               k=budget["k"]["one_round"], gen=gen, **kw)
    distinct = {name: sum(a != b for scores in golds for j, a in enumerate(scores) for b in scores[j + 1:])
                / sum(len(s) * (len(s) - 1) // 2 for s in golds) for name, (_, golds) in comparisons.items()}
    drift = {}
    for rm_name, path in reward_models.items():
        rm = rm_one if path == cfg.rm_ckpt else common.load(cfg, path, device, tokenizer)[0]
        drift[rm_name] = {}
        for source, (groups, golds) in comparisons.items():
            acc, gold_acc = reward.accuracy(rm, groups, tokenizer, device=device, autocast=autocast,
                                            d=common.ONE_PROCESS, gold=golds)
            drift[rm_name][source] = {"accuracy": acc, "gold_accuracy": gold_acc}

    seconds = time.time() - t_start
    final_rm = f"round_{cfg.rounds}_rm"
    out = common.save_results(cfg, KEY, seconds, budget=budget, n_prompts=len(records), win_rate_rounds_over_one=win,
                              target_met=win["sampled"] >= 0.55, compare=result, rounds=rounds, drift=drift,
                              distinct_gold_pairs=distinct, n_drift_prompts=len(drift_records),
                              rounds_dir=cfg.rounds_dir)

    # 4. the figure: gold along the rounds against the one round; each RM's gold accuracy on each policy's samples
    figure = None
    if cfg.plot:
        plt = common.pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        ax = axes[0]
        ax.plot([0] + [r["iterations"] for r in rounds], [result["sft_gold_sampled"]] + [r["gold"] for r in rounds],
                "o-", label=f"SFT, then {cfg.rounds} rounds (each round's report)")
        ax.plot([ppo_config["iterations"]], [result["one_round_gold_sampled"]], "*", markersize=14, color="C3",
                label="1 round (here)")
        ax.plot([rounds[-1]["iterations"]], [result["rounds_gold_sampled"]], "s", color="C0",
                label=f"{cfg.rounds} rounds (here)")
        ax.set_xlabel("PPO iterations so far")
        ax.set_ylabel("held-out gold score, sampled")
        ax.set_title(f"win rate of {cfg.rounds} rounds over 1: {win['sampled']:.1%}", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[1]
        width = 0.8 / len(sources)
        for j, source in enumerate(sources):
            ax.bar([i + j * width for i in range(len(reward_models))],
                   [nan_if_none(drift[rm][source]["gold_accuracy"]) for rm in reward_models], width,
                   label=f"{label[source]}'s samples")
        ax.set_xticks([i + width * (len(sources) - 1) / 2 for i in range(len(reward_models))])
        ax.set_xticklabels([label[rm] for rm in reward_models], fontsize=8)
        ax.set_ylabel("pairwise accuracy vs gold")
        ax.set_ylim(0, 1)
        ax.set_title("reward models on each policy's samples", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figure = common.save_figure(fig, cfg, KEY, "rounds_vs_one.png")

    # 5. the section of RESULTS.md
    pct = lambda x: common.fmt(x, ".1%")  # noqa: E731
    lines = common.section_head(
        "Rounds vs one", f"At an equal budget of labels and PPO iterations, do {cfg.rounds} rounds of RLHF beat one "
        "round on held-out gold, and does reward-model drift explain it?", f"{KEY}.py", cfg, seconds)
    lines += [f"Budget, one round vs {cfg.rounds} rounds (`{cfg.rounds_dir}`): {budget['labels']['one_round']} vs "
              f"{budget['labels']['rounds']} labeled prompts (k = {budget['k']['one_round']}), "
              f"{budget['ppo_iterations']['one_round']} vs {budget['ppo_iterations']['rounds']} PPO iterations.", "",
              f"{len(records)} held-out prompts, sampled at T = {ppo_config['temperature']} and greedy:", ""]
    lines += common.markdown_table(
        ["", "1 round", f"{cfg.rounds} rounds"],
        [[label, common.fmt(result[f"one_round_{key}"], spec), common.fmt(result[f"rounds_{key}"], spec)]
         for label, key, spec in (("gold, sampled", "gold_sampled", ".3f"), ("gold, greedy", "gold_greedy", ".3f"),
                                  ("exact, sampled", "exact_sampled", ".1%"), ("exact, greedy", "exact_greedy", ".1%"),
                                  ("KL to SFT (nats per response)", "kl", ".2f"),
                                  ("mean length (tokens, EOS included)", "mean_length", ".1f"))])
    lines += ["", f"**Gold win rate of {cfg.rounds} rounds over 1 round (ties half): {pct(win['sampled'])} sampled**, "
              f"{pct(win['greedy'])} greedy. Target >= 55%: **{'met' if out['target_met'] else 'not met'}**.", "",
              "By kind of prompt (sampled):", ""]
    lines += common.markdown_table(
        ["kind", "n", "gold, 1 round", f"gold, {cfg.rounds} rounds", f"{cfg.rounds} rounds' win rate"],
        [[k, e["n"], f"{e['one_round_gold']:.3f}", f"{e['rounds_gold']:.3f}", pct(e["rounds_win_rate"])]
         for k, e in result["by_kind"].items()])
    lines += ["", f"The rounds, from `{state_path}` (each round's RM accuracy on held-out comparisons of that round's "
              "new samples, before and after retraining; gold and win rates from each round's own report):", ""]
    lines += common.markdown_table(
        ["round", "labels so far", "PPO iterations so far", "RM accuracy before", "after", "vs gold before", "after",
         "gold", "win rate over SFT", "over the previous round", "KL"],
        [[r["round"], r["labels"], r["iterations"], pct(r["rm_accuracy_before"]), pct(r["rm_accuracy_after"]),
          pct(r["rm_gold_accuracy_before"]), pct(r["rm_gold_accuracy_after"]), common.fmt(r["gold"], ".3f"),
          pct(r["win_rate_over_sft"]), pct(r.get("win_rate_over_previous")), f"{r['kl']:.2f}"] for r in rounds])
    lines += ["", f"Reward-model drift: pairwise accuracy of each reward model on {len(drift_records)} held-out "
              f"prompts x {budget['k']['one_round']} samples of each policy, ranked by a simulated labeler "
              "(against the labeler / against gold, on the pairs whose gold scores differ; share of such pairs: "
              + ", ".join(f"{label[s]} {pct(v)}" for s, v in distinct.items()) + "):", ""]
    lines += common.markdown_table(
        ["reward model"] + [f"{label[s]}'s samples" for s in sources],
        [[label[rm]] + [f"{pct(drift[rm][s]['accuracy'])} / {pct(drift[rm][s]['gold_accuracy'])}" for s in sources]
         for rm in reward_models])
    one_drop = (drift["one_round_rm"]["sft"]["gold_accuracy"], drift["one_round_rm"]["one_round"]["gold_accuracy"])
    last_drop = (drift[final_rm]["sft"]["gold_accuracy"], drift[final_rm]["rounds"]["gold_accuracy"])
    lines += ["", f"The one-round RM orders {pct(one_drop[0])} of SFT-sample pairs as gold does and {pct(one_drop[1])} "
              f"of its own final policy's; the last round's RM {pct(last_drop[0])} and {pct(last_drop[1])} of the "
              f"{cfg.rounds}-round policy's.", ""]
    if figure:
        lines += [f"![rounds vs one]({common.link(figure, cfg)})", ""]
    common.publish(cfg, KEY, lines, seconds)


def nan_if_none(x):
    return float("nan") if x is None else x


if __name__ == "__main__":
    cli_main(main, Config, f"experiments/{KEY}.py")
