"""
The default pipeline, reseeded: what SFT -> RM -> PPO reach on each built-in task, as the mean and spread
over seeds of the whole pipeline.

Question: one run's win rate moves a few points with the seed (and from one CPU to another); what do
the task's defaults reach on average, how far apart are the seeds, and does each seed's run keep the
same story (per kind of prompt or behaviour, sampled and greedy)?

For each task and seed: train_sft.py, train_rm.py and train_ppo.py with --task, --seed and the task's
defaults (plus --sft_options, --rm_options, --ppo_options), in out_dir/<task>/seed<S>/{sft,rm,ppo},
reused when finished with the same options. Every number is PPO's report of that seed (summary.json):
held-out prompts of the eval split, or of the dev split with --eval_split=dev, for choosing settings
without looking at what the reports show. The time is each stage's own (its summary's), the three
summed: the time `python train_ppo.py` takes from nothing, less the processes' start-up.

    python experiments/seeds.py                             # both tasks x 3 seeds (about 2 h on a 2-core CPU)
    python experiments/seeds.py --tasks=instruct --seeds=1337 --eval_split=dev --rm_options="--n_prompts=6000"

Writes out_dir/results.json and its section of experiments/RESULTS.md (--results_md to write elsewhere).
"""
import os
import shlex
import time
from dataclasses import dataclass

import common

from minirlhf import config
from minirlhf.config import check
from minirlhf.tasks import get_task

KEY = "seeds"
STAGES = (("sft", "train_sft.py"), ("rm", "train_rm.py"), ("ppo", "train_ppo.py"))
# a seed's numbers, from PPO's summary.json: (key, header, format); "a->b" keys are SFT's and PPO's
COLUMNS = (("win_sampled", "win over SFT, sampled", "%"), ("win_greedy", "win over SFT, greedy", "%"),
           ("gold_sampled", "gold, sampled", ".3f"), ("gold_greedy", "gold, greedy", ".3f"),
           ("exact_sampled", "exact, sampled", "%"), ("exact_greedy", "exact, greedy", "%"),
           ("kl", "KL to SFT", ".2f"), ("bon16_win", "RM's best-of-16, win", "%"),
           ("bon16_gold_picked_win", "best-of-16 by gold, win", "%"), ("minutes", "minutes (SFT+RM+PPO)", ".1f"))


@dataclass
class Config(common.PipelineOptions):
    """The whole default pipeline (SFT, RM, PPO) at several seeds, per built-in task: mean, spread, breakdowns."""
    out_dir: str = "out/experiments/seeds"
    """where the runs (<task>/seed<S>/{sft,rm,ppo}) and results.json go"""
    eval_split: str = "eval"
    """the held-out prompts every stage measures: eval (the reports') or dev (for choosing settings)"""

    SET_HERE = ("task", "seed", "out_dir", "sft_ckpt", "rm_ckpt", "eval_split", "train_missing")

    def __post_init__(self):
        super().__post_init__()
        check(self, "eval_split", lambda x: x in ("eval", "dev"), "eval or dev")


def plan(cfg, task, seed):
    """{stage: (checkpoint, script, args)} of one task and seed, every option checked by the scripts themselves."""
    where = lambda m: os.path.join(cfg.out_dir, task, f"seed{seed}", m, "ckpt.pt")  # noqa: E731
    fixed = [f"--seed={seed}", f"--eval_split={cfg.eval_split}"]
    links = {"sft": [], "rm": [f"--sft_ckpt={where('sft')}"],
             "ppo": [f"--sft_ckpt={where('sft')}", f"--rm_ckpt={where('rm')}", "--train_missing=False"]}
    return {stage: (where(stage), script, fixed + links[stage] + common.child(
        script, f"--task={task}", *shlex.split(getattr(cfg, f"{stage}_options")))[0]) for stage, script in STAGES}


def measure(stages):
    """A seed's numbers from its PPO summary, and the minutes its three stages took."""
    s = common.summary_of(stages["ppo"][0])
    sft, rm = common.summary_of(stages["sft"][0]), common.summary_of(stages["rm"][0])
    bon = s.get("ceiling", {}).get("best_of_n", {}).get("16", {})
    out = {"win_sampled": s["win_rate_ppo_sampled"], "win_greedy": s["win_rate_ppo_greedy"], "kl": s["ppo_kl"],
           "bon16_win": bon.get("win_rate"), "bon16_gold_picked_win": bon.get("gold_picked_win_rate"),
           "minutes": (sft["total_seconds"] + rm["total_seconds"] + s["total_seconds"]) / 60,
           "stage_minutes": {k: v / 60 for k, v in (("sft", sft["total_seconds"]), ("rm", rm["total_seconds"]),
                                                     ("ppo", s["total_seconds"]))}}
    for field in ("gold", "exact"):
        for mode in ("sampled", "greedy"):
            out[f"{field}_{mode}"] = {"sft": s[f"sft_{field}_{mode}"], "ppo": s[f"ppo_{field}_{mode}"]}
    out["by_kind"] = {mode: s[key] for mode, key in (("sampled", "by_kind"), ("greedy", "by_kind_greedy"))}
    return out


def value_cell(x, spec):
    """One seed's value (SFT -> PPO for the measures of both); % for spec %."""
    f = (lambda v: f"{100 * v:.1f}%") if spec == "%" else (lambda v: format(v, spec))
    if x is None:
        return "—"
    return f"{f(x['sft'])} -> {f(x['ppo'])}" if isinstance(x, dict) else f(x)


def spread_cell(values, spec):
    """mean [min, max] over the seeds (SFT -> PPO for the measures of both)."""
    if isinstance(values[0], dict):
        return " -> ".join(common.cell(common.spread([v[k] for v in values]), spec) for k in ("sft", "ppo"))
    return common.cell(common.spread(values), spec)


def kind_rows(task, seeds):
    """Per kind of prompt (behaviour), the mean over the seeds of SFT's and PPO's exact rate and PPO's win rate,
    sampled and greedy, and the rambling of the sampled responses."""
    rows = []
    for kind in task.KINDS:
        entries = {mode: [r["by_kind"][mode][kind] for r in seeds.values() if kind in r["by_kind"][mode]]
                   for mode in ("sampled", "greedy")}
        if not entries["sampled"]:
            continue
        mean = lambda mode, k: sum(e[k] for e in entries[mode]) / len(entries[mode])  # noqa: E731
        row = [kind, f"{mean('sampled', 'n'):.0f}"]
        for mode in ("sampled", "greedy"):
            row += [f"{mean(mode, 'sft_exact'):.0%} -> {mean(mode, 'ppo_exact'):.0%}",
                    f"{mean(mode, 'ppo_win_rate'):.1%}"]
        rows.append(row + [f"{mean('sampled', 'sft_rambling'):.0%} -> {mean('sampled', 'ppo_rambling'):.0%}"])
    return rows


def section(cfg, results, seconds):
    """The lines of this experiment's section of RESULTS.md."""
    lines = common.section_head("The default pipeline at several seeds",
                                "What do SFT -> RM -> PPO reach with each task's defaults, as the mean and spread over "
                                "seeds of the whole pipeline?", f"{KEY}.py", cfg, seconds)
    lines += [f"Held-out prompts: the {cfg.eval_split} split. Each seed its own SFT, reward model and PPO; "
              "win rates by the gold scorer, ties half; a -> b is SFT -> PPO; the last row is the mean [min, max] "
              "over the seeds. The RM's best-of-16 (its ceiling) and the same 16 samples picked by gold are from "
              "SFT, on the first prompts of the report.", ""]
    for task, res in results.items():
        header = ["seed"] + [c[1] for c in COLUMNS]
        rows = [[str(seed)] + [value_cell(r[k], spec) for k, _, spec in COLUMNS] for seed, r in res["seeds"].items()]
        seeds = list(res["seeds"].values())
        rows.append(["mean [min, max]"] + [spread_cell([r[k] for r in seeds], spec) if seeds[0][k] is not None
                                           else "—" for k, _, spec in COLUMNS])
        lines += [f"**{task}** ({res['n_prompts']} prompts):", ""] + common.markdown_table(header, rows)
        lines += ["", f"By {'kind of prompt' if task == 'instruct' else 'behaviour'}, the mean over the seeds:", ""]
        lines += common.markdown_table(["kind", "n", "exact, sampled", "win, sampled", "exact, greedy", "win, greedy",
                                        "rambling, sampled"], kind_rows(get_task(task), res["seeds"])) + [""]
    return lines


def main(cfg):
    t_start = time.time()
    tasks = cfg.tasks.split(",")
    plans = {(t, s): plan(cfg, t, s) for t in tasks for s in cfg.seed_list}  # every option checked before training
    results = {}
    for task in tasks:
        seeds = {}
        for seed in cfg.seed_list:
            for stage, (path, script, args) in plans[task, seed].items():
                common.train(path, script, args, cfg, f"{task}, seed {seed}: {stage.upper()}")
            seeds[seed] = measure(plans[task, seed])
        n = common.summary_of(plans[task, cfg.seed_list[0]]["ppo"][0])["n_prompts"]
        results[task] = {"n_prompts": n, "seeds": seeds}
    seconds = time.time() - t_start
    common.save_results(cfg, KEY, seconds, tasks=results)
    lines = section(cfg, results, seconds)
    common.publish(cfg, KEY, lines, seconds)


if __name__ == "__main__":
    config.main(main, Config, f"experiments/{KEY}.py")
