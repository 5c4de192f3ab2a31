"""
KV-cache generation vs uncached generation (a full forward over the whole sequence per token).

    python benchmarks/bench_generate.py                     # 6 layers, 384 wide, batch 8, 256 new tokens
    python benchmarks/bench_generate.py --device=cuda --dtype=bfloat16

Both runs decode greedily from the same random model and prompts, so they must produce the same
tokens; the script checks that, prints the times and their ratio, and writes JSON.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minirlhf.model import GPT, GPTConfig  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--n_layer", type=int, default=6)
p.add_argument("--n_embd", type=int, default=384)
p.add_argument("--n_head", type=int, default=6)
p.add_argument("--vocab_size", type=int, default=50304)
p.add_argument("--batch_size", type=int, default=8)
p.add_argument("--prompt_len", type=int, default=32)
p.add_argument("--new_tokens", type=int, default=256)
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate_results.json"))
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

torch.manual_seed(0)
config = GPTConfig(block_size=args.prompt_len + args.new_tokens, vocab_size=args.vocab_size,
                   n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
model = GPT(config).to(args.device, getattr(torch, args.dtype)).eval()
prompts = torch.randint(0, args.vocab_size, (args.batch_size, args.prompt_len), device=args.device)


def timed(use_cache):
    model.generate(prompts[:, :4], 4, temperature=0, use_cache=use_cache)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompts, args.new_tokens, temperature=0, use_cache=use_cache)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out.tokens, time.perf_counter() - t0


cached, t_cached = timed(True)
uncached, t_uncached = timed(False)
same = torch.equal(cached, uncached)
agree = (cached == uncached).float().mean().item()
result = dict(device=args.device if args.device == "cpu" else torch.cuda.get_device_name(), dtype=args.dtype,
              threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
              model=dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size),
              batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
              seconds_cached=t_cached, seconds_uncached=t_uncached, speedup=t_uncached / t_cached,
              tokens_per_s_cached=args.batch_size * args.new_tokens / t_cached, same_tokens=same, token_agreement=agree)
print(f"{'':<10} {'seconds':>9} {'tokens/s':>9}")
print(f"{'kv-cache':<10} {t_cached:>9.2f} {result['tokens_per_s_cached']:>9.1f}")
print(f"{'uncached':<10} {t_uncached:>9.2f} {args.batch_size * args.new_tokens / t_uncached:>9.1f}")
print(f"speedup of the KV cache: {result['speedup']:.1f}x  ({args.n_layer} layers, {args.n_embd} wide, batch "
      f"{args.batch_size}, {args.new_tokens} new tokens, {args.dtype} on {result['device']}, "
      f"{result['threads']} threads)")
print(f"greedy tokens identical: {same}" + ("" if same else f" (agreement {agree:.4f}; low-precision ties can differ)"))
with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
print(f"wrote {args.out}")
