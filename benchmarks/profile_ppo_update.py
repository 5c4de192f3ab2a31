"""
Where PPO's update spends its time: torch.profiler over one update (4 epochs x 4 minibatches of 16: 16 policy and
value steps) of the real train_ppo.py on bench_ppo.py's workload, the operators grouped by kind.

It runs train_ppo.py in this process (runpy, 2 iterations) with minirlhf.ppo.update wrapped, and profiles the
second iteration's update (the first warms up). Self CPU time per operator kind, the matmuls' FLOPs as the
profiler counts them and their rate, and this machine's fp32 matmul peak measured in the same run:

    python benchmarks/profile_ppo_update.py [--threads 2] [--top 15]
"""
import argparse
import os
import runpy
import sys
import tempfile
import time

import torch
import workload
from workload import N_PROMPTS, ROOT, matmul_gflops, write_workload

from minirlhf import ppo

KINDS = [  # (kind, operator names): a name matches if it starts with one of them; the first kind that matches wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention", ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")),
    ("GELU", ("aten::gelu",)),
    ("LayerNorm", ("aten::native_layer_norm",)),
    ("log-softmax / logsumexp", ("aten::_log_softmax", "aten::logsumexp", "aten::_softmax", "aten::log_softmax")),
    ("optimizer (fused AdamW)", ("aten::_fused_adam", "aten::_foreach")),
    ("copies", ("aten::copy_", "aten::clone", "aten::cat", "aten::index", "aten::contiguous", "aten::_to_copy",
                "aten::repeat_interleave", "aten::embedding_dense_backward", "aten::index_put", "aten::gather")),
    ("elementwise / reductions", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::sum", "aten::mean",
                                  "aten::exp", "aten::where", "aten::clamp", "aten::neg", "aten::fill_", "aten::zero_",
                                  "aten::masked_fill", "aten::max", "aten::min", "aten::abs", "aten::maximum",
                                  "aten::minimum", "aten::sqrt", "aten::norm", "aten::linalg_vector_norm",
                                  "aten::pow", "aten::threshold", "aten::sigmoid", "aten::tanh", "aten::empty",
                                  "aten::ne", "aten::eq", "aten::ge", "aten::gt", "aten::lt", "aten::le",
                                  "aten::isfinite", "aten::stack", "aten::ones", "aten::zeros", "aten::full")),
]


def kind_of(name):
    return next((kind for kind, prefixes in KINDS if name.startswith(prefixes)), "other")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15, help="operators listed one by one")
    args = ap.parse_args()
    if args.threads < 1 or args.top < 0:
        sys.exit("--threads must be at least 1 and --top at least 0")
    peak = matmul_gflops(args.threads)
    update, calls, prof = ppo.update, [], {}

    def profiled_update(*a, **kw):
        calls.append(None)
        if len(calls) < 2:
            return update(*a, **kw)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as p:
            t0 = time.perf_counter()
            out = update(*a, **kw)
            prof["wall"] = time.perf_counter() - t0
        prof["events"] = p.key_averages()
        return out

    ppo.update = profiled_update
    with tempfile.TemporaryDirectory() as tmp:
        write_workload(tmp)
        sys.argv = ["train_ppo.py", f"--out_dir={tmp}/ppo", f"--sft_ckpt={tmp}/sft.pt", f"--rm_ckpt={tmp}/rm.pt",
                    f"--prompts={tmp}/prompts.jsonl", f"--eval_prompts={tmp}/prompts.jsonl", "--n_eval=8",
                    "--ceiling_prompts=0", "--iterations=2", f"--batch_size={N_PROMPTS}", "--n_minibatches=4",
                    "--ppo_epochs=4", f"--max_new_tokens={workload.NEW_TOKENS}", "--temperature=1.0",
                    "--stop_at_eos=false", f"--threads={args.threads}", "--device=cpu", "--save_interval=2"]
        runpy.run_path(os.path.join(ROOT, "train_ppo.py"), run_name="__main__")
    if "events" not in prof:
        sys.exit("train_ppo.py did not run a second update")

    events = [e for e in prof["events"] if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    by_kind = {}
    for e in events:
        k = by_kind.setdefault(kind_of(e.key), [0.0, 0, 0])
        k[0] += e.self_cpu_time_total / 1e6
        k[1] += e.count
        k[2] += e.flops or 0
    print(f"\none PPO update (16 policy + value steps of 16 sequences of 64 tokens), {args.threads} threads: "
          f"{prof['wall']:.3f} s wall (profiled), {total:.3f} s in aten operators")
    print(f"fp32 matmul peak (2048^3) in this run: {peak:.0f} GFLOP/s\n")
    print(f"{'kind':<26} {'seconds':>8} {'share':>6} {'calls':>7} {'GFLOP/s':>8}")
    for kind, (sec, count, flops) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        rate = f"{flops / sec / 1e9:8.1f}" if flops and sec else f"{'':>8}"
        print(f"{kind:<26} {sec:8.3f} {sec / total:6.1%} {count:7d} {rate}")
    print(f"\nthe {args.top} operators with the most self time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"  {e.key:<52} {e.self_cpu_time_total / 1e6:8.3f} s {e.count:7d} calls  ({kind_of(e.key)})")


if __name__ == "__main__":
    main()
