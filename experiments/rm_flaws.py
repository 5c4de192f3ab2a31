"""
Where the reward model is wrong: the right reply against the same reply with one flaw, per kind of prompt and flaw.

Question: PPO climbs the reward model, so a flaw the reward model does not punish is one PPO is free to learn. Which
flaws does it miss: ones it cannot check (a digit off by one in a sum: a capability a small model lacks), or ones
its comparisons never showed it (a combination the SFT policy never writes, so no labeler ever ranked it)? And did
PPO learn them: how do SFT's and PPO's greedy replies fare on the same kinds of prompt?

For each run (a folder with sft/, rm/ and ppo/ checkpoints, as `python train_ppo.py` or experiments/seeds.py
leave them): n_prompts held-out prompts of the task; each prompt's right reply and its flawed versions
(task.flawed_replies: the demonstrators' mistakes, a chatty word, and on the chat task wrong verdicts, compliance
and refusal), all scored by the reward model; then SFT's and PPO's greedy replies, assessed by the gold scorer.
Several runs of one task (seeds) give the mean [min, max] over them.

    python experiments/rm_flaws.py                                   # the default runs: out/ and out/chat/
    python experiments/rm_flaws.py --runs=out/experiments/seeds/chat/seed1337,out/experiments/seeds/chat/seed2

Writes out_dir/results.json and its section of experiments/RESULTS.md (--results_md to write elsewhere).
"""
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import common
import torch

from minirlhf import config
from minirlhf.checkpoint import read_checkpoint
from minirlhf.config import at_least_one, check
from minirlhf.data import encode_prompt
from minirlhf.sampling import sample, score_responses
from minirlhf.tasks import get_task

KEY = "rm_flaws"


@dataclass
class Config(common.RunOptions):
    """The reward model's preference for the right reply over each flaw, and what PPO learned, per kind of prompt."""
    out_dir: str = "out/experiments/rm_flaws"
    """where results.json goes"""
    runs: str = "out,out/chat"
    """comma-separated run folders, each with sft/ckpt.pt, rm/ckpt.pt and ppo/ckpt.pt (the task is the SFT run's)"""
    n_prompts: int = 1000
    """held-out prompts per run"""
    split: str = "dev"
    """the held-out prompts: dev (for choosing settings) or eval (the reports')"""
    max_new_tokens: int = 24
    """the greedy replies' budget"""
    seed: int = 1337
    """seed of the prompts and of the flaws drawn"""

    def __post_init__(self):
        super().__post_init__()
        at_least_one(self, "n_prompts", "max_new_tokens")
        check(self, "split", lambda x: x in ("dev", "eval"), "dev or eval")
        check(self, "runs", lambda x: common.distinct(x) and all(r.strip() for r in x.split(",")),
              "distinct comma-separated run folders")
        for run in self.runs.split(","):
            for stage in ("sft", "rm", "ppo"):
                path = os.path.join(run, stage, "ckpt.pt")
                if not os.path.isfile(path):
                    raise ValueError(f"--runs: {path} does not exist (train the run first: python train_ppo.py)")


def case_of(task, record):
    """The finest kind of a prompt the task tells apart (chat: premise checks split four ways)."""
    return getattr(task, "case_of", task.kind_of)(record)


def preferences(score, task, records, rng):
    """{(case, flaw): [prompts whose right reply scored higher, prompts]}, score(indices, replies) being the scores
    of replies to records[indices]."""
    right, flawed = zip(*(task.flawed_replies(r, rng) for r in records))
    pairs = [(i, flaw, reply) for i, f in enumerate(flawed) for flaw, reply in f.items()]
    right_scores = score(range(len(records)), right)
    flawed_scores = score([i for i, _, _ in pairs], [reply for _, _, reply in pairs])
    counts = defaultdict(lambda: [0, 0])
    for (i, flaw, _), s in zip(pairs, flawed_scores):
        c = counts[case_of(task, records[i]), flaw]
        c[0] += right_scores[i] > s
        c[1] += 1
    return dict(counts)


def greedy(policy, tokenizer, task, records, ids, max_new_tokens):
    """{case: {n, exact, verdict_right}} of the policy's greedy replies, by the gold scorer."""
    out = defaultdict(lambda: defaultdict(float))
    replies = sample(policy, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=0.0)
    for record, reply in zip(records, replies):
        a = task.assess(record, reply["text"], reply["ended"])
        row = out[case_of(task, record)]
        row["n"] += 1
        row["exact"] += a["exact"]
        if a.get("verdict_right") is not None:
            row["verdict_right"] += a["verdict_right"]
    return {case: {k: v / (row["n"] if k != "n" else 1) for k, v in row.items()} for case, row in out.items()}


def probe(cfg, run, device):
    """One run's numbers: the reward model's preferences and the policies' greedy replies, per case."""
    task = get_task(read_checkpoint(os.path.join(run, "sft", "ckpt.pt"), mmap=True)["train_config"]["task"])
    rm, tokenizer = common.load(cfg, os.path.join(run, "rm", "ckpt.pt"), device)
    records = task.prompt_records(cfg.n_prompts, cfg.split, cfg.seed)
    ids = [encode_prompt(tokenizer, r, rm.config.block_size - cfg.max_new_tokens) for r in records]

    def score(indices, replies):
        return score_responses(rm, tokenizer, [ids[i] for i in indices],
                               [{"ids": tokenizer.encode(t), "ended": True} for t in replies])
    prefs = preferences(score, task, records, random.Random(cfg.seed))
    policies = {name: greedy(common.load(cfg, os.path.join(run, name, "ckpt.pt"), device, tokenizer)[0], tokenizer,
                             task, records, ids, cfg.max_new_tokens) for name in ("sft", "ppo")}
    return task.NAME, {"preferences": {f"{c}|{f}": v for (c, f), v in prefs.items()}, "greedy": policies}


def section(cfg, results, seconds):
    lines = common.section_head("Where the reward model is wrong",
                                "Which flaws does the reward model fail to punish, and did PPO learn them?",
                                f"{KEY}.py", cfg, seconds, trains=False)
    lines += [f"{cfg.n_prompts} prompts of the {cfg.split} split per run. \"RM prefers right\": the share of prompts "
              "whose right reply the reward model scores above the same reply with the flaw (the gold scorer: "
              "always); greedy exact and verdict right: SFT -> PPO, by the gold scorer. Over several runs: mean "
              "[min, max].", ""]
    for task, task_runs in results.items():
        lines += [f"**{task}** ({', '.join(task_runs)}):", ""]
        keys = sorted({k for r in task_runs.values() for k in r["preferences"]})
        rows = []
        for k in keys:
            shares = [r["preferences"][k][0] / r["preferences"][k][1] for r in task_runs.values()
                      if k in r["preferences"]]
            n = sum(r["preferences"][k][1] for r in task_runs.values() if k in r["preferences"]) / len(shares)
            rows.append([*k.split("|"), f"{n:.0f}", common.cell(common.spread(shares), "%")])
        lines += common.markdown_table(["kind", "flaw", "pairs per run", "RM prefers right"], rows) + [""]
        cases = sorted({c for r in task_runs.values() for c in r["greedy"]["sft"]})
        rows = []
        for c in cases:
            row = [c, f"{sum(r['greedy']['sft'][c]['n'] for r in task_runs.values()) / len(task_runs):.0f}"]
            for field in ("exact", "verdict_right"):
                means = [common.spread([r["greedy"][p][c].get(field) for r in task_runs.values()]) for p in
                         ("sft", "ppo")]
                row.append("—" if means[0] is None else " -> ".join(common.cell(m, "%") for m in means))
            rows.append(row)
        lines += common.markdown_table(["kind", "prompts per run", "greedy exact", "greedy verdict right"], rows)
        lines += [""]
    return lines


def main(cfg):
    t_start = time.time()
    device, _ = common.setup(cfg)
    results = defaultdict(dict)
    with torch.no_grad():
        for run in cfg.runs.split(","):
            task, numbers = probe(cfg, run, device)
            results[task][run] = numbers
            print(f"{run} ({task}): done")
    seconds = time.time() - t_start
    common.save_results(cfg, KEY, seconds, tasks=results)
    lines = section(cfg, results, seconds)
    common.publish(cfg, KEY, lines, seconds)


if __name__ == "__main__":
    config.main(main, Config, f"experiments/{KEY}.py")
