"""
The math of RLHF over (B, T) tensors with a response mask: KL penalty, GAE, group advantages, whitening, PPO's clipped
losses (Ziegler et al. 2019; "The N+ implementation details of RLHF with PPO"). RM loss: minirlhf/reward.py.
"""
import torch


def masked_mean(x, mask, dim=None, reduce=None):
    """Mean of x where mask is true, over dim or everything; with reduce (distributed.all_sum), the global batch's."""
    mask = mask.to(x.dtype)
    if dim is not None:
        return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)
    reduce = reduce or (lambda t: t)
    return reduce((x * mask).sum()) / reduce(mask.sum()).clamp(min=1)


def masked_var(x, mask, reduce=None):
    """Unbiased variance of x over the masked positions (of all ranks, with reduce)."""
    reduce = reduce or (lambda t: t)
    mean = masked_mean(x, mask, reduce=reduce)
    n = reduce(mask.sum()).clamp(min=2)
    return reduce(((x - mean) ** 2 * mask).sum()) / (n - 1)


def masked_whiten(x, mask, reduce=None):
    """x whitened (zero mean, unit variance) over the masked positions, of all ranks with reduce; 0 off the mask."""
    mean, var = masked_mean(x, mask, reduce=reduce), masked_var(x, mask, reduce=reduce)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_mean(x, mask, n_tokens=None):
    """Sum of x over the masked positions / n_tokens (default: their count). Losses pass global tokens / world
    size, so that the ranks' averaged gradients are the gradient of the global batch's mean."""
    if n_tokens is None:
        return masked_mean(x, mask)
    return (x * mask.to(x.dtype)).sum() / n_tokens


def kl_penalty(logprobs, ref_logprobs, estimator="k1"):
    """Per-token KL(policy || reference) estimate on policy samples (Schulman, 'Approximating KL divergence'):
    log r = ref_logprobs - logprobs, k1 = -log r (unbiased, may be < 0), k3 = (r - 1) - log r (unbiased, >= 0)."""
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1 or k3")


def eos_penalty(scores, ended, penalty):
    """A response that never produced EOS gets the score `penalty` (the EOS trick of the N+ details)."""
    return torch.where(ended, scores, torch.full_like(scores, penalty))


def shaped_rewards(scores, kl, mask, kl_coef):
    """Rewards (B, T): -kl_coef * kl per response token, the score (B,) added at the last (Ziegler et al., eq. 2)."""
    rewards = -kl_coef * kl * mask
    last = mask.long().sum(1).clamp(min=1) - 1  # index of each row's last response token
    scores = (scores * mask.any(1)).to(rewards.dtype)  # an empty response gets nothing
    return rewards.scatter_add(1, last[:, None], scores[:, None])


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """GAE (Schulman et al. 2016) over (B, T), values 0 past a row's end: (advantages, returns), 0 off the mask."""
    values = values * mask
    T = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def group_advantages(returns, group_size, kind):
    """Critic-free advantages (B,) of groups of group_size returns (neighbouring rows): grpo standardizes each group
    (Shao et al. 2024), rloo subtracts the mean of the group's others (Ahmadian et al. 2024); equal returns get 0."""
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"unknown critic-free advantage {kind!r}: use grpo or rloo")
    if group_size < 2 or returns.numel() % group_size:
        raise ValueError(f"{kind} compares the responses to one prompt: it needs groups of at least 2 that split the "
                         f"batch, got group_size={group_size} for {returns.numel()} responses")
    g = returns.view(-1, group_size)
    if kind == "grpo":
        adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)
    else:
        adv = g - (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return adv.masked_fill((g == g[:, :1]).all(1, keepdim=True), 0.0).view(-1)


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2, n_tokens=None):
    """PPO's clipped surrogate (Schulman et al. 2017) as a token mean (see token_mean). Returns pg_loss, clipfrac (the
    share of tokens where the clip is in force) and approx_kl (mean (log ratio)^2 / 2, as the N+ details log it)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    pg_loss = token_mean(torch.max(pg_losses, pg_losses_clipped), mask, n_tokens)
    clipfrac = token_mean((pg_losses_clipped > pg_losses).to(logprobs.dtype), mask, n_tokens)
    approx_kl = token_mean(0.5 * log_ratio ** 2, mask, n_tokens)
    return pg_loss, clipfrac.detach(), approx_kl.detach()


def ppo_value_loss(values, old_values, returns, mask, clip_range=0.2, n_tokens=None):
    """(vf_loss, vf_clipfrac) of the clipped value loss: past clip_range from the old value, errors stop counting."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    losses, losses_clipped = (values - returns) ** 2, (values_clipped - returns) ** 2
    vf_loss = 0.5 * token_mean(torch.max(losses, losses_clipped), mask, n_tokens)
    return vf_loss, token_mean((losses_clipped > losses).to(values.dtype), mask, n_tokens).detach()


class AdaptiveKLController:
    """kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon: KL tracks target (Ziegler et al., 2.2)."""

    def __init__(self, kl_coef, target, horizon):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl, n_steps):
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def explained_variance(values, returns, mask, reduce=None):
    """1 - Var[returns - values] / Var[returns] over the masked positions (1 is perfect)."""
    var_returns = masked_var(returns, mask, reduce)
    return (1.0 - masked_var(returns - values, mask, reduce) / var_returns).item() if var_returns > 0 else float("nan")
