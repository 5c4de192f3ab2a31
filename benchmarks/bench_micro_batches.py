"""
One SFT step on the built-in conversations, the batch in one piece vs in micro-batches of similar lengths.

    python benchmarks/bench_micro_batches.py                 # the chat task's SFT model and batch, CPU
    python benchmarks/bench_micro_batches.py --parts 1 2 4 8 --device=cuda

A step is forward, backward and AdamW on batch_size conversations drawn at random (train_sft.py's
loop). The conversations run from 20 to 110 tokens, and one batch pads them all to its longest;
micro_batches sorts them and cuts the batch in n parts, each padded to its own longest, whose
gradients add up to the batch's. The script checks that the summed gradient equals the whole
batch's, then times the settings in turns (so that they share the machine's drift) and writes JSON.
"""
import argparse
import json
import os
import platform
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minirlhf.data import IGNORE_INDEX, encode_sft, micro_batches, sft_batch  # noqa: E402
from minirlhf.model import GPT, GPTConfig  # noqa: E402
from minirlhf.tasks import get_task  # noqa: E402
from minirlhf.tokenizer import get_tokenizer  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--task", default="chat")
p.add_argument("--parts", type=int, nargs="+", default=[1, 4],
               help="micro-batch counts to time; the first is the baseline")
p.add_argument("--n_layer", type=int, default=4)
p.add_argument("--n_embd", type=int, default=192)
p.add_argument("--n_head", type=int, default=4)
p.add_argument("--batch_size", type=int, default=64)
p.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "micro_batches_results.json"))
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

tokenizer = get_tokenizer("bytes")
examples = [encode_sft(tokenizer, r, 128) for r in get_task(args.task).sft_records(5000, "train", 0)]
torch.manual_seed(0)
model = GPT(GPTConfig(block_size=128, vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                      n_embd=args.n_embd)).to(args.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)


def backward(picks, n):
    """The step's gradient, the batch in n parts; returns the tokens it ran (padding included)."""
    batches = [sft_batch(part, tokenizer.pad_id) for part in micro_batches(picks, n, lambda e: len(e[0]))]
    n_tokens = sum((t != IGNORE_INDEX).sum() for _, t in batches).to(args.device)
    for idx, targets in batches:
        (-model(idx.to(args.device), targets=targets.to(args.device)).sum() / n_tokens).backward()
    return sum(idx.numel() for idx, _ in batches)


rng = random.Random(0)
picks = [examples[rng.randrange(len(examples))] for _ in range(args.batch_size)]
grads = {}
for n in args.parts:
    model.zero_grad(set_to_none=True)
    backward(picks, n)
    grads[n] = torch.cat([q.grad.flatten() for q in model.parameters()])
    torch.testing.assert_close(grads[n], grads[args.parts[0]], msg=lambda m: f"{n} parts: {m}")


def timed(n, rng):
    tokens = 0
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        tokens += backward([examples[rng.randrange(len(examples))] for _ in range(args.batch_size)], n)
        optimizer.step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens


timed(args.parts[0], random.Random(1))  # warm-up
seconds = {n: 0.0 for n in args.parts}
tokens = {n: 0 for n in args.parts}
for r in range(args.rounds):
    for n in args.parts:  # the same batches for every setting in a round
        dt, k = timed(n, random.Random(100 + r))
        seconds[n] += dt
        tokens[n] += k
steps = args.steps * args.rounds
base = args.parts[0]
print(f"{args.task} SFT step, batch {args.batch_size}, {args.n_layer}x{args.n_embd}, {args.device}, "
      f"{steps} steps per setting")
print("| parts | ms/step | tokens run/step | speedup |\n|---|---|---|---|")
for n in args.parts:
    print(f"| {n} | {1000 * seconds[n] / steps:.0f} | {tokens[n] / steps:.0f} | {seconds[base] / seconds[n]:.2f}x |")
result = {"args": vars(args), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
          "ms_per_step": {n: 1000 * seconds[n] / steps for n in args.parts},
          "tokens_per_step": {n: tokens[n] / steps for n in args.parts},
          "speedup": {n: seconds[base] / seconds[n] for n in args.parts}}
with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
