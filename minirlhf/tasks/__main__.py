"""python -m minirlhf.tasks: export a built-in task as JSONL, or re-derive its labelers' temperature."""
import os
import random
from dataclasses import dataclass

from minirlhf import config
from minirlhf.config import at_least_one, check
from minirlhf.jsonl import write_jsonl
from minirlhf.tasks import TASKS, get_task
from minirlhf.tasks.labelers import TARGET_AGREEMENT, gold_agreement, labeler_agreement
from minirlhf.tasks.reference import calibrate_temperature, comparison_records, reference_groups


@dataclass
class Config:
    """Write a built-in task's data as JSONL files (the formats of minirlhf/data.py), or re-derive its labelers'
    temperature (--calibrate)."""
    task: str = "instruct"
    """the built-in task: instruct or chat"""
    out_dir: str = ""
    """where the JSONL files are written (sft_*, prompts_*, comparisons_*: train and eval)"""
    n_sft: int = 20000
    """demonstrations in sft_train.jsonl"""
    n_prompts: int = 20000
    """PPO prompts in prompts_train.jsonl"""
    n_comparisons: int = 10000
    """K-way rankings in comparisons_train.jsonl"""
    n_eval: int = 1000
    """records in each *_eval.jsonl (held-out prompts)"""
    seed: int = 0
    """seed of every generator"""
    calibrate: bool = False
    """print the labeler temperature at which two labelers agree on 73% of pairs, and exit"""

    def __post_init__(self):
        check(self, "task", lambda x: x in TASKS, f"one of {', '.join(TASKS)}")
        at_least_one(self, "n_sft", "n_prompts", "n_comparisons", "n_eval")
        if not self.calibrate and not self.out_dir:
            raise ValueError("--out_dir is required (or --calibrate)")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ValueError(f"--out_dir={self.out_dir} is a file, not a directory")


def export(task, out_dir, n_sft=20000, n_prompts=20000, n_comparisons=10000, n_eval=1000, seed=0):
    """Write the task's built-in data to out_dir as JSONL; returns {file name: number of records}."""
    files = {"sft_train.jsonl": task.sft_records(n_sft, "train", seed),
             "sft_eval.jsonl": task.sft_records(n_eval, "eval", seed),
             "prompts_train.jsonl": task.prompt_records(n_prompts, "train", seed),
             "prompts_eval.jsonl": task.prompt_records(n_eval, "eval", seed),
             "comparisons_train.jsonl": comparison_records(task, n_comparisons, "train", seed),
             "comparisons_eval.jsonl": comparison_records(task, n_eval, "eval", seed)}
    os.makedirs(out_dir, exist_ok=True)
    for name, records in files.items():
        write_jsonl(os.path.join(out_dir, name), records)
    return {name: len(records) for name, records in files.items()}


def run(cfg):
    task = get_task(cfg.task)
    if cfg.calibrate:
        groups = reference_groups(task, 20000, cfg.seed)
        t = calibrate_temperature(groups, seed=cfg.seed)
        print(f"{cfg.task}: temperature for {TARGET_AGREEMENT:.0%} agreement: {t:.4f}; at LABELER_TEMPERATURE = "
              f"{task.LABELER_TEMPERATURE}: labelers agree "
              f"{labeler_agreement(groups, random.Random(cfg.seed), task.LABELER_TEMPERATURE):.4f}, a labeler agrees "
              f"with gold {gold_agreement(groups, random.Random(cfg.seed), task.LABELER_TEMPERATURE):.4f}")
        return
    counts = export(task, cfg.out_dir, cfg.n_sft, cfg.n_prompts, cfg.n_comparisons, cfg.n_eval, cfg.seed)
    for name, n in counts.items():
        print(f"{os.path.join(cfg.out_dir, name)}: {n} records")


def main(argv=None):
    config.main(run, Config, "-m minirlhf.tasks", argv=argv)


if __name__ == "__main__":
    main()
