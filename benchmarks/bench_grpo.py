"""
The time of one GRPO iteration of train_ppo.py (--advantage=grpo), split into rollout / scoring / update, against
TRL's GRPOTrainer on the same workload in the same run:

    policy, reference and reward models: GPTs with 4 layers, 4 heads, width 256, vocab 512, fp32, on the CPU with
    2 threads; 16 random prompts of 32 tokens x 4 responses each (--group_size=4) = 64 responses of exactly 32 new
    tokens (no stop at EOS); temperature 1; KL to the reference as a loss term with coefficient 0.04 (TRL's beta);
    one pass in 4 minibatches of 16 (4 optimizer steps); no value model; the median of 3 iterations after 1 warm-up.

minirlhf runs as the real train_ppo.py (a subprocess, on random checkpoints and prompts it writes, timed from its
metrics.jsonl); TRL runs benchmarks/trl_grpo_baseline.py in its own Python (--trl_python). The two take turns,
round by round, since this machine's speed drifts over minutes.

    python benchmarks/bench_grpo.py --trl_python /work/trl116-venv/bin/python [--rounds 2] [--out PATH]
    python benchmarks/bench_grpo.py --iterations=1 --rounds=1     # minirlhf only: a quick check of the workload
"""
import argparse
import json
import os
import platform
import statistics
import sys

import torch
import workload
from workload import HERE, matmul_gflops

GROUP, MINIBATCHES, KL_COEF = 4, 4, 0.04
N_RESPONSES = 64  # 16 prompts x GROUP


def run_ours(tmp, threads, iterations):
    rows, log = workload.run_train_ppo(
        tmp, threads, iterations, "--advantage=grpo", f"--group_size={GROUP}", f"--batch_size={N_RESPONSES}",
        f"--n_minibatches={MINIBATCHES}", "--ppo_epochs=1", "--kl_in=loss", f"--kl_coef={KL_COEF}")
    assert "no value model" in log, "GRPO must run without a value model"
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--activation", choices=("gelu", "gelu_tanh"), default="gelu_tanh",
                    help="the MLP's GELU in both libraries' models: GPT-2's tanh (the workload's GPT-2) or exact")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per round, after 1 warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each timing minirlhf then TRL")
    ap.add_argument("--trl_python", default=None, help="a Python with trl==1.16.0 installed, for the baseline")
    ap.add_argument("--out", default=os.path.join(HERE, "grpo_results.json"))
    args = ap.parse_args()
    if args.iterations < 1 or args.rounds < 1 or args.threads < 1:
        sys.exit("--iterations, --rounds and --threads must be at least 1")
    if args.trl_python and not os.access(args.trl_python, os.X_OK):
        sys.exit(f"--trl_python={args.trl_python}: not an executable Python")

    peak = matmul_gflops(args.threads)
    rows, trl_runs = workload.alternate(run_ours, args.trl_python, "trl_grpo_baseline.py", args.threads,
                                        args.iterations, args.rounds, args.activation)
    peak_after = matmul_gflops(args.threads)
    ours = {k: statistics.median(r[f"time/{k}"] for r in rows) for k in ("rollout", "score", "update", "iteration")}
    print(f"fp32 matmul throughput, {args.threads} threads: {peak:.0f} GFLOP/s before, {peak_after:.0f} after")
    result = {"device": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
              "activation": args.activation,
              "matmul_gflops": peak, "matmul_gflops_after": peak_after, "ours_median_seconds": ours,
              "ours_iterations": rows, "rounds": args.rounds,
              "workload": {"prompts": N_RESPONSES // GROUP, "group_size": GROUP, "prompt_len": workload.PROMPT_LEN,
                           "response_len": workload.NEW_TOKENS, "minibatches": MINIBATCHES, "kl_coef": KL_COEF}}
    header = f"{'phase':<10} {'minirlhf':>9}" + (f" {'TRL':>9}" if trl_runs else "")
    trl_split = {}
    if trl_runs:
        trl_iters = [x for run in trl_runs for x in run["iteration_s"]]
        trl_split = {k: statistics.median(it[k] for run in trl_runs for it in run["split_s"]["iterations"])
                     for k in ("generate", "score", "update")}
        trl_split["iteration"] = statistics.median(trl_iters)
        result.update(trl_runs=trl_runs, trl_median_seconds=trl_split["iteration"],
                      speedup_vs_trl=trl_split["iteration"] / ours["iteration"])
    print(f"\n{header}")
    for ours_key, trl_key in (("rollout", "generate"), ("score", "score"), ("update", "update"),
                              ("iteration", "iteration")):
        print(f"{ours_key:<10} {ours[ours_key]:>9.3f}" + (f" {trl_split[trl_key]:>9.3f}" if trl_runs else ""))
    if trl_runs:
        print(f"minirlhf is {result['speedup_vs_trl']:.2f}x faster per GRPO iteration than TRL "
              f"{trl_runs[0]['versions']['trl']} (median of {len(rows)} and {len(trl_iters)} iterations)")
    else:
        print("TRL not measured in this run (pass --trl_python; see benchmarks/trl_grpo_baseline.py)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
