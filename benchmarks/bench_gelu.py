"""
The MLP's GELU, forward and backward: exact (models from scratch), GPT-2's tanh approximation as one
operator (minirlhf's GPT-2 imports), and the same approximation as transformers' `gelu_new` writes it
(eight elementwise operators). Times them in turns on one activation tensor and writes JSON.

    python benchmarks/bench_gelu.py                      # the default instruct SFT step's MLP, 2 threads
    python benchmarks/bench_gelu.py --rows 1008 --cols 1024 --threads 2   # the PPO benchmark's
"""
import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def gelu_new(x):  # transformers' NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


VARIANTS = {"exact": lambda x: F.gelu(x), "tanh, one operator": lambda x: F.gelu(x, approximate="tanh"),
            "tanh, as gelu_new": gelu_new}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2432, help="tokens: batch x padded length (SFT: 64 x 38)")
    ap.add_argument("--cols", type=int, default=768, help="the MLP's width, 4 x n_embd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50, help="timed calls per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "gelu_results.json"))
    args = ap.parse_args()
    if min(args.rows, args.cols, args.threads, args.reps, args.rounds) < 1:
        raise SystemExit("--rows, --cols, --threads, --reps and --rounds must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.cols, requires_grad=True)
    grad = torch.randn(args.rows, args.cols)
    ref = VARIANTS["tanh, one operator"](x)
    assert torch.allclose(gelu_new(x), ref, atol=1e-5), "gelu_new and the tanh GELU must agree"
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):  # in turns, so that the variants share the machine's drift
        for name, f in VARIANTS.items():
            for _ in range(3):
                f(x).backward(grad)
            for _ in range(args.reps):
                t0 = time.perf_counter()
                f(x).backward(grad)
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"GELU forward + backward on {args.rows} x {args.cols} floats, {args.threads} threads, median ms:")
    for name, ms in median.items():
        print(f"  {name:<20} {ms:7.3f}  ({ms / median['exact']:.2f}x the exact one)")
    with open(args.out, "w") as f:
        json.dump({"device": platform.processor() or platform.machine(), "torch": torch.__version__,
                   "threads": args.threads, "shape": [args.rows, args.cols], "median_ms": median}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
