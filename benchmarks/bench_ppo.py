"""
The time of one PPO iteration of train_ppo.py, split into rollout / scoring / update, on a fixed workload:

    policy, reference, reward and value models: GPTs with 4 layers, 4 heads, width 256, vocab 512,
    block 256, fp32, on the CPU with 2 threads; 64 random prompts of 32 tokens; exactly 32 new
    tokens (no stop at EOS); temperature 1; 4 epochs x 4 minibatches of 16; the median of 3
    iterations after 1 warm-up.

It runs the real train_ppo.py (as a subprocess, on random checkpoints and prompts it writes) and
reads the per-iteration times from its metrics.jsonl. It also counts the model FLOPs of one
iteration, measures this machine's fp32 matmul throughput in the same run, and, when a Python with
TRL 1.12 is given (--trl_python, see benchmarks/trl_baseline.py), times TRL's PPOTrainer on the same
workload in the same run and prints the ratio.

    python benchmarks/bench_ppo.py [--trl_python /path/to/venv/bin/python] [--out benchmarks/ppo_results.json]
"""
import argparse
import json
import os
import platform
import statistics

import torch
import workload
from workload import HERE, N_PROMPTS, matmul_gflops

EPOCHS, MINIBATCHES = 4, 4


def iteration_flops():
    """Model FLOPs of one iteration of train_ppo.py as it computes it: matmuls (2 per multiply-add)
    including attention's QK^T and PV over the causal pairs; backward = 2x forward. Returns {phase: FLOPs}."""
    C, L, V, P, R = workload.N_EMBD, workload.N_LAYER, workload.VOCAB, workload.PROMPT_LEN, workload.NEW_TOKENS
    T = P + R
    qkv, rest = 2 * 3 * C * C, 2 * 9 * C * C  # per token: the q, k, v projection; output projection + MLP

    def forward(tokens, past=0, last=None):
        """`tokens` new positions after `past` cached ones through the blocks; the final block
        computes output projection, MLP and queries for the `last` positions only."""
        last = last or tokens
        pairs = lambda n: sum(range(past + tokens - n + 1, past + tokens + 1))  # noqa: E731  (query, key) pairs
        return ((L - 1) * (tokens * (qkv + rest) + 4 * C * pairs(tokens))
                + tokens * qkv + last * rest + 4 * C * pairs(last))
    lm_head = 2 * C * V  # per position that gets logits
    # rollout: prefill the prompt (logits at its last position only), then R - 1 decode steps on the cache
    rollout = N_PROMPTS * (forward(P, last=1) + sum(forward(1, past=P + t - 1) for t in range(1, R)) + R * lm_head)
    # scoring: reference (log-probs), value model, reward model, one forward each, the final block only
    # where it is read; the policy's old log-probs came with the rollout
    score = N_PROMPTS * (forward(T, last=R + 1) + R * lm_head + forward(T, last=R + 1) + forward(T, last=R))
    # update: every sequence EPOCHS times through policy and value model, forward + backward
    update = EPOCHS * N_PROMPTS * 3 * (forward(T, last=R + 1) + R * lm_head + forward(T, last=R + 1))
    return {"rollout": rollout, "score": score, "update": update}


def run_ours(tmp, threads, iterations):
    return workload.run_train_ppo(tmp, threads, iterations, f"--batch_size={N_PROMPTS}",
                                  f"--n_minibatches={MINIBATCHES}", f"--ppo_epochs={EPOCHS}")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--activation", choices=("gelu", "gelu_tanh"), default="gelu_tanh",
                    help="the MLP's GELU in both libraries' models: GPT-2's tanh (the workload's GPT-2) or exact")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per round, after 1 warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each timing minirlhf then TRL")
    ap.add_argument("--trl_python", default=None, help="a Python with trl==1.12.0 installed, for the baseline")
    ap.add_argument("--out", default=os.path.join(HERE, "ppo_results.json"))
    args = ap.parse_args()

    peak = matmul_gflops(args.threads)
    flops = iteration_flops()
    total_flops = sum(flops.values())
    rows, trl_runs = workload.alternate(run_ours, args.trl_python, "trl_baseline.py", args.threads, args.iterations,
                                        args.rounds, args.activation)
    ours = {k: statistics.median(r[f"time/{k}"] for r in rows) for k in ("rollout", "score", "update", "iteration")}
    peak_after = matmul_gflops(args.threads)

    achieved = total_flops / ours["iteration"] / 1e9
    print(f"fp32 matmul throughput, {args.threads} threads (2048^3, best of 10): {peak:.0f} GFLOP/s before, "
          f"{peak_after:.0f} after")
    print(f"model FLOPs of one iteration: {total_flops / 1e9:.0f} GFLOP "
          f"(rollout {flops['rollout'] / 1e9:.0f}, scoring {flops['score'] / 1e9:.0f}, "
          f"update {flops['update'] / 1e9:.0f})")
    print(f"\n{'phase':<10} {'seconds':>8} {'GFLOP/s':>8}")
    for k in ("rollout", "score", "update"):
        print(f"{k:<10} {ours[k]:>8.3f} {flops[k] / ours[k] / 1e9:>8.1f}")
    print(f"{'iteration':<10} {ours['iteration']:>8.3f} {achieved:>8.1f}   ({achieved / peak:.0%} of the matmul peak)")
    result = {"device": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
              "activation": args.activation,
              "matmul_gflops": peak, "matmul_gflops_after": peak_after, "flops": flops, "ours_median_seconds": ours,
              "ours_iterations": rows, "rounds": args.rounds, "ours_gflops": achieved,
              "fraction_of_matmul_peak": achieved / peak}
    if trl_runs:
        trl_iters = [x for run in trl_runs for x in run["iteration_s"]]
        trl_median = statistics.median(trl_iters)
        trl_split = {k: statistics.median(it[k] for run in trl_runs for it in run["split_s"]["iterations"])
                     for k in ("generate", "score", "update")}
        ratio = trl_median / ours["iteration"]
        result.update(trl_runs=trl_runs, trl_median_seconds=trl_median, speedup_vs_trl=ratio)
        print(f"\nTRL {trl_runs[0]['versions']['trl']} PPOTrainer, same workload, same run "
              f"(median of {len(trl_iters)} iterations):")
        print(f"{'rollout':<10} {trl_split['generate']:>8.3f}\n{'score':<10} {trl_split['score']:>8.3f}\n"
              f"{'update':<10} {trl_split['update']:>8.3f}\n{'iteration':<10} {trl_median:>8.3f}")
        print(f"minirlhf is {ratio:.2f}x faster per iteration than TRL")
    else:
        print("TRL not measured in this run (pass --trl_python; see benchmarks/trl_baseline.py)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
