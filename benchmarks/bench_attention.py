"""
Benchmark flash_attention (kernels/attention.py) against torch's scaled_dot_product_attention.

    python benchmarks/bench_attention.py [--out benchmarks/attention_results.json]
    python benchmarks/bench_attention.py --smoke    # CPU, Triton interpreter: checks the script, measures nothing

1. Training shapes, bf16, causal: D = 64 and 128, H = 2048 // D, T = 1k..16k with B * T = 16k tokens.
   Forward and forward+backward TFLOP/s, FLOPs = 4 * B * H * T * T * D / 2 (causal) for the forward
   and 3.5x that for forward+backward (the backward does 2.5x the forward's matmul work).
   Providers: ours; SDPA forced onto its flash backend; ours with key_start (left padding) against
   SDPA with the same padding as an explicit boolean mask, which rules its flash backend out; and
   attention_reference, skipped where its (T, T) matrices would not fit in memory.
2. One KV-cache decode step, bf16: Tq = 1 query over Tk = 1k..16k cached keys, B = 1 and 8, latency in
   us and the bandwidth reached: the bytes of k and v read once (2 * B * H * Tk * D * 2) over the time,
   against the roofline, the device-to-device copy bandwidth measured in the same run (read + write
   bytes). k and v are slices of a preallocated cache, as the model passes them.

Times are medians of triton.testing.do_bench. The table goes to stdout, every number to --out as JSON.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON results path (default benchmarks/attention_results.json; "
                        "with --smoke, a file in the temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny fp32 shapes on the CPU under TRITON_INTERPRET=1, "
                        "through the same code paths: checks that the script runs; the times mean nothing")
    return parser.parse_args()


args = parse_args()
SMOKE = args.smoke
if not SMOKE and not torch.cuda.is_available():
    sys.exit("bench_attention.py measures GPU kernels and needs CUDA, which is not available here. "
             "Run it with --smoke to check the script end to end on the CPU (no measurements).")
if SMOKE:
    # the interpreter is chosen when the kernels are decorated: set it before they are imported
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `kernels` lives at the repository root

import triton  # noqa: E402

from kernels.attention import attention_reference, flash_attention  # noqa: E402

DEVICE = "cpu" if SMOKE else "cuda"
DTYPE = torch.float32 if SMOKE else torch.bfloat16  # the interpreter has no bf16
if SMOKE:
    # two head dims and two batch sizes as on the GPU; 48 keys split over programs in the interpreter
    HEAD_DIMS, SEQ_LENS, TOKENS, WIDTH = [16, 32], [32], 64, 64  # H * D = WIDTH, B * T = TOKENS
    DECODE_LENS, DECODE_BATCHES = [48], [1, 2]
else:
    HEAD_DIMS, SEQ_LENS, TOKENS, WIDTH = [64, 128], [1024, 2048, 4096, 8192, 16384], 16384, 2048
    DECODE_LENS, DECODE_BATCHES = [1024, 2048, 4096, 8192, 16384], [1, 8]


def bench_ms(fn, grad_to_none=()):
    """Median time of fn() in ms."""
    if not SMOKE:
        return triton.testing.do_bench(fn, grad_to_none=list(grad_to_none), return_mode="median")
    times = []  # a plain timer: do_bench needs CUDA
    for _ in range(3):
        for x in grad_to_none:
            x.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sdpa_flash(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def padding_mask(key_start, T):
    """(B, 1, T, T) bool, True where attention is allowed: causal, and no key before key_start[b]."""
    pos = torch.arange(T, device=key_start.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T)
    keys_on = pos[None, :] >= key_start[:, None]  # (B, T)
    return (causal[None] & keys_on[:, None, :])[:, None]


def agreement(ours, theirs, *inputs):
    """A check that both sides compute the same thing, for the table's note."""
    try:
        with torch.no_grad():
            diff = (ours(*inputs).float() - theirs(*inputs).float()).abs().max().item()
        return f"max |ours - sdpa| = {diff:.1e}"
    except RuntimeError as e:
        return f"sdpa unavailable: {str(e).splitlines()[0][:60]}"


def reference_fits(B, H, T):
    """attention_reference keeps about eight (B, H, T, T) fp32 tensors alive through its backward."""
    need = 8 * B * H * T * T * 4
    free = torch.cuda.mem_get_info()[0] if not SMOKE else float("inf")
    return need < 0.9 * free, need


def time_provider(fn, q, k, v, do):
    """Forward and forward+backward times in ms, or the reason there are none."""
    try:
        fwd = bench_ms(lambda: fn(q, k, v))
        fwd_bwd = bench_ms(lambda: fn(q, k, v).backward(do), grad_to_none=(q, k, v))
        return fwd, fwd_bwd, ""
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None, "out of memory"
    except RuntimeError as e:  # e.g. a backend that does not take these inputs
        return None, None, f"unavailable: {str(e).splitlines()[0][:80]}"


def bench_training():
    rows = []
    for D in HEAD_DIMS:
        for T in SEQ_LENS:
            B, H = max(1, TOKENS // T), WIDTH // D
            g = torch.Generator(device=DEVICE).manual_seed(0)
            q, k, v, do = (torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE, generator=g) for _ in range(4))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            # left padding of up to a quarter of each row, as in a batch of prompts of mixed lengths
            key_start = torch.randint(0, T // 4 + 1, (B,), device=DEVICE, generator=g)
            mask = padding_mask(key_start, T)
            flops_fwd = 4 * B * H * T * T * D / 2  # causal: half the (T, T) scores
            fits, need = reference_fits(B, H, T)
            providers = [
                ("flash (ours)", flash_attention, agreement(flash_attention, sdpa_flash, q, k, v)),
                ("sdpa flash", sdpa_flash, ""),
                ("flash + key_start (ours)", lambda q, k, v, s=key_start: flash_attention(q, k, v, key_start=s), ""),
                ("sdpa + bool mask", lambda q, k, v, m=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m), ""),
                ("attention_reference", attention_reference if fits else None,
                 "" if fits else f"skipped: needs ~{need / 2**30:.0f} GiB"),
            ]
            for name, fn, note in providers:
                fwd = fwd_bwd = None
                if fn is not None:
                    fwd, fwd_bwd, error = time_provider(fn, q, k, v, do)
                    note = note or error
                rows.append(dict(
                    D=D, T=T, B=B, H=H, provider=name, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd,
                    fwd_tflops=None if fwd is None else flops_fwd / fwd * 1e-9,
                    fwd_bwd_tflops=None if fwd_bwd is None else 3.5 * flops_fwd / fwd_bwd * 1e-9,
                    note=note,
                ))
                print_training_row(rows[-1])
            del q, k, v, do, mask
    return rows


def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read and written."""
    n_bytes = 2**24 if SMOKE else 2**30
    src = torch.empty(n_bytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * n_bytes / (bench_ms(lambda: dst.copy_(src)) * 1e-3)


def bench_decode(bandwidth):
    rows = []
    for D in HEAD_DIMS:
        H = WIDTH // D
        max_len = max(DECODE_LENS) + 1
        for B in DECODE_BATCHES:
            g = torch.Generator(device=DEVICE).manual_seed(0)
            k_cache, v_cache = (torch.randn(B, H, max_len, D, device=DEVICE, dtype=DTYPE, generator=g)
                                for _ in range(2))
            q = torch.randn(B, H, 1, D, device=DEVICE, dtype=DTYPE, generator=g)
            for Tk in DECODE_LENS:
                k, v = k_cache[:, :, :Tk], v_cache[:, :, :Tk]  # (B, H, Tk, D) views of the cache
                # one query at the last position sees every key: no mask (SDPA's is_causal aligns top-left)
                ours = lambda: flash_attention(q, k, v)  # noqa: E731
                sdpa = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
                note = agreement(lambda: ours(), lambda: sdpa())
                kv_bytes = 2 * k.numel() * k.element_size()  # k and v, each read once
                for name, fn, note in (("flash (ours)", ours, note), ("sdpa", sdpa, "")):
                    us = bench_ms(fn) * 1e3
                    rows.append(dict(D=D, Tk=Tk, B=B, H=H, provider=name, latency_us=us,
                                     gb_per_s=kv_bytes / (us * 1e-6) / 1e9,
                                     roofline_fraction=kv_bytes / (us * 1e-6) / bandwidth, note=note))
                    print_decode_row(rows[-1])
            del k_cache, v_cache
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_training_row(r):
    print(f"{r['D']:>4} {r['T']:>6} {r['B']:>4} {r['H']:>4}  {r['provider']:<26}"
          f"{fmt(r['fwd_ms'], '10.3f')} {fmt(r['fwd_tflops'], '10.1f')} "
          f"{fmt(r['fwd_bwd_ms'], '12.3f')} {fmt(r['fwd_bwd_tflops'], '12.1f')}  {r['note']}", flush=True)


def print_decode_row(r):
    print(f"{r['D']:>4} {r['Tk']:>6} {r['B']:>4} {r['H']:>4}  {r['provider']:<26}{r['latency_us']:>12.1f} "
          f"{r['gb_per_s']:>8.1f} {r['roofline_fraction']:>9.2f}  {r['note']}", flush=True)


def main():
    device = "CPU, Triton interpreter" if SMOKE else torch.cuda.get_device_name()
    if SMOKE:
        print("SMOKE RUN: tiny fp32 shapes on the CPU under TRITON_INTERPRET=1. It checks that the script runs "
              "end to end; the times below are NOT measurements.\n")
    print(f"device: {device}, torch {torch.__version__}, triton {triton.__version__}, dtype {DTYPE}\n")

    print("1. Training attention, causal, B * T = %d, H * D = %d (TFLOP/s: nominal FLOPs, padding not "
          "subtracted)" % (TOKENS, WIDTH))
    print(f"{'D':>4} {'T':>6} {'B':>4} {'H':>4}  {'provider':<26}{'fwd ms':>10} {'fwd TF/s':>10} "
          f"{'fwd+bwd ms':>12} {'fwd+bwd TF/s':>12}  note")
    training = bench_training()

    bandwidth = copy_bandwidth()
    print(f"\n2. One KV-cache decode step: Tq = 1, k and v slices of a cache; roofline: the copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s (read + write bytes)")
    print(f"{'D':>4} {'Tk':>6} {'B':>4} {'H':>4}  {'provider':<26}{'latency us':>12} {'GB/s':>8} {'roofline':>9}  note")
    decode = bench_decode(bandwidth)

    out = Path(args.out or (Path(tempfile.gettempdir()) / "attention_results.smoke.json" if SMOKE
                            else ROOT / "benchmarks" / "attention_results.json"))
    results = dict(
        smoke=SMOKE,
        note="smoke run on the CPU: times are not measurements" if SMOKE else "medians of triton.testing.do_bench",
        device=device, torch=torch.__version__, triton=triton.__version__, dtype=str(DTYPE),
        flops="fwd 4*B*H*T*T*D/2 (causal), fwd+bwd 3.5x fwd",
        copy_bandwidth_bytes_per_s=bandwidth,
        training=training, decode=decode,
    )
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
