"""
RLHF algorithms compared at equal budgets, judged by the built-in tasks' gold scorers.

Question: from the same SFT policy and the same reward model (so the same comparisons, an equal label
budget), which turns them into the better policy: PPO with a value model (GAE), the critic-free GRPO
and RLOO (group_size responses per prompt, no value model), or DPO on the reward model's own
comparisons? Best-of-n from SFT ranked by the reward model is the reference point, at a KL of at most
log n - (n - 1) / n nats.

For each task and seed: SFT (train_sft.py --task --seed) and its reward model (train_rm.py) with the
task's defaults, then from them
  ppo   train_ppo.py --advantage=gae --group_size=1 (InstructGPT's: a value model)
  grpo  train_ppo.py --advantage=grpo --group_size=K, with --kl_in and --loss_agg below
  rloo  train_ppo.py --advantage=rloo --group_size=K, the same
  dpo   experiments/dpo.py (it remakes exactly the reward model's comparisons)
  bon   best-of-n from SFT by the reward model (minirlhf.sampling.best_of_n), at evaluation
The three online runs share --iterations, --batch_size (responses per rollout) and --max_new_tokens, so
each samples iterations x batch_size responses of at most max_new_tokens tokens (checked on their stored
configs; the tokens they actually sampled, EOS included, are reported beside). All methods of a task
and seed then answer the same held-out prompts (evaluate.compare, sampled at the task's temperature
and greedy); best-of-n has no greedy answer (its n greedy samples would all be SFT's).

    python experiments/algorithms.py             # 2 tasks x 3 seeds: about 3 h on a 2-core CPU (estimated)
    python experiments/algorithms.py --tasks=instruct --seeds=1337 --methods=ppo,grpo
    python experiments/algorithms.py --help

Child runs go to out_dir/<task>/seed<S>/<method> and are reused when finished with the same options.
Writes out_dir/results.json, out_dir/gold_vs_kl.png and its section of experiments/RESULTS.md.
"""
import json
import math
import os
import shlex
import time
from dataclasses import dataclass

import common
import torch

from minirlhf import config, evaluate
from minirlhf.checkpoint import read_checkpoint
from minirlhf.config import check
from minirlhf.data import encode_prompt
from minirlhf.sampling import best_of_n
from minirlhf.tasks import get_task

KEY = "algorithms"
METHODS = ("ppo", "grpo", "rloo", "dpo", "bon")
ONLINE = ("ppo", "grpo", "rloo")
LABEL = {"sft": "SFT", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "bon": "best-of-n"}
# the table's columns: (key in a method's numbers, header, format)
COLUMNS = (("win_sampled", "win over SFT, sampled", "%"), ("win_greedy", "win over SFT, greedy", "%"),
           ("gold_sampled", "gold, sampled", ".3f"), ("gold_greedy", "gold, greedy", ".3f"),
           ("exact_sampled", "exact, sampled", "%"), ("exact_greedy", "exact, greedy", "%"),
           ("kl", "KL to SFT", ".2f"), ("seconds", "wall time (s)", ".0f"))


@dataclass
class Config(common.PipelineOptions, common.ExperimentOptions):
    """RLHF algorithms (PPO, GRPO, RLOO, DPO, best-of-n) from the same SFT and reward model, judged by gold."""
    out_dir: str = "out/experiments/algorithms"
    """where the runs (<task>/seed<S>/<method>/), results.json and algorithms.png go"""
    methods: str = "ppo,grpo,rloo,dpo,bon"
    """the methods compared with SFT, comma-separated (of ppo, grpo, rloo, dpo, bon)"""
    group_size: int = 4
    """GRPO and RLOO: responses per prompt (batch_size still counts responses, so the prompts are fewer)"""
    kl_in: str = "reward"
    """GRPO and RLOO: the KL to SFT as PPO's per-token penalty in the reward (reward), or a k3 term in the loss
    (loss, as the GRPO paper); reward keeps the same penalty as PPO, so only the advantage estimate differs"""
    loss_agg: str = "token"
    """GRPO and RLOO: the loss as a mean over tokens (token, as PPO here) or over responses (sequence, as GRPO)"""
    bon_n: int = 16
    """best-of-n: SFT samples per prompt, ranked by the reward model"""
    n_eval: int = 500
    """held-out prompts every method answers"""
    dpo_options: str = ""
    """more options of every DPO run (experiments/dpo.py)"""

    SET_HERE = ("task", "seed", "out_dir", "sft_ckpt", "rm_ckpt", "advantage", "group_size", "kl_in", "loss_agg",
                "train_missing")

    def __post_init__(self):
        super().__post_init__()
        check(self, "methods", lambda x: common.distinct(x) and all(m in METHODS for m in x.split(",")),
              f"distinct comma-separated methods of {', '.join(METHODS)}")
        check(self, "group_size", lambda x: x >= 2, "at least 2 (GRPO and RLOO compare the responses to a prompt)")
        check(self, "kl_in", lambda x: x in ("reward", "loss"), "reward or loss")
        check(self, "loss_agg", lambda x: x in ("token", "sequence"), "token or sequence")
        check(self, ("bon_n", "n_eval"), lambda x: x >= 1, "at least 1")


def plan(cfg, task, seed):
    """{stage: (checkpoint, script, args)} of one task and seed, the options checked (once per task: the seed and the
    paths change nothing there); and the PPO options (the task's sampling) that every method is evaluated with."""
    where = lambda m: os.path.join(cfg.out_dir, task, f"seed{seed}", m, "ckpt.pt")  # noqa: E731
    opts = {name: shlex.split(getattr(cfg, f"{name}_options")) for name in ("sft", "rm", "ppo", "dpo")}
    seeded, start = [f"--seed={seed}"], [f"--sft_ckpt={where('sft')}", f"--rm_ckpt={where('rm')}"]
    stages = {"sft": (where("sft"), "train_sft.py",
                      seeded + common.child("train_sft.py", f"--task={task}", *opts["sft"])[0]),
              "rm": (where("rm"), "train_rm.py",
                     seeded + start[:1] + common.child("train_rm.py", f"--task={task}", *opts["rm"])[0])}
    critic_free = [f"--group_size={cfg.group_size}", f"--kl_in={cfg.kl_in}", f"--loss_agg={cfg.loss_agg}"]
    settings = None
    for method in ONLINE:
        extra = ["--advantage=gae", "--group_size=1"] if method == "ppo" else [f"--advantage={method}", *critic_free]
        args, settings = common.child("train_ppo.py", f"--task={task}", "--train_missing=False", *extra, *opts["ppo"])
        if method in cfg.methods.split(","):
            stages[method] = (where(method), "train_ppo.py", seeded + start + args)
    if "dpo" in cfg.methods.split(","):
        stages["dpo"] = (where("dpo"), "experiments/dpo.py",
                         seeded + start + common.child("experiments/dpo.py", "--plot=False", *opts["dpo"])[0])
    return stages, settings


def train(cfg, task, seed, stages):
    """Every run of the plan, in order (SFT, RM, then the methods), reused when finished with its options."""
    for name, (path, script, args) in stages.items():
        common.train(path, script, args, cfg, f"{task}, seed {seed}: {LABEL.get(name, name.upper())}")


def run_seconds(name, path):
    """A run's own wall time, from its summary.json (over its restarts)."""
    summary = common.summary_of(path)
    return summary.get("ppo_seconds" if name in ONLINE else "train_seconds" if name == "dpo" else "total_seconds")


def sampled_tokens(path):
    """(budget, sampled): iterations x batch_size x max_new_tokens of an online run, and the response tokens
    it sampled (EOS included), from its stored config and metrics.jsonl."""
    c = read_checkpoint(path, mmap=True)["train_config"]
    rows = [json.loads(line) for line in open(os.path.join(os.path.dirname(path), "metrics.jsonl"))]
    return c["iterations"] * c["batch_size"] * c["max_new_tokens"], round(
        sum(r["charts/response_length"] for r in rows) * c["batch_size"])


def measure(cfg, task, stages, settings, device, autocast):
    """Every method's numbers on the same held-out prompts: win rate over SFT, gold, exact, KL, wall time."""
    gold_task = get_task(task)
    sft, tokenizer = common.load(cfg, stages["sft"][0], device)
    rm, _ = common.load(cfg, stages["rm"][0], device, tokenizer)
    trained = [m for m in cfg.methods.split(",") if m != "bon"]
    policies = {"sft": sft, **{m: common.load(cfg, stages[m][0], device, tokenizer)[0] for m in trained}}
    records = gold_task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    result = evaluate.compare(policies, tokenizer, records, settings, reference=sft, reward_model=rm, task=gold_task,
                              seed=cfg.seed + 3, d=common.ONE_PROCESS, autocast=autocast, n_examples=len(records))
    out = {}
    for name in ["sft", *trained]:
        out[name] = {f: result.get(f"{name}_{f}") for f in ("gold_sampled", "gold_greedy", "exact_sampled",
                                                             "exact_greedy", "kl", "rm_score", "mean_length")}
        out[name].update(win_sampled=result.get(f"win_rate_{name}_sampled"),
                         win_greedy=result.get(f"win_rate_{name}_greedy"), seconds=run_seconds(name, stages[name][0]))
        if name in ONLINE:
            out[name]["token_budget"], out[name]["response_tokens"] = sampled_tokens(stages[name][0])
    if "bon" in cfg.methods.split(","):
        out["bon"] = measure_best_of_n(cfg, sft, rm, tokenizer, records, gold_task, settings, result, autocast)
    return out


def measure_best_of_n(cfg, sft, rm, tokenizer, records, task, settings, result, autocast):
    """Best-of-n from SFT by the reward model on the same prompts, beside the same SFT samples."""
    t0 = time.time()
    ids = [encode_prompt(tokenizer, r, sft.config.block_size - settings.max_new_tokens) for r in records]
    gen = torch.Generator(device=sft.lm_head.weight.device).manual_seed(cfg.seed + 4)
    chosen = best_of_n(sft, rm, tokenizer, ids, cfg.bon_n, max_new_tokens=settings.max_new_tokens,
                       temperature=settings.temperature, generator=gen, autocast=autocast,
                       eos_penalty_score=settings.eos_penalty_score)
    gold = [task.assess(r, s["text"], s["ended"])["gold"] for r, s in zip(records, chosen)]
    return {"gold_sampled": sum(gold) / len(gold), "gold_greedy": None,
            "exact_sampled": sum(g == 1.0 for g in gold) / len(gold), "exact_greedy": None,
            "kl": math.log(cfg.bon_n) - (cfg.bon_n - 1) / cfg.bon_n,
            "rm_score": sum(s["score"] for s in chosen) / len(chosen),
            "mean_length": sum(len(s["ids"]) + s["ended"] for s in chosen) / len(chosen),
            "win_sampled": evaluate.win_rate(gold, [e["sft_gold"] for e in result["examples"]]), "win_greedy": None,
            "seconds": time.time() - t0}


def label(name, cfg):
    return f"best-of-{cfg.bon_n}" if name == "bon" else LABEL[name]


def winner(task, summary, cfg):
    """The sentence that names the trained method with the highest mean sampled win rate over SFT, and by how much."""
    ranked = sorted((m for m in summary if m not in ("sft", "bon")), key=lambda m: -summary[m]["win_sampled"]["mean"])
    if not ranked:
        return f"{task}: no trained method to compare"
    best, n = summary[ranked[0]]["win_sampled"]["mean"], len(cfg.seed_list)
    text = (f"{task}: {label(ranked[0], cfg)} wins, gold win rate over SFT {best:.1%} sampled (mean of {n} "
            f"seed{'s' * (n > 1)}, gold {summary[ranked[0]]['gold_sampled']['mean']:.3f})")
    if len(ranked) > 1:
        second = summary[ranked[1]]["win_sampled"]["mean"]
        text += f", {100 * (best - second):.1f} points above {label(ranked[1], cfg)} ({second:.1%})"
    if "bon" in summary:
        text += f"; best-of-{cfg.bon_n} {summary['bon']['win_sampled']['mean']:.1%}"
    return text


def plot(cfg, results):
    """Gold (sampled) against KL to SFT, a panel per task, a point per method and seed."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (task, res) in zip(axes[0], results.items()):
        for i, name in enumerate(["sft", *cfg.methods.split(",")]):
            points = [(s[name]["kl"], s[name]["gold_sampled"]) for s in res["seeds"].values()]
            ax.plot(*zip(*points), "o" if name != "bon" else "*", color=f"C{i}", markersize=7 if name != "bon" else 11,
                    label=label(name, cfg) + (" (KL bound)" if name == "bon" else ""))
        ax.set_xlabel("KL(policy || SFT), nats per response")
        ax.set_ylabel("held-out gold score, sampled")
        ax.set_title(f"{task}: {len(res['seeds'])} seeds", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, cfg, KEY, "gold_vs_kl.png")


def section(cfg, results, seconds, figure):
    """The lines of this experiment's section of RESULTS.md."""
    lines = common.section_head(
        "RLHF algorithms", "From the same SFT policy and reward model (an equal label budget), which method makes the "
        "best policy by the gold scorer: PPO, GRPO, RLOO or DPO, with best-of-n by the reward model for reference?",
        f"{KEY}.py", cfg, seconds)
    lines += [f"Online runs: equal iterations, batch_size (responses) and max_new_tokens; GRPO and RLOO with "
              f"{cfg.group_size} responses per prompt, kl_in={cfg.kl_in}, loss_agg={cfg.loss_agg}, no value model. "
              f"Each cell: mean [min, max] over the seeds; win rates count ties half; best-of-{cfg.bon_n}'s KL is "
              "its bound log n - (n-1)/n and its time that of sampling and ranking at evaluation; the wall time "
              "of SFT is that of SFT training, shared by all.", ""]
    for task, res in results.items():
        lines += [f"**{task}** ({res['n_prompts']} held-out prompts, seeds {cfg.seeds}):", ""]
        lines += common.markdown_table(["method"] + [c[1] for c in COLUMNS],
                                       [[label(m, cfg)] + [common.cell(res["summary"][m][k], spec)
                                                           for k, _, spec in COLUMNS] for m in res["summary"]])
        lines += ["", "Each seed (win sampled / gold sampled / KL):", ""]
        lines += common.markdown_table(["method"] + [f"seed {s}" for s in res["seeds"]],
                                       [[label(m, cfg)] + [f"{common.fmt(s[m]['win_sampled'], '.1%')} / "
                                                      f"{s[m]['gold_sampled']:.3f} / {s[m]['kl']:.2f}"
                                                      for s in res["seeds"].values()] for m in res["summary"]])
        online = [m for m in ONLINE if m in res["summary"]]
        if online:
            budget = res["summary"][online[0]]["token_budget"]["mean"]
            lines += ["", f"Response tokens of the online runs, at most {budget:.0f} each (iterations x batch_size x "
                      "max_new_tokens); sampled, EOS included, mean over the seeds: "
                      + ", ".join(f"{label(m, cfg)} {res['summary'][m]['response_tokens']['mean']:.0f}" for m in online)
                      + "."]
        lines += ["", f"**{res['winner']}**", ""]
    if figure:
        lines += [f"![gold against KL]({common.link(figure, cfg)})", ""]
    return lines


def main(cfg):
    t_start = time.time()
    device, autocast = common.setup(cfg)
    tasks = cfg.tasks.split(",")
    plans = {(t, s): plan(cfg, t, s) for t in tasks for s in cfg.seed_list}  # every option checked before training
    results = {}
    for task in tasks:
        seeds = {}
        for seed in cfg.seed_list:
            stages, settings = plans[task, seed]
            train(cfg, task, seed, stages)
            seeds[seed] = measure(cfg, task, stages, settings, device, autocast)
            budgets = {seeds[seed][m]["token_budget"] for m in ONLINE if m in seeds[seed]}
            if len(budgets) > 1:
                raise ValueError(f"{task}, seed {seed}: the online runs sampled unequal budgets {budgets}")
        names = list(seeds[cfg.seed_list[0]])
        summary = {m: {k: common.spread([s[m].get(k) for s in seeds.values()]) for k in seeds[cfg.seed_list[0]][m]}
                   for m in names}
        results[task] = {"n_prompts": cfg.n_eval, "seeds": seeds, "summary": summary}
        results[task]["winner"] = winner(task, summary, cfg)
    seconds = time.time() - t_start
    common.save_results(cfg, KEY, seconds, tasks=results)
    figure = plot(cfg, results) if cfg.plot else None
    lines = section(cfg, results, seconds, figure)
    for res in results.values():
        print(res["winner"])
    common.publish(cfg, KEY, lines, seconds)


if __name__ == "__main__":
    config.main(main, Config, f"experiments/{KEY}.py")
