"""minirlhf/ppo.py: PPO's update in micro-batches of similar prompt lengths takes the step of the
minibatches taken whole (weights and statistics), for less work."""
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from minirlhf import distributed, ppo
from minirlhf.model import GPT, GPTConfig
from minirlhf.rl import gae, masked_whiten, shaped_rewards
from minirlhf.scoring import response_logprobs, response_values

B, P, R, V = 12, 9, 5, 40


def rollout_and_models():
    torch.manual_seed(0)
    config = dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, attn_impl="torch")
    policy, value_model = GPT(GPTConfig(**config)), GPT(GPTConfig(**config, scalar_head=True))
    g = torch.Generator().manual_seed(1)
    start = torch.randint(0, P - 1, (B,), generator=g)  # prompts of 1 to 9 tokens
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    seq = torch.randint(0, V - 1, (B, P + R), generator=g)
    seq[:, :P][torch.arange(P)[None, :] < start[:, None]] = V - 1
    mask = torch.arange(R)[None, :] < lengths[:, None]
    targets = seq[:, P:].masked_fill(~mask, -100)
    with torch.no_grad():
        old_logprobs = response_logprobs(policy, seq, start, P, targets, 1.0, nullcontext)
        old_values = response_values(value_model, seq, start, P, nullcontext)
        rewards = shaped_rewards(torch.randn(B, generator=g), 0.1 * old_logprobs * mask, mask, 0.1)
        advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask)
    return policy, value_model, ppo.Rollout(seq, start, P, targets, mask, old_logprobs, old_values, advantages,
                                            returns)


def update(micro_batches, ptx=False):
    policy, value_model, rollout = rollout_and_models()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-5) for m in (policy, value_model)]
    columns = []  # the (rows, columns) of every forward pass of the policy
    hook = policy.register_forward_hook(lambda m, args, out: columns.append(tuple(args[0].shape)))
    g = torch.Generator().manual_seed(3)

    def ptx_batch():
        return torch.randint(0, V - 1, (4, 7), generator=g), torch.randint(0, V - 1, (4, 7), generator=g)
    torch.manual_seed(2)  # the minibatches' shuffle
    cfg = SimpleNamespace(ppo_epochs=2, n_minibatches=2, clip_range=0.2, vf_clip_range=0.2, vf_coef=0.1, ent_coef=0.01,
                          temperature=1.0, grad_clip=1.0, ptx_coef=0.5, micro_batches=micro_batches, loss_agg="token")
    stats, first_error = ppo.update(policy, value_model, optimizers, rollout, cfg, autocast=nullcontext,
                                    d=distributed.ONE, ptx_batch=ptx_batch if ptx else None)
    hook.remove()
    return policy, value_model, stats, first_error, columns


@pytest.mark.parametrize("ptx", [False, True], ids=["plain", "ptx"])
def test_micro_batches_take_the_same_step_for_less_work(ptx):
    whole_policy, whole_value, whole_stats, whole_error, whole_cols = update(1, ptx)
    policy, value, stats, error, cols = update(3, ptx)
    for a, b in ((policy, whole_policy), (value, whole_value)):
        for (name, x), y in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5, msg=name)
    assert stats.keys() == whole_stats.keys() and ("losses/ptx_loss" in stats) == ptx
    for k in stats:
        assert stats[k] == pytest.approx(whole_stats[k], rel=1e-5, abs=1e-7), k
    assert error < 1e-5 and whole_error < 1e-5  # the first minibatch sees the rollout's own weights
    policy_passes = [c for c in cols if c[1] != 7]  # the PPO-ptx passes read (4, 7) demonstrations
    whole_passes = [c for c in whole_cols if c[1] != 7]
    assert len(policy_passes) == 3 * len(whole_passes) == 3 * 4  # 2 epochs x 2 minibatches x 3 parts
    cells = sum(rows * columns for rows, columns in policy_passes)
    assert cells < 0.9 * sum(rows * columns for rows, columns in whole_passes)  # each part pads to its own longest


def test_the_policy_moves():
    """The update is a step at all: a guard against a test above passing on two updates that do nothing."""
    before, _, _ = rollout_and_models()
    policy, _, _, _, _ = update(3)
    assert max((a - b).abs().max().item() for a, b in zip(policy.parameters(), before.parameters())) > 1e-3

