"""python -m minirlhf.tasks: export a built-in task as JSONL, or re-derive its labelers' temperature."""
import argparse
import os
import random

from minirlhf.tasks import TASKS, get_task
from minirlhf.tasks.labelers import TARGET_AGREEMENT, calibrate_temperature, gold_agreement, labeler_agreement


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m minirlhf.tasks", description=__doc__.split(":", 1)[1].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--task", choices=TASKS, default="instruct", help="which built-in task")
    ap.add_argument("--out_dir", help="where to write the JSONL files")
    ap.add_argument("--n_sft", type=int, default=20000, help="SFT demonstrations in sft_train.jsonl")
    ap.add_argument("--n_prompts", type=int, default=20000, help="PPO prompts in prompts_train.jsonl")
    ap.add_argument("--n_comparisons", type=int, default=10000, help="K-way rankings in comparisons_train.jsonl")
    ap.add_argument("--n_eval", type=int, default=1000, help="records in each *_eval.jsonl (held-out prompts)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every generator")
    ap.add_argument("--calibrate", action="store_true", help="re-derive the labeler temperature and exit")
    args = ap.parse_args(argv)
    task = get_task(args.task)
    for name in ("n_sft", "n_prompts", "n_comparisons", "n_eval"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.calibrate:
        groups = task.reference_groups(20000, args.seed)
        t = calibrate_temperature(groups, seed=args.seed)
        rng = random.Random(args.seed)
        print(f"{args.task}: temperature for {TARGET_AGREEMENT:.0%} agreement: {t:.4f}; at LABELER_TEMPERATURE = "
              f"{task.LABELER_TEMPERATURE}: labelers agree "
              f"{labeler_agreement(groups, rng, task.LABELER_TEMPERATURE):.4f}, a labeler agrees with gold "
              f"{gold_agreement(groups, random.Random(args.seed), task.LABELER_TEMPERATURE):.4f}")
        return
    if args.out_dir is None:
        ap.error("--out_dir is required (or --calibrate)")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        ap.error(f"--out_dir={args.out_dir} is a file, not a directory")
    counts = task.export(args.out_dir, n_sft=args.n_sft, n_prompts=args.n_prompts, n_comparisons=args.n_comparisons,
                         n_eval=args.n_eval, seed=args.seed)
    for name, n in counts.items():
        print(f"{os.path.join(args.out_dir, name)}: {n} records")


if __name__ == "__main__":
    main()
