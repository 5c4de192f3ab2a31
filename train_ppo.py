"""
Step 3 of InstructGPT: PPO against the reward model, with a KL penalty to the SFT policy.

    python train_ppo.py          # the whole default run: SFT and RM first if missing, PPO, a report
    python train_ppo.py --help

Each iteration (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022; "The N+ implementation
details of RLHF with PPO", Huang et al. 2024):
  1. rollout   sample a response to each prompt of a batch from the policy (KV cache, stop at EOS)
  2. score     the reward model on prompt + response; log-probs of the policy and of the frozen SFT
               reference on the response tokens; values from the value model (initialized from the RM)
  3. rewards   -kl_coef * KL(policy || reference) per token, the RM score added at the last token
  4. GAE       advantages and returns; advantages whitened over the batch
  5. update    epochs over shuffled minibatches: clipped surrogate + clipped value loss (+ entropy
               bonus, + PPO-ptx), gradient clipping
  6. log       one line per iteration, and a metrics JSONL
At the end the SFT and PPO policies answer the same held-out prompts, and out/ppo/report.md and
summary.json compare them (on the built-in task, by the gold scorer that the labelers stand in for).
"""
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf.tasks import instruct as tasks
from minirlhf.tasks import labelers
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.cli import check_at_least_one, print_config, run, setup_device
from minirlhf.data import IGNORE_INDEX, encode_prompt, encode_sft, left_pad, read_prompts, read_sft, sft_batch
from minirlhf.rl import (AdaptiveKLController, eos_penalty, explained_variance, gae, kl_penalty, masked_mean,
                         masked_whiten, ppo_policy_loss, ppo_value_loss, shaped_rewards)
from minirlhf.sampling import format_eta, sample_responses
from minirlhf.scoring import minibatch_rows, response_batch, response_logprobs, response_values, reward_scores

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    """PPO (InstructGPT step 3): the policy maximizes the reward model's score minus a KL penalty to the SFT policy."""
    out_dir: str = "out/ppo"
    """where ckpt.pt (the policy), value.pt, metrics.jsonl, report.md and summary.json are written"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT checkpoint: the initial policy and the frozen reference"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the reward model checkpoint: the reward, and the initial value model"""
    train_missing: bool = True
    """with the built-in prompts, run train_sft.py / train_rm.py first when their checkpoints are missing"""
    prompts: str = "builtin"
    """"builtin" or comma-separated JSONL files of {"prompt"} (or chat {"messages"}) records"""
    eval_prompts: str = ""
    """held-out prompts JSONL for the final comparison (with builtin: the held-out split)"""
    n_eval: int = 500
    """held-out prompts in the final SFT vs PPO comparison"""
    iterations: int = 200
    """PPO iterations (rollout + update)"""
    batch_size: int = 64
    """prompts (and so responses) per rollout"""
    max_new_tokens: int = 24
    """response budget; a response without EOS by then gets eos_penalty_score"""
    temperature: float = 1.0
    """sampling temperature, used in every log-prob too (InstructGPT: 1)"""
    stop_at_eos: bool = True
    """end a response at its EOS; false samples exactly max_new_tokens tokens (a fixed workload, as benchmarks want)"""
    kl_coef: float = 0.1
    """beta of the per-token KL penalty (the N+ details and TRL: 0.05; InstructGPT: 0.02; 0.1 here, where the
    small RM is easier to over-optimize: 0.05 drifted to 2.6 nats and a lower gold win rate)"""
    kl_estimator: str = "k1"
    """per-token KL estimate in the reward: k1 = log(pi/pi_ref), or k3 (unbiased and never negative)"""
    adaptive_kl: bool = False
    """move kl_coef toward kl_target with Ziegler et al.'s proportional controller"""
    kl_target: float = 6.0
    """target KL (nats per response) of the adaptive controller"""
    kl_horizon: int = 10000
    """horizon (responses) of the adaptive controller"""
    eos_penalty_score: float = -1.0
    """score of a response that never emits EOS, instead of the reward model's (the EOS trick)"""
    ppo_epochs: int = 2
    """passes over each rollout batch (the N+ details: 4; 2 here, to afford more rollouts in a CPU budget)"""
    n_minibatches: int = 2
    """minibatches per pass; the minibatch size is batch_size / n_minibatches"""
    gamma: float = 1.0
    """discount (InstructGPT: 1)"""
    lam: float = 0.95
    """GAE lambda (the N+ details: 0.95)"""
    clip_range: float = 0.2
    """PPO ratio clip"""
    vf_clip_range: float = 0.2
    """value clip, around the rollout's values"""
    vf_coef: float = 0.1
    """weight of the value loss (the N+ details: 0.1)"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (0: off)"""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the SFT loss mixed into the objective (InstructGPT's fix for the alignment tax; 0: off)"""
    ptx_data: str = "builtin"
    """demonstrations for PPO-ptx: "builtin" or SFT JSONL files"""
    learning_rate: float = 5e-5
    """Adam learning rate, policy and value model alike"""
    adam_eps: float = 1e-5
    """Adam epsilon (the N+ implementation details)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    save_interval: int = 20
    """iterations between checkpoints"""
    seed: int = 1337
    """seed of the prompts order and the sampling"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, ..."""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    def __post_init__(self):
        check_at_least_one(self, "iterations", "batch_size", "max_new_tokens", "ppo_epochs", "n_minibatches",
                           "save_interval")
        if self.batch_size % self.n_minibatches:
            raise ValueError(f"--batch_size={self.batch_size} is not divisible by --n_minibatches={self.n_minibatches}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (PPO needs the policy's probabilities), got {self.temperature}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"--kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.prompts != "builtin" and not self.eval_prompts:
            raise ValueError("--eval_prompts is required with JSONL --prompts (held-out prompts for the report)")


def ensure_checkpoint(path, script, out_dir, what, cfg):
    """Train a missing SFT or RM checkpoint of the default run, saying so."""
    if os.path.isfile(path):
        return
    if not (cfg.train_missing and cfg.prompts == "builtin"):
        raise ValueError(f"--{what}_ckpt={path}: no such checkpoint (train it with python {script})")
    print(f"no {what.upper()} checkpoint at {path}: training it first with `python {script} --out_dir={out_dir}`", flush=True)
    done = subprocess.run([sys.executable, os.path.join(HERE, script), f"--out_dir={out_dir}"]
                          + ([f"--sft_ckpt={cfg.sft_ckpt}"] if script == "train_rm.py" else []) + [f"--device={cfg.device}"])
    if done.returncode != 0 or not os.path.isfile(path):
        raise ValueError(f"{script} failed (exit status {done.returncode}); see its output above")


def main(cfg):
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg)
    ensure_checkpoint(cfg.sft_ckpt, "train_sft.py", os.path.dirname(cfg.sft_ckpt) or ".", "sft", cfg)
    ensure_checkpoint(cfg.rm_ckpt, "train_rm.py", os.path.dirname(cfg.rm_ckpt) or ".", "rm", cfg)
    t_ppo = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    # the four models: policy and frozen reference from SFT, reward and value model from the RM
    policy, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, device=device)
    ref_policy, _, _ = load_checkpoint(cfg.sft_ckpt, tokenizer, device=device)
    reward_model, _, _ = load_checkpoint(cfg.rm_ckpt, tokenizer, device=device)
    value_model, _, _ = load_checkpoint(cfg.rm_ckpt, tokenizer, device=device)  # InstructGPT: value init from the RM
    if reward_model.score_head is None:
        raise ValueError(f"--rm_ckpt={cfg.rm_ckpt} has no scalar head: not a reward model checkpoint")
    for m in (ref_policy, reward_model):
        m.requires_grad_(False).eval()
    policy.train()
    value_model.train()
    block_size = policy.config.block_size
    max_prompt = block_size - cfg.max_new_tokens
    if max_prompt < 1:
        raise ValueError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in block_size={block_size}")

    # prompts (token ids) for the rollouts, and the held-out ones for the report
    builtin = cfg.prompts == "builtin"
    if builtin:
        train_prompts = tasks.prompt_records(cfg.iterations * cfg.batch_size, "train", cfg.seed + 1)
        eval_prompts = tasks.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    else:
        train_prompts = [r for path in cfg.prompts.split(",") for r in read_prompts(path)]
        eval_prompts = [r for path in cfg.eval_prompts.split(",") for r in read_prompts(path)][:cfg.n_eval]
    train_ids = [encode_prompt(tokenizer, r, max_prompt) for r in train_prompts]
    eval_ids = [encode_prompt(tokenizer, r, max_prompt) for r in eval_prompts]

    ptx = []
    if cfg.ptx_coef > 0:
        records = (tasks.sft_records(20000, "train", cfg.seed) if cfg.ptx_data == "builtin"
                   else [r for path in cfg.ptx_data.split(",") for r in read_sft(path)])
        ptx = [encode_sft(tokenizer, r, block_size) for r in records]

    params = list(policy.parameters()) + list(value_model.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else None
    kl_coef = cfg.kl_coef
    minibatch_size = cfg.batch_size // cfg.n_minibatches

    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path, value_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "value.pt")
    metrics_file = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "w")
    history, skipped = [], 0
    order = list(range(len(train_ids)))
    rng.shuffle(order)
    for it in range(1, cfg.iterations + 1):
        t_it = time.time()
        # 1. rollout: a response per prompt from the current policy, at the sampling temperature
        batch = [order[((it - 1) * cfg.batch_size + i) % len(order)] for i in range(cfg.batch_size)]
        prompt_idx, start = left_pad([train_ids[i] for i in batch], tokenizer.pad_id)
        prompt_idx, start = prompt_idx.to(device), start.to(device)
        policy.eval()
        with torch.no_grad(), autocast:
            out = policy.generate(prompt_idx, cfg.max_new_tokens, start=start, temperature=cfg.temperature,
                                  eos_id=tokenizer.eos_id if cfg.stop_at_eos else None, pad_id=tokenizer.pad_id,
                                  generator=gen)
        policy.train()
        P = prompt_idx.size(1)
        seq = torch.cat([prompt_idx, out.tokens], 1)  # (B, P + R): left-padded prompt, response, pad after EOS
        mask = out.mask  # (B, R) True on response tokens, EOS included
        targets = out.tokens.masked_fill(~mask, IGNORE_INDEX)
        lengths = mask.sum(1)
        ended = (out.tokens == tokenizer.eos_id).any(1)
        t_rollout = time.time() - t_it

        # 2. score: reward at the EOS token, log-probs of the reference, values. The policy's own
        # log-probs at the sampling temperature came with the samples: no second forward pass
        old_logprobs = out.logprobs
        with torch.no_grad():
            ref_logprobs = response_logprobs(ref_policy, seq, start, P, targets, cfg.temperature, autocast)
            old_values = response_values(value_model, seq, start, P, autocast)
            rm_scores = reward_scores(reward_model, seq, start, P, lengths, autocast)
            scores = eos_penalty(rm_scores, ended, cfg.eos_penalty_score) if cfg.stop_at_eos else rm_scores  # the EOS trick

            # 3. rewards: the per-token KL penalty, and the score at the last token
            kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
            rewards = shaped_rewards(scores, kl, mask, kl_coef)

            # 4. GAE; returns = advantages + values; advantages whitened over the batch
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)
        t_score = time.time() - t_it - t_rollout

        if not (torch.isfinite(rewards).all() and torch.isfinite(advantages).all()):
            skipped += 1
            print(f"iteration {it}: non-finite rewards or advantages; skipping this update (the last checkpoint is kept)")
            continue

        # 5. update: epochs over shuffled minibatches
        stats = {k: [] for k in ("pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "ptx_loss")}
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size, device=device)
            for mb in perm.split(minibatch_size):
                mb_seq, mb_start, mb_P = minibatch_rows(mb, seq, start, P)
                mb_mask = mask[mb]
                logprobs, entropy = response_logprobs(policy, mb_seq, mb_start, mb_P, targets[mb], cfg.temperature,
                                                      autocast, entropy=True)
                values = response_values(value_model, mb_seq, mb_start, mb_P, autocast)
                pg_loss, clipfrac, approx_kl = ppo_policy_loss(logprobs, old_logprobs[mb], advantages[mb], mb_mask,
                                                               cfg.clip_range)
                vf_loss, vf_clipfrac = ppo_value_loss(values, old_values[mb], returns[mb], mb_mask, cfg.vf_clip_range)
                entropy = masked_mean(entropy, mb_mask)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                if ptx:  # PPO-ptx: keep the demonstrations' likelihood (InstructGPT, eq. 2)
                    ptx_idx, ptx_targets = sft_batch([ptx[rng.randrange(len(ptx))] for _ in range(minibatch_size)],
                                                     tokenizer.pad_id)
                    ptx_idx, ptx_targets = ptx_idx.to(device), ptx_targets.to(device)
                    with autocast:
                        ptx_lp = policy(ptx_idx, targets=ptx_targets)
                    ptx_loss = -ptx_lp.sum() / (ptx_targets != IGNORE_INDEX).sum()
                    loss = loss + cfg.ptx_coef * ptx_loss
                    stats["ptx_loss"].append(ptx_loss.detach())
                if not torch.isfinite(loss):
                    print(f"iteration {it}: non-finite loss ({loss.item()}); skipping this minibatch")
                    skipped += 1
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("entropy", entropy), ("approx_kl", approx_kl),
                             ("clipfrac", clipfrac), ("vf_clipfrac", vf_clipfrac)):
                    stats[k].append(v.detach())
        t_update = time.time() - t_it - t_rollout - t_score

        # the adaptive controller sees the KL per response (Ziegler et al. 2019)
        mean_kl = kl.sum(1).mean().item()
        if kl_ctl is not None:
            kl_coef = kl_ctl.update(mean_kl, cfg.batch_size)

        # 6. log
        row = {"iteration": it,
               "objective/rm_score": rm_scores.mean().item(), "objective/score": scores.mean().item(),
               "objective/kl": mean_kl, "objective/kl_coef": kl_coef,
               "objective/rlhf_reward": (scores - kl_coef * kl.sum(1)).mean().item(),
               "policy/entropy": _mean(stats["entropy"]), "losses/pg_loss": _mean(stats["pg_loss"]),
               "losses/vf_loss": _mean(stats["vf_loss"]), "policy/approx_kl": _mean(stats["approx_kl"]),
               "policy/clipfrac": _mean(stats["clipfrac"]), "val/clipfrac": _mean(stats["vf_clipfrac"]),
               "val/explained_variance": explained_variance(old_values, returns, mask),
               "charts/response_length": lengths.float().mean().item(), "charts/ended": ended.float().mean().item(),
               "charts/tokens_per_s": seq.numel() / (time.time() - t_it),
               "time/rollout": t_rollout, "time/score": t_score, "time/update": t_update,
               "time/iteration": time.time() - t_it}
        if stats["ptx_loss"]:
            row["losses/ptx_loss"] = _mean(stats["ptx_loss"])
        if builtin:
            texts = [tokenizer.decode([t for t, m in zip(toks, msk) if m]) for toks, msk in zip(out.tokens.tolist(), mask.tolist())]
            row["objective/gold"] = sum(tasks.gold_score(train_prompts[i]["prompt"], t, e)
                                        for i, t, e in zip(batch, texts, ended.tolist())) / len(batch)
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        eta = (time.time() - t_ppo) / it * (cfg.iterations - it)
        print(f"iter {it:>{len(str(cfg.iterations))}}/{cfg.iterations} | rm {row['objective/rm_score']:+.3f}"
              + (f" | gold {row['objective/gold']:.3f}" if builtin else "")
              + f" | kl {mean_kl:.2f} | ent {row['policy/entropy']:.3f} | pg {row['losses/pg_loss']:+.4f}"
              f" | vf {row['losses/vf_loss']:.4f} | clip {row['policy/clipfrac']:.3f} | len {row['charts/response_length']:.1f}"
              f" | {row['charts/tokens_per_s']:,.0f} tok/s | eta {format_eta(eta)}", flush=True)
        if it % cfg.save_interval == 0 or it == cfg.iterations:
            save_checkpoint(ckpt_path, policy, tokenizer, cfg, it, metrics=row)
            save_checkpoint(value_path, value_model, tokenizer, cfg, it, metrics=row)
    metrics_file.close()

    # the report: SFT and PPO answer the same held-out prompts
    sft_policy, _, _ = load_checkpoint(cfg.sft_ckpt, tokenizer, device=device)
    report = compare(cfg, policy, sft_policy, reward_model, tokenizer, eval_prompts, eval_ids, builtin, gen, autocast)
    summary = {**report, "iterations": cfg.iterations, "skipped_updates": skipped,
               "ppo_seconds": time.time() - t_ppo, "total_seconds": time.time() - t_start,
               "checkpoint": ckpt_path, "config": asdict(cfg)}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    png = plot_curves(history, os.path.join(cfg.out_dir, "curves.png"))
    write_report(os.path.join(cfg.out_dir, "report.md"), summary, history, png)
    print(open(os.path.join(cfg.out_dir, "report.md")).read())
    print(f"done in {format_eta(time.time() - t_start)} (PPO {format_eta(summary['ppo_seconds'])}): "
          f"{cfg.out_dir}/report.md, {cfg.out_dir}/summary.json")


def _mean(xs):
    """The mean of a list of 0-d tensors as a float (one device sync for the lot); nan if empty."""
    return torch.stack(xs).mean().item() if xs else float("nan")


@torch.no_grad()
def compare(cfg, policy, sft, reward_model, tokenizer, records, ids, builtin, gen, autocast):
    """Held-out comparison of the PPO and SFT policies: both sample at the training temperature
    (the policies as trained), and greedy decoding as a second view."""
    policy.eval()
    result = {"n_prompts": len(ids), "temperature": cfg.temperature}
    samples = {}
    for name, model in (("ppo", policy), ("sft", sft)):
        for mode, temperature in (("sampled", cfg.temperature), ("greedy", 0.0)):
            with autocast:
                samples[name, mode] = sample_responses(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens,
                                                       temperature=temperature, generator=gen)
        rs = samples[name, "sampled"]
        result[f"{name}_mean_length"] = sum(len(r["ids"]) + r["ended"] for r in rs) / len(rs)
        result[f"{name}_ended"] = sum(r["ended"] for r in rs) / len(rs)
        # the reward model's score, with the EOS trick as in training; on PPO's samples also
        # KL(PPO || SFT) per response: the sum over its tokens of log pi - log pi_sft
        scores, kls = [], []
        for i in range(0, len(ids), 256):
            seq, start, P, targets, lengths, ended = response_batch(ids[i:i + 256], rs[i:i + 256], tokenizer,
                                                                    policy.lm_head.weight.device)
            rm = reward_scores(reward_model, seq, start, P, lengths, autocast)
            scores += eos_penalty(rm, ended, cfg.eos_penalty_score).tolist()
            if name == "ppo":
                lp = response_logprobs(policy, seq, start, P, targets, cfg.temperature, autocast)
                lp_sft = response_logprobs(sft, seq, start, P, targets, cfg.temperature, autocast)
                kls += (lp - lp_sft).sum(1).tolist()
        result[f"{name}_rm_score"] = sum(scores) / len(scores)
        if name == "ppo":
            result["kl_ppo_sft"] = sum(kls) / len(kls)
    if builtin:
        texts = [r["prompt"] for r in records]
        golds = {key: [tasks.gold_score(p, r["text"], r["ended"]) for p, r in zip(texts, rs)]
                 for key, rs in samples.items()}
        for (name, mode), g in golds.items():
            result[f"{name}_gold_{mode}"] = sum(g) / len(g)
            result[f"{name}_exact_{mode}"] = sum(x == 1.0 for x in g) / len(g)
        for mode in ("sampled", "greedy"):
            wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(golds["ppo", mode], golds["sft", mode]))
            result[f"win_rate_{mode}"] = wins / len(texts)
        result["examples"] = [{"prompt": texts[i], "sft": samples["sft", "sampled"][i]["text"],
                               "ppo": samples["ppo", "sampled"][i]["text"]} for i in range(min(8, len(texts)))]
    policy.train()
    return result


def plot_curves(history, path):
    """A PNG of the training curves when matplotlib (the `plot` extra) is installed; None otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in ("objective/gold", "objective/rm_score", "objective/kl", "policy/entropy",
                        "charts/response_length", "val/explained_variance") if history and k in history[0]]
    if not keys:  # every update was skipped: nothing to draw
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    for ax, k in zip(axes, keys):
        ax.plot([h["iteration"] for h in history], [h[k] for h in history])
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(path, s, history, png):
    lines = ["# PPO vs SFT on held-out prompts", "",
             f"{s['n_prompts']} held-out prompts; responses sampled at temperature {s['temperature']} "
             f"(the policies as trained), and greedy.", "",
             "| | SFT | PPO |", "|---|---|---|"]
    if "ppo_gold_sampled" in s:
        lines += [f"| gold score, sampled | {s['sft_gold_sampled']:.3f} | {s['ppo_gold_sampled']:.3f} |",
                  f"| gold score, greedy | {s['sft_gold_greedy']:.3f} | {s['ppo_gold_greedy']:.3f} |",
                  f"| exactly right (gold 1), sampled | {s['sft_exact_sampled']:.1%} | {s['ppo_exact_sampled']:.1%} |",
                  f"| exactly right (gold 1), greedy | {s['sft_exact_greedy']:.1%} | {s['ppo_exact_greedy']:.1%} |"]
    lines += [f"| reward model score | {s['sft_rm_score']:+.3f} | {s['ppo_rm_score']:+.3f} |",
              f"| mean response length (tokens, EOS included) | {s['sft_mean_length']:.1f} | {s['ppo_mean_length']:.1f} |",
              f"| responses that ended with EOS | {s['sft_ended']:.1%} | {s['ppo_ended']:.1%} |", ""]
    if "win_rate_sampled" in s:
        lines += [f"**Gold win rate of PPO over SFT** (ties count half): **{s['win_rate_sampled']:.1%}** sampled, "
                  f"{s['win_rate_greedy']:.1%} greedy.", ""]
    lines += [f"KL(PPO || SFT): {s['kl_ppo_sft']:.2f} nats per response (estimated on PPO's samples).", "",
              f"{s['iterations']} PPO iterations in {s['ppo_seconds']:.0f} s ({s['skipped_updates']} skipped updates); "
              f"whole run {s['total_seconds']:.0f} s.", ""]
    if png:
        lines += [f"![training curves]({os.path.basename(png)})", ""]
    if "examples" in s:
        lines += ["| prompt | SFT | PPO |", "|---|---|---|"]
        esc = lambda t: t.replace("\n", "\\n").replace("|", "\\|")  # noqa: E731
        lines += [f"| `{esc(e['prompt'])}` | `{esc(e['sft'])}` | `{esc(e['ppo'])}` |" for e in s["examples"]]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    run(main, Config, "train_ppo.py")
