"""
PPO's update (step 5 of train_ppo.py): epochs over shuffled minibatches of a scored rollout, each
minibatch one gradient step on the clipped surrogate + the clipped value loss (+ an entropy bonus,
+ PPO-ptx), with gradient clipping (Ziegler et al. 2019; "The N+ implementation details of RLHF with
PPO", Huang et al. 2024). Here rather than in the script so that a test can feed the same rollout to
one process and to several ranks and check that they take the same step.

Under torchrun each rank updates on its share of the rollout; the losses are token means over the
minibatch of all ranks (rl.token_mean), so that the average of the ranks' gradients is the gradient
of the whole minibatch, and the statistics returned are those of the whole batch.
"""
from typing import NamedTuple

import torch

from minirlhf import data, distributed, optim
from minirlhf.rl import ppo_policy_loss, ppo_value_loss, token_mean
from minirlhf.scoring import minibatch_rows, response_logprobs, response_values


class Rollout(NamedTuple):
    """A scored rollout batch (this rank's share), laid out as minirlhf/scoring.py describes."""
    seq: torch.Tensor  # (B, P + R) left-padded prompts, then responses
    start: torch.Tensor  # (B,) left padding of each row
    P: int  # prompt columns
    targets: torch.Tensor  # (B, R) response tokens, -100 after each response
    mask: torch.Tensor  # (B, R) True on response tokens (EOS included)
    logprobs: torch.Tensor  # (B, R) log pi_old of the response tokens, from the sampling
    values: torch.Tensor  # (B, R) the value model's estimates at the rollout
    advantages: torch.Tensor  # (B, R) whitened advantages
    returns: torch.Tensor  # (B, R) advantages + values, before whitening


def update(policy, value_model, optimizers, rollout, cfg, *, autocast, d, ptx_batch=None):
    """PPO's cfg.ppo_epochs over one rollout, in cfg.n_minibatches per epoch, with the clip ranges,
    coefficients, temperature and gradient clip of cfg (train_ppo.py's Config). policy and value_model
    are what backward goes through (DDP- or FSDP-wrapped under torchrun); optimizers step them.
    ptx_batch(): this rank's (idx, targets) of a batch of demonstrations for PPO-ptx (cfg.ptx_coef).
    Each minibatch goes through forward and backward in up to cfg.micro_batches parts of rows with
    similar prompt lengths, each without the columns that are padding in all of its rows; the losses
    are sums over tokens divided by the minibatch's token count, so the parts' gradients add up to the
    minibatch's: the same step, less padding.
    Returns (stats, first_error): the whole batch's mean of each statistic over the minibatches that
    stepped (None when none did), under the names the metrics log shows, and the largest
    |log pi - log pi_old| of the first minibatch, which sees the rollout's own weights: fp noise unless
    the rollout's log-probs and the update's disagree."""
    B = rollout.seq.size(0)
    params = [p for m in (policy, value_model) for p in m.parameters()]
    names = ("losses/pg_loss", "losses/vf_loss", "policy/entropy", "policy/approx_kl", "policy/clipfrac",
             "val/clipfrac") + (("losses/ptx_loss",) if ptx_batch else ())
    stats, first_error = {k: [] for k in names}, None
    prompt_lengths = (rollout.P - rollout.start).tolist()
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(B, device=rollout.seq.device)
        for mb in perm.split(B // cfg.n_minibatches):
            n_tokens = distributed.all_sum(rollout.mask[mb].sum()).float() / d.world  # see rl.token_mean
            parts = data.micro_batches(mb.tolist(), cfg.micro_batches, lambda i: prompt_lengths[i])
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            step, errors = dict.fromkeys(names, 0.0), []
            for j, part in enumerate(parts):  # the gradients add up; the ranks reduce them after the last part
                rows = torch.tensor(part, device=rollout.seq.device)
                seq, start, P = minibatch_rows(rows, rollout.seq, rollout.start, rollout.P)
                mask, old_logprobs = rollout.mask[rows], rollout.logprobs[rows]
                with distributed.grad_sync(policy, j == len(parts) - 1), \
                        distributed.grad_sync(value_model, j == len(parts) - 1):
                    logprobs, entropy = response_logprobs(policy, seq, start, P, rollout.targets[rows], cfg.temperature,
                                                          autocast, entropy=True)
                    values = response_values(value_model, seq, start, P, autocast)
                    if first_error is None:  # the first minibatch only: it sees the rollout's own weights
                        errors.append(((logprobs - old_logprobs).abs() * mask).max().detach())
                    pg_loss, clipfrac, approx_kl = ppo_policy_loss(logprobs, old_logprobs, rollout.advantages[rows],
                                                                   mask, cfg.clip_range, n_tokens)
                    vf_loss, vf_clipfrac = ppo_value_loss(values, rollout.values[rows], rollout.returns[rows], mask,
                                                          cfg.vf_clip_range, n_tokens)
                    entropy = token_mean(entropy, mask, n_tokens)
                    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                    part_stats = dict(zip(names, (pg_loss, vf_loss, entropy, approx_kl, clipfrac, vf_clipfrac)))
                    if ptx_batch is not None and j == len(parts) - 1:  # PPO-ptx: keep the demonstrations'
                        idx, targets = ptx_batch()                      # likelihood (InstructGPT, eq. 2)
                        with autocast():
                            ptx_logprobs = policy(idx, targets=targets)
                        n_ptx = distributed.all_sum((targets != -100).sum()).float() / d.world
                        part_stats["losses/ptx_loss"] = -ptx_logprobs.sum() / n_ptx
                        loss = loss + cfg.ptx_coef * part_stats["losses/ptx_loss"]
                    loss.backward()
                for k, v in part_stats.items():  # each part's share of the minibatch's token means: they add up
                    step[k] = step[k] + v.detach()
            if first_error is None:
                first_error = torch.stack(errors).max()
            stepped, _ = optim.step(params, optimizers, cfg.grad_clip)
            if not stepped:  # the same on every rank: gradients are shared
                print("non-finite loss or gradient: minibatch skipped")
                continue
            for k, v in step.items():
                stats[k].append(v)
    # every rank's statistic is its tokens' sum over the global count (rl.token_mean): summed over ranks, the mean
    means = {k: (distributed.all_sum(torch.stack(v).mean()) / d.world).item() if v else None for k, v in stats.items()}
    if not stats["losses/pg_loss"]:
        return None, first_error
    return means, distributed.all_max(first_error)
