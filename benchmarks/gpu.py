"""
Everything this project measures on a GPU, in one command for one short window: on an H100 or H200 it
is planned to finish within 8 minutes, compilation and autotuning included, and it writes everything
to one folder.

    python benchmarks/gpu.py --out=gpu_run                  # on a machine with CUDA
    python benchmarks/gpu.py --smoke --out=/tmp/gpu_smoke   # the same stages on the CPU (tests/test_gpu_smoke.py)

The stages, in order. Each runs in a process of its own under its own time budget (seconds, GPU run);
one that fails or runs out of time is recorded and the next one runs, and the exit status is 1 when
any stage failed:
  env              30  the device and versions, and the two ceilings measured (METHOD.md, "Two numbers
                       first"): device-to-device copy bandwidth and the bf16 matmul rate
  tests           110  the kernel tests natively, bf16 included (tests/test_attention.py,
                       tests/test_logprobs.py with KERNEL_TESTS_QUICK=1: head dims 64 and 128, fewer examples)
  bench_attention 160  benchmarks/bench_attention.py: forward and forward+backward against SDPA's flash
                       backend, D = 64 and 128, T = 1k..16k; decode GB/s against the copy bandwidth
  bench_logprobs   60  benchmarks/bench_logprobs.py at N = 16k tokens: roofline and eager PyTorch
  ppo_iteration    70  one PPO iteration of a GPT-2-small-sized model (12 layers, 768 wide, vocabulary
                       50304, random weights) through minirlhf/model.py and minirlhf/rl.py, with the
                       Triton kernels and then the torch paths: tokens/s and model FLOP utilization of
                       the rollout, the scoring and the update
  scripts          50  train_sft.py, train_rm.py and train_ppo.py --device=cuda with small settings
Files in --out: summary.md, results.json (every number, with the device, date and versions) and
<stage>.log for each stage: 8 files, no folders.

--smoke runs every stage on the CPU, the kernels under Triton's interpreter, with tiny shapes and
budgets: it checks the code paths of the GPU run in a few tens of seconds and measures nothing.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# (name, budget in seconds on the GPU, in a smoke run)
STAGES = [("env", 30, 60), ("tests", 110, 120), ("bench_attention", 160, 120), ("bench_logprobs", 60, 120),
          ("ppo_iteration", 70, 120), ("scripts", 50, 120)]


# ----------------------------------------------------------------------------------------------
# Stages that run inside this script (python benchmarks/gpu.py --stage=NAME)


def _time_ms(fn, cuda):
    """Median time of fn() in ms: triton.testing.do_bench on a GPU, a plain timer on the CPU."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def stage_env(args):
    import torch
    import triton

    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    info = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                platform=platform.platform(), cpu=platform.processor() or platform.machine())
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                    driver=subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True).stdout.strip() or None
                    if shutil.which("nvidia-smi") else None)
    else:
        info.update(device="cpu (smoke run: the numbers below measure nothing)")
    n_bytes = 2**30 if cuda else 2**24
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    info["copy_bandwidth_bytes_per_s"] = 2 * n_bytes / (_time_ms(lambda: dst.copy_(src), cuda) * 1e-3)
    n, dtype = (8192, torch.bfloat16) if cuda else (256, torch.float32)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))  # random, not zeros (METHOD.md)
    info["matmul_flops_per_s"] = 2 * n**3 / (_time_ms(lambda: a @ b, cuda) * 1e-3)
    info["matmul"] = f"{n}^3 {str(dtype).removeprefix('torch.')}"
    print(json.dumps(info, indent=1))
    return info


def _model_flops(L, C, V, B, P, R):
    """Model FLOPs of one PPO iteration's phases: 2 per matmul weight and token position in a forward
    (12 C^2 weights a layer; the lm_head's V C only where a log-prob is read), 4 L C per (query, key)
    pair attended (causal: T^2 / 2 pairs per sequence of T), and 3x a forward for forward + backward."""
    T = P + R
    body = B * T * 2 * 12 * L * C * C + 4 * L * C * B * T * T / 2  # one model over the whole sequences
    head = B * R * 2 * V * C  # the lm_head at the response positions
    return dict(rollout=body + head,  # the prefill and R decode steps, together one pass over the sequences
                scoring=3 * body + head,  # reference (with the head), value and reward models
                update=3 * (2 * body + head))  # policy and value, forward and backward


def stage_ppo_iteration(args):
    """One PPO iteration, as train_ppo.py runs one, written with the library's API alone: sample with
    GPT.generate, score with the reference, value and reward models (GPT.forward with targets, last and
    start), shape the rewards, GAE and whiten (minirlhf/rl.py), then one epoch of minibatch updates."""
    import torch

    sys.path.insert(0, str(ROOT))
    from minirlhf import rl
    from minirlhf.model import GPT, GPTConfig

    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    if cuda:
        L, H, C, V, B, P, R, n_minibatches = 12, 12, 768, 50304, 32, 128, 128, 4
        autocast = dict(device_type="cuda", dtype=torch.bfloat16)
    else:  # the interpreter has no bf16: fp16 autocast, as tests/test_cuda_path.py runs the CUDA path
        L, H, C, V, B, P, R, n_minibatches = 2, 2, 32, 256, 4, 8, 6, 2
        autocast = dict(device_type="cpu", dtype=torch.float16)
    flops = _model_flops(L, C, V, B, P, R)
    tokens = dict(rollout=B * R, scoring=B * (P + R), update=B * (P + R))  # generated / scored / trained on

    def sync():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def iteration(policy, ref, value, reward, opt, prompts, start):
        times = {}
        t0 = sync()
        with torch.autocast(**autocast):
            gen = policy.generate(prompts, R, start=start, temperature=1.0)  # (B, R): no EOS, every row R long
        t1 = sync()
        seq = torch.cat([prompts, gen.tokens], 1)  # (B, P + R)
        with torch.no_grad(), torch.autocast(**autocast):
            # the logits at position t predict token t + 1: the responses' log-probs come from seq[:, :-1]
            ref_logprobs = ref(seq[:, :-1], start, last=R, targets=gen.tokens)  # (B, R)
            values = value(seq[:, :-1], start, last=R)  # (B, R)
            scores = reward(seq, start, last=1)[:, -1]  # (B,) read at the last token
        kl = rl.kl_penalty(gen.logprobs, ref_logprobs)
        rewards = rl.shaped_rewards(scores, kl, gen.mask, kl_coef=0.05)
        advantages, returns = rl.gae(rewards, values, gen.mask, gamma=1.0, lam=0.95)
        advantages = rl.masked_whiten(advantages, gen.mask)
        t2 = sync()
        stats = []
        for mb in torch.randperm(B, device=device).split(B // n_minibatches):
            with torch.autocast(**autocast):
                logprobs, entropy = policy(seq[mb, :-1], start[mb], last=R, targets=gen.tokens[mb],
                                           return_entropy=True)
                new_values = value(seq[mb, :-1], start[mb], last=R)
            pg_loss, clipfrac, approx_kl = rl.ppo_policy_loss(logprobs, gen.logprobs[mb], advantages[mb], gen.mask[mb])
            vf_loss, _ = rl.ppo_value_loss(new_values, values[mb], returns[mb], gen.mask[mb])
            loss = pg_loss + 0.1 * vf_loss - 0.01 * rl.masked_mean(entropy, gen.mask[mb])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.append(dict(loss=loss.item(), approx_kl=approx_kl.item(), clipfrac=clipfrac.item()))
        t3 = sync()
        times.update(rollout=t1 - t0, scoring=t2 - t1, update=t3 - t2)
        return times, dict(kl=kl.mean().item(), score=scores.mean().item(),
                           first_minibatch=stats[0], last_minibatch=stats[-1])

    results = dict(model=dict(n_layer=L, n_head=H, n_embd=C, vocab_size=V), batch=B, prompt_len=P, response_len=R,
                   n_minibatches=n_minibatches, autocast=str(autocast["dtype"]), flops=flops, tokens=tokens,
                   peak_flops_per_s=args.peak_flops, impls={})
    for impl in ("triton", "torch"):
        torch.manual_seed(0)
        config = dict(block_size=P + R, vocab_size=V, n_layer=L, n_head=H, n_embd=C, attn_impl=impl,
                      logprob_impl=impl)
        policy, ref = GPT(GPTConfig(**config)).to(device), GPT(GPTConfig(**config)).to(device)
        ref.load_state_dict(policy.state_dict())
        value, reward = (GPT(GPTConfig(**config, scalar_head=True)).to(device) for _ in range(2))
        opt = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-6, eps=1e-5,
                                fused=cuda or None)
        g = torch.Generator(device=device).manual_seed(1)
        prompts = torch.randint(0, V, (B, P), device=device, generator=g)
        start = torch.randint(0, P // 4 + 1, (B,), device=device, generator=g)  # left padding of each prompt
        iteration(policy, ref, value, reward, opt, prompts, start)  # warm-up: compilation, autotuning
        times, metrics = iteration(policy, ref, value, reward, opt, prompts, start)
        phases = {}
        for phase, seconds in times.items():
            flops_per_s = flops[phase] / seconds
            phases[phase] = dict(seconds=seconds, tokens_per_s=tokens[phase] / seconds, flops_per_s=flops_per_s,
                                 mfu=flops_per_s / args.peak_flops if args.peak_flops else None)
        total = sum(times.values())
        phases["iteration"] = dict(seconds=total, tokens_per_s=B * R / total,
                                   flops_per_s=sum(flops.values()) / total,
                                   mfu=sum(flops.values()) / total / args.peak_flops if args.peak_flops else None)
        results["impls"][impl] = dict(phases=phases, metrics=metrics)
        print(f"{impl}: " + ", ".join(f"{k} {v['seconds']:.3f} s ({v['tokens_per_s']:.0f} tok/s)"
                                      for k, v in phases.items()), flush=True)
        del policy, ref, value, reward, opt
    return results


def stage_scripts(args):
    """train_sft.py -> train_rm.py -> train_ppo.py as subprocesses, with the options their interface keeps."""
    work = Path(tempfile.mkdtemp(prefix="gpu_scripts_"))
    if args.smoke:
        # the torch paths: the scripts' Triton path on the CPU (TRITON_INTERPRET=1) takes over a minute even at
        # these sizes, and tests/test_cuda_path.py runs it
        device = ["--device=cpu", "--kernels=torch"]
        sft = ["--max_iters=2", "--batch_size=4", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=48",
               "--n_gold_eval=4", "--eval_interval=2", "--log_interval=1", "--n_builtin=200", "--eval_batches=2"]
        rm = ["--n_prompts=4", "--n_eval_prompts=2", "--epochs=1", "--batch_size=2", "--n_bias_samples=2"]
        ppo = ["--iterations=1", "--batch_size=4", "--n_eval=2", "--advantage=gae", "--group_size=1"]
    else:
        device = ["--device=cuda"]
        sft = ["--max_iters=60", "--batch_size=32", "--n_layer=4", "--n_head=4", "--n_embd=256", "--block_size=64",
               "--n_gold_eval=32", "--eval_interval=30", "--log_interval=10"]
        rm = ["--n_prompts=64", "--n_eval_prompts=16", "--epochs=1", "--batch_size=16", "--n_bias_samples=16"]
        ppo = ["--iterations=3", "--batch_size=32", "--n_eval=16", "--advantage=gae", "--group_size=1"]
    commands = [
        ["train_sft.py", f"--out_dir={work}/sft", *device, *sft],
        ["train_rm.py", f"--out_dir={work}/rm", f"--sft_ckpt={work}/sft/ckpt.pt", *device, *rm],
        ["train_ppo.py", f"--out_dir={work}/ppo", f"--sft_ckpt={work}/sft/ckpt.pt", f"--rm_ckpt={work}/rm/ckpt.pt",
         *device, *ppo],
    ]
    seconds = {}
    for command in commands:
        print("$ python " + " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run([PYTHON, *command], cwd=ROOT, check=True)
        seconds[command[0]] = time.perf_counter() - start
    ppo_rows = [json.loads(line) for line in (work / "ppo" / "metrics.jsonl").read_text().splitlines() if line]
    return dict(commands=[" ".join(["python", *c]) for c in commands], seconds=seconds, ppo_metrics=ppo_rows)


# ----------------------------------------------------------------------------------------------
# Running the stages


def stage_command(name, args, work):
    """The command line of a stage and the JSON file it leaves its results in (None: its log)."""
    smoke = ["--smoke"] if args.smoke else []
    result = work / f"{name}.json"
    if name == "tests":
        command = [PYTHON, "-m", "pytest", "tests/test_attention.py", "tests/test_logprobs.py", "-q",
                   "-p", "no:cacheprovider", "-o", "addopts="]
        if args.smoke:  # a few tests of each file under the interpreter, split decode included
            command += ["-k", "(test_decode_step_split_over_keys and fp32) or "
                              "(test_max_moving_between_blocks and fp32)"]
        else:
            import importlib.util

            if importlib.util.find_spec("xdist"):  # compilation, the bulk of the time, runs on the CPU's cores
                command += ["-n", "8"]
        return command, None
    if name == "bench_attention":
        return [PYTHON, "benchmarks/bench_attention.py", f"--out={result}", *smoke], result
    if name == "bench_logprobs":
        tokens = [] if args.smoke else ["--tokens", "16384"]
        return [PYTHON, "benchmarks/bench_logprobs.py", f"--out={result}", "--no_compile", *tokens, *smoke], result
    command = [PYTHON, str(Path(__file__).resolve()), f"--stage={name}", f"--result={result}", *smoke]
    if name == "ppo_iteration" and args.peak_flops:
        command.append(f"--peak_flops={args.peak_flops}")
    return command, result


def run_stage(command, budget, log_path, env):
    """(return code or None when killed at the budget, seconds). The stage's process group is killed at
    the budget: a pytest's workers and a script's children go with it."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
            log.write(f"\n[gpu.py] killed at its budget of {budget} s\n")
    return returncode, time.perf_counter() - start


def tests_result(log_text):
    """pytest's counts, from the last line of its output."""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", log_text)}
    return dict(passed=counts.get("passed", 0), failed=counts.get("failed", 0),
                errors=counts.get("error", 0) + counts.get("errors", 0), skipped=counts.get("skipped", 0))


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def write_summary(path, results):
    s = results["stages"]
    lines = [f"# GPU run, {results['date']}", ""]
    if results["smoke"]:
        lines += ["**SMOKE RUN: the CPU, Triton's interpreter, tiny shapes. It checks the code paths; no number "
                  "below is a measurement.**", ""]
    env = s["env"].get("result") or {}
    lines += [f"Device: {env.get('device', '?')}; torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
              f"CUDA {env.get('cuda', '-')}, driver {env.get('driver', '-')}. Command: `{results['command']}`.", "",
              "| stage | status | seconds | budget |", "|---|---|---|---|"]
    for name, st in s.items():
        status = "ok" if st["ok"] else f"FAILED ({st['error']})"
        lines.append(f"| {name} | {status} | {st['seconds']:.0f} | {st['budget_s']} |")
    lines += ["", f"Ceilings: copy {fmt(env.get('copy_bandwidth_bytes_per_s', 0) / 1e9, '.0f')} GB/s (read + write), "
              f"matmul {fmt(env.get('matmul_flops_per_s', 0) / 1e12, '.1f')} TFLOP/s ({env.get('matmul', '-')})."]
    if s["tests"].get("result"):
        t = s["tests"]["result"]
        lines += ["", f"Kernel tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors."]
    attention = s["bench_attention"].get("result")
    if attention:
        lines += ["", "Attention, training shapes (TFLOP/s):", "",
                  "| D | T | provider | fwd | fwd+bwd | note |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['D']} | {r['T']} | {r['provider']} | {fmt(r['fwd_tflops'], '.1f')} | "
                  f"{fmt(r['fwd_bwd_tflops'], '.1f')} | {r['note'].replace('|', chr(92) + '|')} |"
                  for r in attention["training"]]
        lines += ["", "Decode step (Tq = 1):", "", "| D | Tk | B | provider | us | GB/s | of the copy bandwidth |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['D']} | {r['Tk']} | {r['B']} | {r['provider']} | {fmt(r['latency_us'], '.1f')} | "
                  f"{fmt(r['gb_per_s'], '.1f')} | {fmt(r['roofline_fraction'], '.2f')} |" for r in attention["decode"]]
    logprobs = s["bench_logprobs"].get("result")
    if logprobs:
        lines += ["", "token_logprobs (fraction of the copy-bandwidth roofline):", "",
                  "| impl | N | V | fwd ms | fwd roofline | fwd+bwd ms | fwd+bwd roofline |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['N']} | {r['V']} | {fmt(r.get('fwd_ms'))} | "
                  f"{fmt(r.get('fwd_roofline_fraction'), '.2f')} | {fmt(r.get('fwd_bwd_ms'))} | "
                  f"{fmt(r.get('fwd_bwd_roofline_fraction'), '.2f')} |" for r in logprobs["token_logprobs"]]
    ppo = s["ppo_iteration"].get("result")
    if ppo:
        m = ppo["model"]
        lines += ["", f"One PPO iteration: GPT {m['n_layer']} layers x {m['n_embd']}, vocabulary {m['vocab_size']}, "
                  f"batch {ppo['batch']}, prompts {ppo['prompt_len']} + responses {ppo['response_len']} tokens, "
                  f"{ppo['autocast']} autocast (MFU against the measured matmul rate):", "",
                  "| kernels | phase | seconds | tokens/s | TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
        for impl, r in ppo["impls"].items():
            lines += [f"| {impl} | {phase} | {v['seconds']:.3f} | {v['tokens_per_s']:.0f} | "
                      f"{v['flops_per_s'] / 1e12:.2f} | {fmt(v['mfu'], '.3f')} |" for phase, v in r["phases"].items()]
    scripts = s["scripts"].get("result")
    if scripts:
        last = scripts["ppo_metrics"][-1]
        lines += ["", "Scripts: " + ", ".join(f"{k} {v:.0f} s" for k, v in scripts["seconds"].items())
                  + f"; last PPO iteration: rm_score {fmt(last.get('objective/rm_score'))}, "
                  f"kl {fmt(last.get('objective/kl'))}, tokens/s {fmt(last.get('charts/tokens_per_s'))}."]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the folder everything is written to (created)")
    parser.add_argument("--smoke", action="store_true", help="every stage on the CPU, tiny, under the interpreter")
    parser.add_argument("--stage", choices=["env", "ppo_iteration", "scripts"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--peak_flops", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        # the interpreter is chosen when the kernels are decorated: set before triton is imported, here and
        # in every stage's process
        os.environ["TRITON_INTERPRET"] = "1"
    if args.stage:  # one stage, inside a process of its own
        result = dict(env=stage_env, ppo_iteration=stage_ppo_iteration, scripts=stage_scripts)[args.stage](args)
        Path(args.result).write_text(json.dumps(result, indent=1))
        return 0
    if not args.out:
        parser.error("--out is required")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu.py measures on a CUDA GPU and none is available here; --smoke runs its stages on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_run_"))  # the stages' JSON and checkpoints: not in --out
    env = dict(os.environ, KERNEL_TESTS_QUICK="1", PYTHONUNBUFFERED="1")
    results = dict(smoke=args.smoke, date=datetime.datetime.now().isoformat(timespec="seconds"),
                   command=" ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), stages={})
    start = time.perf_counter()
    for name, budget_gpu, budget_smoke in STAGES:
        budget = budget_smoke if args.smoke else budget_gpu
        command, result_path = stage_command(name, args, work)
        log_path = out / f"{name}.log"
        print(f"[gpu.py] {name} (budget {budget} s) ...", flush=True)
        returncode, seconds = run_stage(command, budget, log_path, env)
        stage = dict(ok=False, seconds=seconds, budget_s=budget, returncode=returncode, error=None, log=log_path.name)
        try:
            if returncode is None:
                raise RuntimeError(f"ran past its budget of {budget} s")
            if name == "tests":
                stage["result"] = tests_result(log_path.read_text())
                if stage["result"]["passed"] == 0:
                    raise RuntimeError("no test passed")
            else:
                stage["result"] = json.loads(result_path.read_text())
            if returncode != 0:
                raise RuntimeError(f"exit status {returncode}")
            stage["ok"] = True
        except Exception as e:  # recorded; the next stage runs
            stage["error"] = f"{type(e).__name__}: {e}"
        results["stages"][name] = stage
        print(f"[gpu.py] {name}: {'ok' if stage['ok'] else 'FAILED: ' + stage['error']} in {seconds:.0f} s", flush=True)
        if name == "env" and stage["ok"]:
            args.peak_flops = stage["result"]["matmul_flops_per_s"]
    results["seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_summary(out / "summary.md", results)
    failed = [name for name, st in results["stages"].items() if not st["ok"]]
    print(f"[gpu.py] {len(STAGES) - len(failed)} of {len(STAGES)} stages ok in {results['seconds']:.0f} s; "
          f"wrote {out}/summary.md, results.json and the logs" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
