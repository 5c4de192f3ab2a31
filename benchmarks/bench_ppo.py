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
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from minirlhf.checkpoint import save_checkpoint  # noqa: E402
from minirlhf.jsonl import write_jsonl  # noqa: E402
from minirlhf.model import GPT, GPTConfig  # noqa: E402
from minirlhf.tokenizer import get_tokenizer  # noqa: E402

N_LAYER, N_HEAD, N_EMBD, VOCAB, BLOCK = 4, 4, 256, 512, 256
N_PROMPTS, PROMPT_LEN, NEW_TOKENS, EPOCHS, MINIBATCHES = 64, 32, 32, 4, 4


def matmul_gflops(threads, n=2048, reps=10):
    """This machine's fp32 matmul throughput: a large square product, the best of reps."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def iteration_flops():
    """Model FLOPs of one iteration of train_ppo.py as it computes it: matmuls (2 per multiply-add)
    including attention's QK^T and PV over the causal pairs; backward = 2x forward. Returns {phase: FLOPs}."""
    C, L, V, P, R = N_EMBD, N_LAYER, VOCAB, PROMPT_LEN, NEW_TOKENS
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


def write_workload(tmp):
    """A 512-token tokenizer, random SFT and RM checkpoints, and 64 prompts of exactly 32 tokens."""
    ranks = {bytes([i]): i for i in range(256)}
    upper = [bytes([a, b]) for a in range(65, 91) for b in range(65, 91)]
    for t in upper[:VOCAB - 2 - 256]:  # merges of capital pairs: never in the lowercase prompts
        ranks[t] = len(ranks)
    tok_path = os.path.join(tmp, "bench.tiktoken")
    with open(tok_path, "w") as f:
        f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    tokenizer = get_tokenizer(tok_path)
    assert tokenizer.vocab_size == VOCAB
    torch.manual_seed(0)
    config = dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)
    save_checkpoint(os.path.join(tmp, "sft.pt"), GPT(GPTConfig(**config)), tokenizer, {}, 0)
    save_checkpoint(os.path.join(tmp, "rm.pt"), GPT(GPTConfig(**config, scalar_head=True)), tokenizer, {}, 0)
    g = torch.Generator().manual_seed(0)
    prompts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (PROMPT_LEN,), generator=g))
               for _ in range(N_PROMPTS)]
    assert all(len(tokenizer.encode(p)) == PROMPT_LEN for p in prompts)
    write_jsonl(os.path.join(tmp, "prompts.jsonl"), [{"prompt": p} for p in prompts])


def run_ours(tmp, threads, iterations):
    cmd = [sys.executable, os.path.join(ROOT, "train_ppo.py"), f"--out_dir={tmp}/ppo", f"--sft_ckpt={tmp}/sft.pt",
           f"--rm_ckpt={tmp}/rm.pt", f"--prompts={tmp}/prompts.jsonl", f"--eval_prompts={tmp}/prompts.jsonl",
           "--n_eval=8", f"--iterations={iterations}", f"--batch_size={N_PROMPTS}", f"--n_minibatches={MINIBATCHES}",
           f"--ppo_epochs={EPOCHS}", f"--max_new_tokens={NEW_TOKENS}", "--temperature=1.0", "--stop_at_eos=false",
           f"--threads={threads}", "--device=cpu", f"--save_interval={iterations}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train_ppo.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(f"{tmp}/ppo/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert all(r["charts/response_length"] == NEW_TOKENS for r in rows), "every response must have 32 tokens"
    return rows


def run_trl(python, threads, iterations):
    """TRL's PPOTrainer on the same workload, in its own Python (see trl_baseline.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "trl.json")
        done = subprocess.run([python, os.path.join(HERE, "trl_baseline.py"), "--threads", str(threads),
                               "--iterations", str(iterations), "--out", out], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"trl_baseline.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per round, after 1 warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each timing minirlhf then TRL")
    ap.add_argument("--trl_python", default=None, help="a Python with trl==1.12.0 installed, for the baseline")
    ap.add_argument("--out", default=os.path.join(HERE, "ppo_results.json"))
    args = ap.parse_args()

    peak = matmul_gflops(args.threads)
    flops = iteration_flops()
    total_flops = sum(flops.values())
    # this machine's speed drifts over minutes, so the two implementations take turns, round by round
    rows, trl_runs = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            write_workload(tmp)
            rows += run_ours(tmp, args.threads, args.iterations + 1)[1:]  # the first is the warm-up
        if args.trl_python:
            trl_runs.append(run_trl(args.trl_python, args.threads, args.iterations))
        ours = [round(x['time/iteration'], 2) for x in rows[-args.iterations:]]
        print(f"round {r + 1}/{args.rounds}: minirlhf {ours} s"
              + (f", TRL {[round(x, 2) for x in trl_runs[-1]['iteration_s']]} s" if trl_runs else ""), flush=True)
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
