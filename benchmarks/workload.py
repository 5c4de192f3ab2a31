"""
What bench_ppo.py and bench_grpo.py share: the fixed workload (a 512-token tokenizer, random 4-layer GPT
checkpoints, 64 random prompts of exactly 32 tokens), the machine's fp32 matmul throughput, and one run of the real
train_ppo.py on that workload, read back from its metrics.jsonl.
"""
import base64
import json
import os
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
N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 32, 32


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


def write_workload(tmp, activation="gelu_tanh"):
    """A 512-token tokenizer, random SFT and RM checkpoints (GPT-2's tanh GELU, or gelu: the exact one), and 64
    prompts of exactly 32 tokens."""
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
    config = dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                  activation=activation)
    save_checkpoint(os.path.join(tmp, "sft.pt"), GPT(GPTConfig(**config)), tokenizer, {}, 0)
    save_checkpoint(os.path.join(tmp, "rm.pt"), GPT(GPTConfig(**config, scalar_head=True)), tokenizer, {}, 0)
    g = torch.Generator().manual_seed(0)
    prompts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (PROMPT_LEN,), generator=g))
               for _ in range(N_PROMPTS)]
    assert all(len(tokenizer.encode(p)) == PROMPT_LEN for p in prompts)
    write_jsonl(os.path.join(tmp, "prompts.jsonl"), [{"prompt": p} for p in prompts])


def run_train_ppo(tmp, threads, iterations, *options):
    """train_ppo.py on the workload in tmp (exactly NEW_TOKENS per response, temperature 1), `options` after the
    workload's own; returns its metrics.jsonl rows and its console output."""
    cmd = [sys.executable, os.path.join(ROOT, "train_ppo.py"), f"--out_dir={tmp}/ppo", f"--sft_ckpt={tmp}/sft.pt",
           f"--rm_ckpt={tmp}/rm.pt", f"--prompts={tmp}/prompts.jsonl", f"--eval_prompts={tmp}/prompts.jsonl",
           "--n_eval=8", f"--iterations={iterations}", f"--max_new_tokens={NEW_TOKENS}", "--temperature=1.0",
           "--stop_at_eos=false", f"--threads={threads}", "--device=cpu", f"--save_interval={iterations}", *options]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train_ppo.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(f"{tmp}/ppo/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert all(r["charts/response_length"] == NEW_TOKENS for r in rows), f"every response must have {NEW_TOKENS} tokens"
    return rows, done.stdout


# our GELU option: transformers' activation_function of the same function
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def run_baseline(python, script, threads, iterations, activation="gelu_tanh"):
    """A TRL baseline script (trl_baseline.py, trl_grpo_baseline.py) on the workload, in its own Python; its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "trl.json")
        done = subprocess.run([python, os.path.join(HERE, script), "--threads", str(threads), "--iterations",
                               str(iterations), "--activation", HF_ACTIVATION[activation], "--out", out],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def alternate(run_ours, trl_python, trl_script, threads, iterations, rounds, activation="gelu_tanh"):
    """minirlhf (run_ours(tmp, threads, iterations) on a fresh workload, the first iteration a warm-up) and TRL
    taking turns, round by round, since this machine's speed drifts over minutes: (our timed rows, TRL's runs)."""
    rows, trl_runs = [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            write_workload(tmp, activation)
            rows += run_ours(tmp, threads, iterations + 1)[1:]
        if trl_python:
            trl_runs.append(run_baseline(trl_python, trl_script, threads, iterations, activation))
        ours = [round(x["time/iteration"], 2) for x in rows[-iterations:]]
        print(f"round {r + 1}/{rounds}: minirlhf {ours} s"
              + (f", TRL {[round(x, 2) for x in trl_runs[-1]['iteration_s']]} s" if trl_runs else ""), flush=True)
    return rows, trl_runs
