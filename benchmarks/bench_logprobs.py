"""
Benchmark of kernels/logprobs.py on one GPU: time and peak memory of token_logprobs and
linear_token_logprobs against the plain-PyTorch reference (materialized logits, fp32
log_softmax, gather) and against torch.compile of that reference. All inputs bf16.

Reported:
- token_logprobs (logits (N, V) given), forward and forward+backward: median time
  (triton.testing.do_bench), peak memory above the inputs, and the fraction of the bandwidth
  roofline reached. Bytes moved: forward reads the logits once; forward+backward reads them
  twice and writes their gradient once. The roofline is the device-to-device copy bandwidth
  measured in the same run (a 1 GiB copy, read + write bytes counted), printed at the top.
- linear_token_logprobs (hidden (N, C), lm_head weight (V, C)), forward and forward+backward:
  time against the bare bf16 lm_head matmuls (forward h @ W.T; backward G @ W and G.T @ h),
  and the extra memory: peak above the inputs minus what every implementation returns
  (log-probs, grad_hidden, grad_weight), as a fraction of the bf16 (N, V) logits it avoids.
Configurations estimated not to fit in the card's memory are skipped and listed.

Usage (from the repository root):
    python benchmarks/bench_logprobs.py [--out benchmarks/logprobs_results.json]
    python benchmarks/bench_logprobs.py --smoke
    python benchmarks/bench_logprobs.py --tokens 16384 --no_compile   # what benchmarks/gpu.py runs
--smoke runs tiny fp32 shapes through the same code on the CPU, under the Triton interpreter,
with a plain timer: it checks the script end to end and measures nothing.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import `kernels` from the repository root

TOKENS = [8192, 16384, 32768]
VOCABS = [50257, 128256]  # GPT-2, Llama 3
HIDDENS = [768, 4096]  # GPT-2 small, 7-8B models
SMOKE_TOKENS, SMOKE_VOCABS, SMOKE_HIDDENS = [24, 40], [1500], [16]  # V > 2 interpreter blocks


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/logprobs_results.json", help="where to write the JSON results")
    parser.add_argument("--smoke", action="store_true", help="tiny fp32 shapes on the CPU: a check, not a measurement")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help=f"token counts N (default {TOKENS})")
    parser.add_argument("--no_compile", action="store_true", help="leave out torch.compile (its compilation takes "
                        "most of a short run)")
    return parser.parse_args()


def estimated_peak_bytes(op, impl, N, V, C=0, esize=2):
    """A rough upper bound on one forward+backward, only used to skip what cannot fit.
    Ours: the logits and their gradient (token_logprobs), or one chunk of logits (linear).
    The reference: on top of the logits, fp32 copies (logits.float(), the log_softmax saved
    for backward, its gradient) and the gradient in the input dtype."""
    weights = (N * C + V * C) * esize * 2  # inputs and their gradients (linear only)
    per_logit = {"triton": 2 * esize, "torch": 8 * esize + 12, "torch.compile": 4 * esize + 8,
                 "matmuls": 2 * esize}[impl]
    if op == "linear_token_logprobs" and impl == "triton":
        per_logit = esize / 4  # a chunk of about a tenth of the tokens, plus slack
    return per_logit * N * V + weights


class Bench:
    """Time and memory on the device at hand: do_bench and the CUDA allocator's peak on a GPU,
    a plain timer and no memory figures in a smoke run on the CPU."""

    def __init__(self, smoke):
        self.cuda = not smoke
        self.device = "cuda" if self.cuda else "cpu"
        # 10% of the card is left for the CUDA context and the allocator's fragmentation
        self.memory_budget = 0.9 * torch.cuda.get_device_properties(0).total_memory if self.cuda else math.inf

    def time_ms(self, fn):
        if self.cuda:
            import triton.testing

            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        fn()  # warm-up: compilation
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)

    def peak_bytes(self, fn):
        """Peak bytes allocated while fn runs, above what was allocated before (None on the CPU)."""
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def measure(self, fn):
        """{"ms", "peak_bytes"}, or {"error"} (OOM, a torch.compile failure, ...): one failing
        implementation must not end the run."""
        try:
            return {"ms": self.time_ms(fn), "peak_bytes": self.peak_bytes(fn)}
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {"error": "OOM"}
        except Exception as e:
            return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}

    def copy_bandwidth(self):
        """Device-to-device copy bandwidth in bytes/s, counting the read and the write."""
        n_bytes = 2**30 if self.cuda else 2**24
        src = torch.empty(n_bytes, dtype=torch.uint8, device=self.device)
        dst = torch.empty_like(src)
        return 2 * n_bytes / (self.time_ms(lambda: dst.copy_(src)) * 1e-3)


def forward_backward(op, inputs, targets):
    """A closure running op forward and backward, with a fixed random upstream gradient
    (per-token, as PPO's advantages are)."""
    grad_out = torch.randn(targets.shape, device=targets.device)

    def run():
        return torch.autograd.grad(op(*inputs, targets), inputs, grad_out)

    return run


def bench_token_logprobs(bench, ops, N, V, dtype, bandwidth):
    gen = torch.Generator(device=bench.device).manual_seed(0)
    logits = torch.randn(N, V, generator=gen, device=bench.device).to(dtype)
    targets = torch.randint(0, V, (N,), generator=gen, device=bench.device)
    logits_bytes = logits.numel() * logits.element_size()
    rows, skipped = [], []
    for impl, op in ops.items():
        row = dict(op="token_logprobs", impl=impl, N=N, V=V)
        need = estimated_peak_bytes("token_logprobs", impl, N, V, esize=logits.element_size())
        if need > bench.memory_budget:
            skipped.append(f"token_logprobs {impl} N={N} V={V}: ~{need / 1e9:.0f} GB estimated, "
                           f"budget {bench.memory_budget / 1e9:.0f} GB")
            continue
        x = logits.detach().requires_grad_()
        # forward reads the logits once; backward reads them again and writes their gradient
        for mode, fn, moved in (("fwd", lambda: op(logits, targets), logits_bytes),
                                ("fwd_bwd", forward_backward(op, [x], targets), 3 * logits_bytes)):
            result = bench.measure(fn)
            row.update({f"{mode}_{k}": v for k, v in result.items()})
            if "ms" in result:
                row[f"{mode}_roofline_fraction"] = moved / (result["ms"] * 1e-3) / bandwidth
        rows.append(row)
    return rows, skipped


def bench_linear_token_logprobs(bench, ops, N, V, C, dtype):
    from kernels.logprobs import _default_chunk_size

    gen = torch.Generator(device=bench.device).manual_seed(0)
    hidden = torch.randn(N, C, generator=gen, device=bench.device).to(dtype)
    weight = (torch.randn(V, C, generator=gen, device=bench.device) / math.sqrt(C)).to(dtype)
    targets = torch.randint(0, V, (N,), generator=gen, device=bench.device)
    esize = hidden.element_size()
    logits_bytes = N * V * esize
    returned = {"fwd": N * 4, "fwd_bwd": N * 4 + (N * C + V * C) * esize}  # log-probs (+ both gradients)
    rows, skipped = [], []

    # the bare lm_head matmuls: forward h @ W.T, backward G @ W and G.T @ h for a (N, V) gradient G
    need = estimated_peak_bytes("linear_token_logprobs", "matmuls", N, V, C, esize)
    if need > bench.memory_budget:
        skipped.append(f"lm_head matmuls N={N} V={V} C={C}: ~{need / 1e9:.0f} GB estimated")
    else:
        G = torch.randn(N, V, generator=gen, device=bench.device).to(dtype)
        parts = [bench.measure(f) for f in (lambda: hidden @ weight.t(), lambda: G @ weight, lambda: G.t() @ hidden)]
        del G
        row = dict(op="linear_token_logprobs", impl="matmuls", N=N, V=V, C=C)
        if all("ms" in p for p in parts):
            row.update(fwd_ms=parts[0]["ms"], fwd_bwd_ms=sum(p["ms"] for p in parts))
        else:
            row["error"] = next(p["error"] for p in parts if "error" in p)
        rows.append(row)

    for impl, op in ops.items():
        row = dict(op="linear_token_logprobs", impl=impl, N=N, V=V, C=C)
        need = estimated_peak_bytes("linear_token_logprobs", impl, N, V, C, esize)
        if need > bench.memory_budget:
            skipped.append(f"linear_token_logprobs {impl} N={N} V={V} C={C}: ~{need / 1e9:.0f} GB estimated, "
                           f"budget {bench.memory_budget / 1e9:.0f} GB")
            continue
        if impl == "triton":
            row["chunk_size"] = _default_chunk_size(N)
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        for mode, fn in (("fwd", lambda: op(hidden, weight, targets)),
                         ("fwd_bwd", forward_backward(op, [h, w], targets))):
            result = bench.measure(fn)
            row.update({f"{mode}_{k}": v for k, v in result.items()})
            if result.get("peak_bytes") is not None:
                row[f"{mode}_extra_bytes"] = result["peak_bytes"] - returned[mode]
                row[f"{mode}_extra_fraction_of_logits"] = row[f"{mode}_extra_bytes"] / logits_bytes
        rows.append(row)

    matmuls = next((r for r in rows if r["impl"] == "matmuls" and "fwd_bwd_ms" in r), None)
    for row in rows:
        if matmuls and row["impl"] != "matmuls" and "fwd_bwd_ms" in row:
            row["fwd_bwd_over_matmuls"] = row["fwd_bwd_ms"] / matmuls["fwd_bwd_ms"]
    return rows, skipped


def print_table(title, rows, keys):
    print(f"\n{title}")
    print("".join(f"{k:>{max(len(k), 13) + 2}s}" for k in keys))
    for row in rows:
        cells = []
        for k in keys:
            mode = "fwd_bwd" if k.startswith("fwd_bwd") else "fwd" if k.startswith("fwd") else None
            v = row.get(k, row.get(f"{mode}_error", row.get("error", "-")) if mode else "-")
            if v is None:
                v = "-"
            elif isinstance(v, float):
                v = f"{v:.3g}"
            if k.endswith("bytes") and isinstance(v, int):
                v = f"{v / 2**20:.0f}MiB"
            width = max(len(k), 13) + 2
            cells.append(f"{str(v)[: width - 1]:>{width}s}")
        print("".join(cells))


def main():
    args = parse_args()
    if args.smoke:
        # set before triton is imported: the kernels then run in Triton's CPU interpreter
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        sys.exit("bench_logprobs.py measures on a CUDA GPU and none is available here. "
                 "`--smoke` runs an end-to-end check of the script on the CPU (no measurement).")
    import triton

    from kernels.logprobs import (
        linear_token_logprobs,
        linear_token_logprobs_reference,
        token_logprobs,
        token_logprobs_reference,
    )

    label = ""
    if args.smoke:
        label = ("SMOKE RUN: CPU, Triton interpreter, fp32, tiny shapes, plain timer. Checks the script; "
                 "NOT a measurement.")
    if label:
        print(label)
    bench = Bench(args.smoke)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    n_tokens, vocabs, hiddens = (SMOKE_TOKENS, SMOKE_VOCABS, SMOKE_HIDDENS) if args.smoke else (TOKENS, VOCABS, HIDDENS)
    n_tokens = args.tokens or n_tokens
    device_name = torch.cuda.get_device_name() if bench.cuda else "cpu"
    bandwidth = bench.copy_bandwidth()
    print(f"device: {device_name}; copy bandwidth (read + write bytes): {bandwidth / 1e9:.0f} GB/s")

    # torch.compile is lazy: a failure shows at the first call and is reported in that row
    token_ops = {"triton": token_logprobs, "torch": token_logprobs_reference}
    linear_ops = {"triton": linear_token_logprobs, "torch": linear_token_logprobs_reference}
    if not args.no_compile:
        token_ops["torch.compile"] = torch.compile(token_logprobs_reference)
        linear_ops["torch.compile"] = torch.compile(linear_token_logprobs_reference)
    token_rows, linear_rows, skipped = [], [], []
    for N in n_tokens:
        for V in vocabs:
            rows, skips = bench_token_logprobs(bench, token_ops, N, V, dtype, bandwidth)
            token_rows += rows
            skipped += skips
            for C in hiddens:
                rows, skips = bench_linear_token_logprobs(bench, linear_ops, N, V, C, dtype)
                linear_rows += rows
                skipped += skips

    print_table(f"token_logprobs, {dtype}; roofline = bytes moved / time / copy bandwidth", token_rows,
                ["impl", "N", "V", "fwd_ms", "fwd_roofline_fraction", "fwd_bwd_ms", "fwd_bwd_roofline_fraction",
                 "fwd_peak_bytes", "fwd_bwd_peak_bytes"])
    print_table(f"linear_token_logprobs, {dtype}; extra memory as a fraction of the {dtype} (N, V) logits", linear_rows,
                ["impl", "N", "V", "C", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_over_matmuls", "fwd_bwd_peak_bytes",
                 "fwd_bwd_extra_fraction_of_logits"])
    if skipped:
        print("\nskipped (estimated not to fit in memory):")
        for line in skipped:
            print("  " + line)

    report = dict(
        smoke=args.smoke,
        note=label or ("median times (triton.testing.do_bench); peak bytes above the inputs "
                       "(torch.cuda.max_memory_allocated)"),
        device=device_name,
        torch=torch.__version__,
        triton=triton.__version__,
        dtype=str(dtype),
        copy_bandwidth_bytes_per_s=bandwidth,
        token_logprobs=token_rows,
        linear_token_logprobs=linear_rows,
        skipped=skipped,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
