"""
The chat pipeline's RM step, PPO update and sampling, each against the plain way of doing the same work.

    python benchmarks/bench_chat_steps.py --ckpt=out/chat/sft/ckpt.pt       # after the chat SFT stage, CPU
    python benchmarks/bench_chat_steps.py --ckpt=out/chat/sft/ckpt.pt --device=cuda

rm       one reward-model step (forward, backward, AdamW) on batch_size built-in conversations with k
         SFT samples each, in train_rm.py's 4 micro-batches: every response read with its prompt as
         one sequence (rewards_at_eos) vs each prompt read once for its k responses (rewards)
ppo      one PPO update (2 epochs x 2 minibatches, policy and value model) on a rollout of batch_size
         conversations: each minibatch whole vs in 4 micro-batches of similar prompt lengths
sample   k samples for each of batch_size conversations (RM-stage sampling): every row to the end vs the
         rows that stopped leaving the batch (GPT.generate drop_stopped)

Every pair is first checked to compute the same thing (gradients, weights, tokens), then the two sides
are timed in turns over the same data, so that they share the machine's drift. Writes JSON.
"""
import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minirlhf import distributed, ppo, reward, sampling  # noqa: E402
from minirlhf.checkpoint import load_checkpoint  # noqa: E402
from minirlhf.data import encode_prompt, left_pad, micro_batches  # noqa: E402
from minirlhf.rl import gae, masked_whiten, shaped_rewards  # noqa: E402
from minirlhf.scoring import response_batch, response_logprobs, response_values  # noqa: E402
from minirlhf.tasks import get_task  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--ckpt", default="out/chat/sft/ckpt.pt", help="the chat SFT checkpoint (its samples are the data)")
p.add_argument("--parts", nargs="+", default=["rm", "ppo", "sample"], choices=["rm", "ppo", "sample"])
p.add_argument("--rm_batch", type=int, default=32, help="prompts per RM step (train_rm.py's batch_size)")
p.add_argument("--ppo_batch", type=int, default=64, help="rollout rows per PPO update (train_ppo.py's batch_size)")
p.add_argument("--sample_batch", type=int, default=64, help="prompts sampled at once (sampling.sample: 256 rows)")
p.add_argument("--k", type=int, default=4)
p.add_argument("--repeats", type=int, default=5, help="timed repetitions per side and round")
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_steps_results.json"))
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
if not os.path.isfile(args.ckpt):
    sys.exit(f"bench_chat_steps.py: --ckpt={args.ckpt} does not exist (run python train_sft.py --task=chat first)")

task = get_task("chat")
sft, tok, _ = load_checkpoint(args.ckpt, device=args.device)
sft.eval()
budget = 24
gen = torch.Generator(device=args.device).manual_seed(0)
prompts = [encode_prompt(tok, r, sft.config.block_size - budget) for r in task.prompt_records(256, "train", 9)]
samples = sampling.sample(sft, tok, prompts, max_new_tokens=budget, generator=gen, n=args.k)  # the data of all parts


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        fn()
    sync()
    return time.perf_counter() - t0


def race(name, sides, check):
    """sides {label: fn}: check() first, then each fn timed args.repeats times per round, in turns."""
    check()
    for fn in sides.values():
        fn()  # warm-up
    seconds = dict.fromkeys(sides, 0.0)
    for _ in range(args.rounds):
        for label, fn in sides.items():
            seconds[label] += timed(fn)
    n = args.repeats * args.rounds
    labels = list(sides)
    row = {label: 1000 * s / n for label, s in seconds.items()}
    row["speedup"] = seconds[labels[0]] / seconds[labels[1]]
    print(f"{name}: " + ", ".join(f"{label} {row[label]:.0f} ms" for label in labels) + f" -> {row['speedup']:.2f}x")
    return row


results = {}
if "rm" in args.parts:
    rm, _, _ = load_checkpoint(args.ckpt, device=args.device, scalar_head=True)
    groups = [(prompts[i], [s["ids"] + [tok.eos_id] for s in samples[i * args.k:(i + 1) * args.k]],
               list(range(args.k))) for i in range(args.rm_batch)]
    optimizer = torch.optim.AdamW(rm.parameters(), lr=1e-5)

    def rm_step(shared):
        optimizer.zero_grad(set_to_none=True)
        for part in micro_batches(groups, 4, lambda g: len(g[0]) + max(map(len, g[1]))):
            _, better, worse, weights = reward.comparison_batch(part)
            r = reward.rewards(rm, part, tok.pad_id, args.device, nullcontext) if shared else \
                reward.rewards_at_eos(rm, reward.comparison_batch(part)[0], tok.pad_id, args.device, nullcontext)
            (weights.to(args.device) * reward.pairwise_loss(r[better], r[worse])).sum().backward()
        return [q.grad.clone() for q in rm.parameters()]

    def rm_check():
        for a, b in zip(rm_step(False), rm_step(True)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    results["rm"] = race(f"RM step ({args.rm_batch} prompts x {args.k})",
                         {"per response": lambda: (rm_step(False), optimizer.step()),
                          "per prompt": lambda: (rm_step(True), optimizer.step())}, rm_check)

if "ppo" in args.parts:
    rows = [(prompts[i], samples[i * args.k]) for i in range(args.ppo_batch)]  # one sample per prompt
    seq, start, P, targets, lengths, ended = response_batch([r[0] for r in rows], [r[1] for r in rows], tok,
                                                            args.device)
    value_model, _, _ = load_checkpoint(args.ckpt, device=args.device, scalar_head=True)
    policy, _, _ = load_checkpoint(args.ckpt, device=args.device)
    with torch.no_grad():
        mask = targets != -100
        old_logprobs = response_logprobs(policy, seq, start, P, targets, 1.0, nullcontext)
        old_values = response_values(value_model, seq, start, P, nullcontext)
        rewards = shaped_rewards(torch.randn(len(rows), generator=torch.Generator().manual_seed(1)).to(args.device),
                                 torch.zeros_like(old_logprobs), mask, 0.1)
        advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask)
    rollout = ppo.Rollout(seq, start, P, targets, mask, old_logprobs, old_values, advantages, returns)
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in (policy, value_model)]

    def ppo_update(n):
        for m, state in zip((policy, value_model), initial):
            m.load_state_dict(state)
        optimizers = [torch.optim.Adam(m.parameters(), lr=5e-5, eps=1e-5) for m in (policy, value_model)]
        torch.manual_seed(0)
        settings = SimpleNamespace(ppo_epochs=2, n_minibatches=2, clip_range=0.2, vf_clip_range=0.2, vf_coef=0.1,
                                   ent_coef=0.0, ptx_coef=0.0, temperature=1.0, grad_clip=1.0, micro_batches=n,
                                   loss_agg="token")
        ppo.update(policy, value_model, optimizers, rollout, settings, autocast=nullcontext, d=distributed.ONE)
        return [q.detach().clone() for m in (policy, value_model) for q in m.parameters()]

    def ppo_check():
        for a, b in zip(ppo_update(1), ppo_update(4)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    prompt_lengths = (P - start).float()
    print(f"PPO rollout: prompts of {int(prompt_lengths.min())} to {P} tokens (mean {prompt_lengths.mean():.1f}),"
          f" responses of {int(lengths.min())} to {int(lengths.max())}")
    results["ppo"] = race(f"PPO update ({args.ppo_batch} rows)", {"whole minibatches": lambda: ppo_update(1),
                                                                  "4 micro-batches": lambda: ppo_update(4)}, ppo_check)

if "sample" in args.parts:
    idx, start = left_pad(prompts[:args.sample_batch], tok.pad_id)
    idx, start = idx.to(args.device), start.to(args.device)

    @torch.no_grad()
    def sample(drop):
        return sft.generate(idx, budget, start=start, temperature=1.0, eos_id=tok.eos_id, pad_id=tok.pad_id,
                            generator=torch.Generator(device=args.device).manual_seed(3), num_samples=args.k,
                            drop_stopped=drop)

    def sample_check():
        a, b = sample(False), sample(True)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
        print(f"sampling: {a.tokens.size(0)} rows, {a.tokens.size(1)} steps, mean length "
              f"{a.mask.sum(1).float().mean():.1f} tokens")
    results["sample"] = race(f"sampling ({args.sample_batch} prompts x {args.k})",
                             {"every row to the end": lambda: sample(False),
                              "stopped rows leave": lambda: sample(True)}, sample_check)

out = {"args": vars(args), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
       "date": time.strftime("%Y-%m-%d"), "results": results}
with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
print(f"wrote {args.out}")
