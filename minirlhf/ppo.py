"""
PPO's update (step 5 of train_ppo.py): epochs over shuffled minibatches of a scored rollout, one step each on the
clipped surrogate + value loss (+ entropy bonus, + k3 KL term, + PPO-ptx), gradients clipped (Ziegler et al. 2019; the
N+ details). Losses are weighted means over all ranks (rl.token_mean): one process and several take the same step.
"""
from typing import NamedTuple

import torch

from minirlhf import data, distributed, optim
from minirlhf.rl import kl_penalty, ppo_policy_loss, ppo_value_loss, token_mean
from minirlhf.scoring import minibatch_rows, response_logprobs, response_values

NAMES = ("losses/pg_loss", "losses/vf_loss", "policy/entropy", "policy/approx_kl", "policy/clipfrac", "val/clipfrac",
         "losses/kl_loss")


class Rollout(NamedTuple):
    """A scored rollout batch (this rank's share), laid out as minirlhf/scoring.py describes."""
    seq: torch.Tensor  # (B, P + R) left-padded prompts, then responses
    start: torch.Tensor  # (B,) left padding of each row
    P: int  # prompt columns
    targets: torch.Tensor  # (B, R) response tokens, -100 after each response
    mask: torch.Tensor  # (B, R) True on response tokens (EOS included)
    logprobs: torch.Tensor  # (B, R) log pi_old of the response tokens, from the sampling
    values: torch.Tensor  # (B, R) the value model's estimates at the rollout (None without a value model)
    advantages: torch.Tensor  # (B, R) whitened (GAE) or group advantages
    returns: torch.Tensor  # (B, R) GAE's advantages + values, before whitening (None without a value model)
    ref_logprobs: torch.Tensor = None  # (B, R) log pi_ref, for a KL term in the loss


def ptx_sampler(cfg, task, tokenizer, block_size, rng, d, device):
    """PPO-ptx: a function giving this rank's share of a minibatch of demonstrations (rng: the same on all ranks)."""
    if cfg.ptx_coef <= 0:
        return None
    from minirlhf.jsonl import read_sft
    demos = task.sft_records(20000, "train", cfg.seed) if cfg.ptx_data == "builtin" else read_sft(cfg.ptx_data)
    ptx = [data.encode_sft(tokenizer, r, block_size) for r in demos]
    def batch():
        picks = [ptx[rng.randrange(len(ptx))] for _ in range(cfg.batch_size // cfg.n_minibatches)]
        idx, targets = data.sft_batch(distributed.my_slice(picks, d), tokenizer.pad_id)
        return idx.to(device), targets.to(device)
    return batch


def update(policy, value_model, optimizers, rollout, cfg, *, autocast, d, ptx_batch=None, kl_coef=0.0):
    """cfg.ppo_epochs over one rollout, cfg.n_minibatches each, through policy and value_model (DDP- or FSDP-wrapped;
    None: no value loss). ptx_batch(): this rank's demonstrations (idx, targets) for PPO-ptx; kl_coef: weight of a k3
    KL(pi || pi_ref) loss term (GRPO's). A minibatch runs in up to cfg.micro_batches parts of similar prompt lengths.
    Returns (stats, first_error): each metric's mean over the minibatches that stepped (None if none), and the first
    minibatch's max |log pi - log pi_old|, fp noise unless rollout and update disagree."""
    B = rollout.seq.size(0)
    params = [p for m in (policy, value_model) if m is not None for p in m.parameters()]
    stats, first_error = {}, None
    prompt_lengths = (rollout.P - rollout.start).tolist()
    weights = rollout.mask.float()  # a mean over the minibatch's tokens; "sequence": a mean of its responses' means
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1) if cfg.loss_agg == "sequence" else weights
    for epoch in range(cfg.ppo_epochs):
        for mb in torch.randperm(B, device=rollout.seq.device).split(B // cfg.n_minibatches):
            n_tokens = distributed.all_sum(weights[mb].sum()) / d.world  # see rl.token_mean
            parts = data.micro_batches(mb.tolist(), cfg.micro_batches, lambda i: prompt_lengths[i])
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            step, errors = {}, []
            for j, part in enumerate(parts):  # the gradients add up; the ranks reduce them after the last part
                last = j == len(parts) - 1
                rows = torch.tensor(part, device=rollout.seq.device)
                seq, start, P = minibatch_rows(rows, rollout.seq, rollout.start, rollout.P)
                mask, w, old_logprobs = rollout.mask[rows], weights[rows], rollout.logprobs[rows]
                with distributed.grad_sync(policy, last), distributed.grad_sync(value_model, last):
                    logprobs, entropy = response_logprobs(policy, seq, start, P, rollout.targets[rows], cfg.temperature,
                                                          autocast, entropy=True)
                    values = None if value_model is None else response_values(value_model, seq, start, P, autocast)
                    if first_error is None:  # the first minibatch only: it sees the rollout's own weights
                        errors.append(((logprobs - old_logprobs).abs() * mask).max().detach())
                    pg_loss, clipfrac, approx_kl = ppo_policy_loss(logprobs, old_logprobs, rollout.advantages[rows],
                                                                   w, cfg.clip_range, n_tokens)
                    vf_loss = vf_clipfrac = kl_loss = None
                    if values is not None:
                        vf_loss, vf_clipfrac = ppo_value_loss(values, rollout.values[rows], rollout.returns[rows], w,
                                                              cfg.vf_clip_range, n_tokens)
                    entropy = token_mean(entropy, w, n_tokens)
                    loss = pg_loss + (cfg.vf_coef * vf_loss if vf_loss is not None else 0) - cfg.ent_coef * entropy
                    if kl_coef:  # the KL to the reference as a loss term: k3, unbiased and never negative
                        kl_loss = token_mean(kl_penalty(logprobs, rollout.ref_logprobs[rows], "k3"), w, n_tokens)
                        loss = loss + kl_coef * kl_loss
                    part_stats = {k: v for k, v in zip(NAMES, (pg_loss, vf_loss, entropy, approx_kl, clipfrac,
                                                               vf_clipfrac, kl_loss)) if v is not None}
                    if ptx_batch is not None and last:  # PPO-ptx: the demonstrations' likelihood (InstructGPT, eq. 2)
                        idx, targets = ptx_batch()
                        with autocast():
                            ptx_logprobs = policy(idx, targets=targets)
                        n_ptx = distributed.all_sum((targets != -100).sum()).float() / d.world
                        part_stats["losses/ptx_loss"] = -ptx_logprobs.sum() / n_ptx
                        loss = loss + cfg.ptx_coef * part_stats["losses/ptx_loss"]
                    loss.backward()
                for k, v in part_stats.items():  # each part's share of the minibatch's token means: they add up
                    step[k] = step.get(k, 0.0) + v.detach()
            if first_error is None:
                first_error = torch.stack(errors).max()
            stepped, _ = optim.step(params, optimizers, cfg.grad_clip)
            if not stepped:  # the same on every rank: gradients are shared
                print("non-finite loss or gradient: minibatch skipped")
                continue
            for k, v in step.items():
                stats.setdefault(k, []).append(v)
    if not stats:
        return None, first_error
    # every rank's statistic is its tokens' sum over the global count (rl.token_mean): summed over ranks, the mean
    means = {k: (distributed.all_sum(torch.stack(v).mean()) / d.world).item() for k, v in stats.items()}
    return means, distributed.all_max(first_error)
