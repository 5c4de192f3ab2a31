"""Critic-free PPO (train_ppo.py --advantage=grpo|rloo): rl.group_advantages against plain loops, and ppo.update
without a value model, with the KL as a loss term, and with the loss averaged per response (--loss_agg)."""
import math
import statistics
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ppo import B, rollout_and_models

from minirlhf import distributed, ppo
from minirlhf.rl import group_advantages, kl_penalty
from minirlhf.scoring import response_logprobs

scores = st.floats(-10, 10, allow_nan=False, width=32)


@st.composite
def groups(draw):
    """(K, the scores of G groups of K, flat); some groups hold one score K times."""
    k, g = draw(st.integers(2, 6)), draw(st.integers(1, 5))
    flat = []
    for _ in range(g):
        flat += [draw(scores)] * k if draw(st.booleans()) else [draw(scores) for _ in range(k)]
    return k, flat


@settings(max_examples=60, deadline=None)
@given(groups())
def test_rloo_subtracts_the_mean_of_the_other_responses(case):
    k, flat = case
    adv = group_advantages(torch.tensor(flat, dtype=torch.float64), k, "rloo").tolist()
    for i, x in enumerate(flat):
        group = flat[i - i % k:i - i % k + k]
        others = group[:i % k] + group[i % k + 1:]  # the sample itself is left out of its baseline
        assert adv[i] == pytest.approx(x - sum(others) / (k - 1), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(groups())
def test_grpo_standardizes_each_group(case):
    k, flat = case
    adv = group_advantages(torch.tensor(flat, dtype=torch.float64), k, "grpo").tolist()
    for start in range(0, len(flat), k):
        group, got = flat[start:start + k], adv[start:start + k]
        mean, std = statistics.fmean(group), statistics.stdev(group)  # the unbiased std, as DeepSeekMath's code
        assert got == pytest.approx([(x - mean) / (std + 1e-4) for x in group], abs=1e-9)
        assert sum(got) == pytest.approx(0, abs=1e-9)  # zero mean in every group
        if std > 0.1:
            assert statistics.stdev(got) == pytest.approx(1, rel=2e-3)  # and unit std (but for the 1e-4)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_a_group_of_equal_scores_gets_zero_and_no_nan(kind):
    returns = torch.tensor([0.1, 0.1, 0.1, 1 / 3, 1 / 3, 1 / 3, 5.0, -5.0, 0.0])  # sums that do not round back
    adv = group_advantages(returns, 3, kind)
    assert adv[:6].tolist() == [0.0] * 6 and torch.isfinite(adv).all() and adv[6] > 0 > adv[7]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_groups_of_one_or_that_do_not_split_the_batch_are_errors(kind):
    with pytest.raises(ValueError, match="groups of at least 2"):
        group_advantages(torch.randn(8), 1, kind)
    with pytest.raises(ValueError, match="group_size=3 for 8 responses"):
        group_advantages(torch.randn(8), 3, kind)
    with pytest.raises(ValueError, match="unknown critic-free advantage 'gae'"):
        group_advantages(torch.randn(8), 2, "gae")


def test_a_group_is_neighbouring_rows():
    """Groups are rows i*K ... i*K+K-1: moving a group moves its advantages with it and changes nothing else."""
    returns = torch.randn(12, generator=torch.Generator().manual_seed(0))
    swapped = torch.cat([returns[4:8], returns[:4], returns[8:]])
    for kind in ("grpo", "rloo"):
        a, b = group_advantages(returns, 4, kind), group_advantages(swapped, 4, kind)
        torch.testing.assert_close(b, torch.cat([a[4:8], a[:4], a[8:]]))


def one_step(value_model=True, kl_coef=0.0, loss_agg="token", lr=1e-2):
    """One update of one whole minibatch on test_ppo's rollout, with its advantages or group advantages."""
    policy, value, rollout = rollout_and_models()
    if not value_model:
        value = None
        adv = group_advantages(torch.randn(B, generator=torch.Generator().manual_seed(4)), 4, "rloo")
        rollout = rollout._replace(values=None, returns=None, advantages=adv[:, None] * rollout.mask)
    with torch.no_grad():  # a reference that differs from the policy, for the KL term
        ref = response_logprobs(rollouts_reference(), rollout.seq, rollout.start, rollout.P, rollout.targets, 1.0,
                                nullcontext)
    rollout = rollout._replace(ref_logprobs=ref)
    models = [m for m in (policy, value) if m is not None]
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    cfg = SimpleNamespace(ppo_epochs=1, n_minibatches=1, clip_range=0.2, vf_clip_range=0.2, vf_coef=0.1, ent_coef=0.0,
                          temperature=1.0, grad_clip=0.0, ptx_coef=0.0, micro_batches=1, loss_agg=loss_agg)
    stats, _ = ppo.update(policy, value, optimizers, rollout, cfg, autocast=nullcontext, d=distributed.ONE,
                          kl_coef=kl_coef)
    return policy, stats, rollout


def rollouts_reference():
    torch.manual_seed(7)
    from minirlhf.model import GPT, GPTConfig
    return GPT(GPTConfig(block_size=32, vocab_size=40, n_layer=2, n_head=2, n_embd=32, attn_impl="torch"))


def test_without_a_value_model_only_the_policy_trains():
    before, _, _ = rollout_and_models()
    policy, stats, _ = one_step(value_model=False)
    assert "losses/vf_loss" not in stats and "val/clipfrac" not in stats and "losses/kl_loss" not in stats
    assert math.isfinite(stats["losses/pg_loss"])
    assert max((a - b).abs().max().item() for a, b in zip(policy.parameters(), before.parameters())) > 1e-4


@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
def test_the_loss_is_a_token_mean_or_a_mean_of_response_means(loss_agg):
    """At the first step the ratio is 1, so the clipped surrogate is -advantage, averaged as loss_agg says."""
    _, stats, rollout = one_step(loss_agg=loss_agg, lr=0.0)
    adv, mask = rollout.advantages.tolist(), rollout.mask.tolist()
    rows = [[a for a, m in zip(ra, rm) if m] for ra, rm in zip(adv, mask)]
    if loss_agg == "token":
        want = -sum(map(sum, rows)) / sum(map(len, rows))
    else:  # each response weighs alike, whatever its length
        want = -sum(sum(r) / len(r) for r in rows) / len(rows)
    assert stats["losses/pg_loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)


def mean_k3(logprobs, rollout):
    return ((kl_penalty(logprobs, rollout.ref_logprobs, "k3") * rollout.mask).sum() / rollout.mask.sum()).item()


def test_the_kl_term_is_k3_to_the_reference_and_pulls_toward_it():
    _, stats, rollout = one_step(value_model=False, kl_coef=1.0, lr=0.0)
    assert stats["losses/kl_loss"] == pytest.approx(mean_k3(rollout.logprobs, rollout), rel=1e-5)
    assert stats["losses/kl_loss"] > 0.01  # the reference is another model
    # steps on the KL term alone (zero advantages) bring the policy's log-probs closer to the reference's
    policy, _, rollout = rollout_and_models()
    rollout = rollout._replace(values=None, returns=None, advantages=torch.zeros_like(rollout.advantages),
                               ref_logprobs=one_step(value_model=False)[2].ref_logprobs)
    cfg = SimpleNamespace(ppo_epochs=5, n_minibatches=1, clip_range=0.2, vf_clip_range=0.2, vf_coef=0.1, ent_coef=0.0,
                          temperature=1.0, grad_clip=0.0, ptx_coef=0.0, micro_batches=1, loss_agg="token")
    ppo.update(policy, None, [torch.optim.SGD(policy.parameters(), lr=0.05)], rollout, cfg, autocast=nullcontext,
               d=distributed.ONE, kl_coef=1.0)
    with torch.no_grad():
        after = response_logprobs(policy, rollout.seq, rollout.start, rollout.P, rollout.targets, 1.0, nullcontext)
    assert mean_k3(after, rollout) < 0.5 * mean_k3(rollout.logprobs, rollout)
