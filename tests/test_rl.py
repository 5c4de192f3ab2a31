import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.rl import (
    AdaptiveKLController,
    eos_penalty,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    shaped_rewards,
)


def batch(data, max_b=5, max_t=12):
    """Random rewards, values and a response mask whose rows are a prefix of random length."""
    B, T = data.draw(st.integers(1, max_b)), data.draw(st.integers(1, max_t))
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    rand = lambda: torch.randn(B, T, generator=g, dtype=torch.float64)  # noqa: E731
    return rand(), rand(), mask


@given(data=st.data(), gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0))
def test_gae_equals_a_plain_python_loop(data, gamma, lam):
    rewards, values, mask = batch(data)
    advantages, returns = gae(rewards, values, mask.double(), gamma, lam)
    for b in range(rewards.size(0)):
        n = int(mask[b].sum())
        r, v = rewards[b].tolist(), values[b].tolist()
        expect, running = [0.0] * rewards.size(1), 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            expect[t] = running
        assert advantages[b].tolist() == pytest.approx(expect, abs=1e-9)
        assert returns[b, :n].tolist() == pytest.approx([a + v[t] for t, a in enumerate(expect[:n])], abs=1e-9)
        assert (returns[b, n:] == 0).all()


@given(data=st.data())
def test_masked_whiten(data):
    x, junk, mask = batch(data)
    if mask.sum() < 2:
        return
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-6
    var = ((x - masked_mean(x, mask))[mask] ** 2).sum() / (mask.sum() - 1)
    # unit variance, but for the 1e-8 that keeps a near-constant batch finite (two nearly equal values)
    assert ((w[mask] ** 2).sum() / (mask.sum() - 1)).item() == pytest.approx((var / (var + 1e-8)).item(), rel=1e-4)
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(masked_whiten(torch.where(mask, x, junk * 100), mask), w)  # off-mask values never count


@given(data=st.data())
def test_masked_mean_over_everything_and_per_row(data):
    x, junk, mask = batch(data)
    x_junk = torch.where(mask, x, junk * 100)  # off-mask values never count
    selected = x[mask].tolist()
    expect = sum(selected) / len(selected) if selected else 0.0  # nothing selected: 0, not NaN
    assert masked_mean(x_junk, mask).item() == pytest.approx(expect)
    rows = [x[b][mask[b]].tolist() for b in range(x.size(0))]
    assert masked_mean(x_junk, mask, dim=1).tolist() == pytest.approx([sum(r) / len(r) if r else 0.0 for r in rows])
    one = torch.zeros_like(mask)
    one[0, 0] = True  # a single selected value is its own mean
    assert masked_mean(x, one).item() == masked_mean(x, one, dim=1)[0].item() == x[0, 0].item()


def test_masked_whiten_of_a_constant_is_zero():
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert (masked_whiten(torch.full((2, 4), 3.0), mask) == 0).all()  # zero variance: 0, not NaN or inf


@settings(max_examples=30)
@given(data=st.data())
def test_clipped_objective_is_the_policy_gradient_at_ratio_one(data):
    advantages, old_logprobs, mask = batch(data)
    if not mask.any():
        return
    logprobs = old_logprobs.clone().requires_grad_(True)
    pg_loss, clipfrac, approx_kl = ppo_policy_loss(logprobs, old_logprobs, advantages, mask)
    pg_loss.backward()
    reinforce = logprobs.detach().clone().requires_grad_(True)  # REINFORCE: -A * log pi
    (-masked_mean(advantages * reinforce, mask)).backward()
    assert pg_loss.item() == pytest.approx(-masked_mean(advantages, mask).item())
    torch.testing.assert_close(logprobs.grad, reinforce.grad)
    assert clipfrac == 0 and approx_kl == 0


def test_clipped_objective_is_flat_beyond_the_clip_range():
    eps = 0.2
    log_ratio = torch.tensor([math.log(x) for x in (1.5, 0.5, 1.5, 0.5, 1.1)], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    logprobs = log_ratio.clone().requires_grad_(True)
    pg_loss, clipfrac, _ = ppo_policy_loss(logprobs[None], torch.zeros(1, 5, dtype=torch.float64), advantages[None],
                                           torch.ones(1, 5, dtype=torch.bool), eps)
    pg_loss.backward()
    # past 1 + eps with A > 0, and below 1 - eps with A < 0, the gradient vanishes: no incentive to move further
    assert logprobs.grad[0] == 0 and logprobs.grad[1] == 0
    # moving back toward the trust region, or inside it, keeps its gradient
    assert (logprobs.grad[2:] != 0).all()
    assert clipfrac.item() == pytest.approx(2 / 5)


def test_value_loss_clipping():
    old = torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    values = torch.tensor([[0.5, 0.1, 0.5]], requires_grad=True)
    vf_loss, clipfrac = ppo_value_loss(values, old, returns, torch.ones(1, 3, dtype=torch.bool), clip_range=0.2)
    vf_loss.backward()
    assert values.grad[0, 0] == 0  # moved past the clip toward the return: the clipped error counts, flat
    assert values.grad[0, 1] < 0 and values.grad[0, 2] > 0  # inside the range / moving away: a gradient
    assert clipfrac.item() == pytest.approx(1 / 3)


def per_token(*tensors):
    """(b, t) of every masked position and the tensors' values there, as Python floats."""
    mask = tensors[-1]
    return [(b, t, *(x[b, t].item() for x in tensors[:-1])) for b, t in mask.nonzero().tolist()]


@settings(max_examples=30)
@given(data=st.data(), scale=st.sampled_from([0.05, 1.0]))
def test_approx_kl_is_half_the_mean_squared_log_ratio(data, scale):
    """approx_kl = mean over response tokens of (log ratio)^2 / 2 (the k2 estimator): >= 0, the same
    whichever policy is new, and blind to off-mask positions."""
    old_logprobs, advantages, mask = batch(data)
    logprobs = old_logprobs + scale * torch.randn(old_logprobs.shape, dtype=torch.float64)
    tokens = per_token(logprobs, old_logprobs, mask)
    expect = sum(0.5 * (lp - old) ** 2 for _, _, lp, old in tokens) / max(len(tokens), 1)
    _, _, approx_kl = ppo_policy_loss(torch.where(mask, logprobs, 50.0), old_logprobs, advantages, mask)
    assert approx_kl.item() == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert approx_kl >= 0
    approx_kl = ppo_policy_loss(old_logprobs, logprobs, advantages, mask)[2]
    assert approx_kl.item() == pytest.approx(expect, rel=1e-9, abs=1e-12)


@settings(max_examples=30)
@given(data=st.data(), clip_range=st.floats(0.05, 1.0))
def test_value_loss_equals_a_plain_python_loop(data, clip_range):
    """vf_loss = 1/2 mean of max((v - R)^2, (v_clipped - R)^2), v_clipped = old + clip(v - old, -eps, eps);
    vf_clipfrac = the share of tokens where the clipped error is the larger."""
    returns, old_values, mask = batch(data)
    values = old_values + torch.randn(old_values.shape, dtype=torch.float64)  # some inside the clip range, most not
    tokens = per_token(values, old_values, returns, mask)
    losses, clipped = [], 0
    for _, _, v, old, ret in tokens:
        v_clipped = old + min(max(v - old, -clip_range), clip_range)
        losses.append(max((v - ret) ** 2, (v_clipped - ret) ** 2))
        clipped += (v_clipped - ret) ** 2 > (v - ret) ** 2
    n = max(len(tokens), 1)
    vf_loss, vf_clipfrac = ppo_value_loss(values, old_values, returns, mask, clip_range)
    assert vf_loss.item() == pytest.approx(0.5 * sum(losses) / n, rel=1e-9, abs=1e-12)
    assert vf_clipfrac.item() == pytest.approx(clipped / n)
    # the loss is symmetric under negating every value and return
    assert ppo_value_loss(-values, -old_values, -returns, mask, clip_range)[0].item() == pytest.approx(vf_loss.item())


def test_defaults_are_the_n_plus_details_settings():
    """gamma 1, lambda 0.95, both clip ranges 0.2, the k1 KL estimator ("The N+ implementation details")."""
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(4))
    mask = torch.ones(3, 6, dtype=torch.bool)
    for got, expect in [(gae(a, b, mask), gae(a, b, mask, gamma=1.0, lam=0.95)),
                        (ppo_policy_loss(a, b, c, mask), ppo_policy_loss(a, b, c, mask, clip_range=0.2)),
                        (ppo_value_loss(a, b + d, c, mask), ppo_value_loss(a, b + d, c, mask, clip_range=0.2)),
                        ((kl_penalty(a, b),), (kl_penalty(a, b, "k1"),))]:
        for x, y in zip(got, expect):
            torch.testing.assert_close(x, y, atol=0, rtol=0)


@given(data=st.data())
def test_kl_is_zero_when_policy_is_reference(data):
    logprobs, _, mask = batch(data)
    for est in ("k1", "k3"):
        assert (kl_penalty(logprobs, logprobs, est) == 0).all()


def test_kl_estimators_are_unbiased_and_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = (torch.randn(20, generator=g, dtype=torch.float64) for _ in range(2))
    logp, logq = torch.log_softmax(p_logits, 0), torch.log_softmax(q_logits, 0)
    true_kl = (logp.exp() * (logp - logq)).sum()  # KL(policy p || reference q)
    x = torch.multinomial(logp.exp(), 400_000, replacement=True, generator=g)
    for est in ("k1", "k3"):
        samples = kl_penalty(logp[x], logq[x], est)
        assert samples.mean().item() == pytest.approx(true_kl.item(), rel=0.03)
    assert (kl_penalty(logp[x], logq[x], "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, logq, "k9")


@given(kl=st.floats(0.0, 50.0), target=st.floats(0.1, 20.0), n=st.integers(1, 512))
def test_adaptive_kl_moves_toward_target(kl, target, n):
    ctl = AdaptiveKLController(0.1, target=target, horizon=10_000)
    new = ctl.update(kl, n)
    if kl > target:
        assert new > 0.1  # too far from the reference: penalize more
    elif kl < target:
        assert new < 0.1
    assert abs(new / 0.1 - 1) <= 0.2 * n / 10_000 + 1e-12  # proportional, with a bounded step
    assert ctl.value == new  # the controller keeps the new coefficient


@given(error=st.floats(-0.19, 0.19), far=st.floats(0.2, 10.0), target=st.floats(0.1, 20.0), n=st.integers(1, 512))
def test_adaptive_kl_step_is_proportional_to_error_and_steps(error, far, target, n):
    """Ziegler et al. 2019: the relative step is the error (clipped to +-0.2) times n_steps / horizon."""
    def step(kl, n_steps):
        return AdaptiveKLController(0.1, target, horizon=10_000).update(kl, n_steps) / 0.1 - 1
    kl = target * (1 + error)
    assert step(kl, 2 * n) == pytest.approx(2 * step(kl, n), rel=1e-9, abs=1e-15)  # twice the steps, twice the move
    assert step(kl, n) == pytest.approx(error * n / 10_000, rel=1e-6, abs=1e-12)  # inside the band: the error itself
    assert step(target * (1 + far), n) == pytest.approx(step(target * 1.2, n))  # saturates at +20%
    assert step(target * max(1 - far, 0.0), n) == pytest.approx(step(target * 0.8, n))  # and at -20%
    ctl = AdaptiveKLController(0.1, target, horizon=10_000)
    ctl.update(kl, n)
    assert ctl.update(kl, n) / 0.1 == pytest.approx((1 + step(kl, n)) ** 2)  # successive updates compound


def test_eos_penalty():
    scores = torch.tensor([0.3, -2.0, 1.5])
    ended = torch.tensor([True, False, True])
    assert eos_penalty(scores, ended, -1.0).tolist() == pytest.approx([0.3, -1.0, 1.5])


@given(data=st.data(), kl_coef=st.floats(0.0, 1.0), score_dtype=st.sampled_from([torch.float64, torch.float32]))
def test_shaped_rewards_put_the_score_on_the_last_token(data, kl_coef, score_dtype):
    kl, _, mask = batch(data)
    scores = torch.randn(kl.size(0), dtype=score_dtype)  # the reward model's fp32 scores, fp64 KL
    rewards = shaped_rewards(scores, kl, mask, kl_coef)
    for b in range(kl.size(0)):
        n = int(mask[b].sum())
        expect = [-kl_coef * k for k in kl[b, :n].tolist()]
        if n:
            expect[-1] += scores[b].item()
            assert rewards[b, :n].tolist() == pytest.approx(expect)
        assert (rewards[b, n:] == 0).all()


def test_explained_variance():
    returns = torch.randn(4, 6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4, 6) + returns.mean(), returns, mask) == pytest.approx(0.0, abs=0.1)


@given(data=st.data(), scale=st.sampled_from([0.01, 1.0, 30.0]))
def test_explained_variance_over_the_mask(data, scale):
    """1 - Var[R - V] / Var[R] over the response tokens only, whatever the scale of the returns;
    NaN when the returns do not vary there."""
    returns, values, mask = batch(data)
    returns, values = scale * returns, scale * (returns + 0.5 * values)
    junk = torch.full_like(returns, 1e3)  # off-mask positions never count
    got = explained_variance(torch.where(mask, values, -junk), torch.where(mask, returns, junk), mask)
    r, v = returns[mask], values[mask]
    if len(r) >= 2:
        assert got == pytest.approx(1 - (r - v).var().item() / r.var().item(), rel=1e-6)
    constant = torch.where(mask, torch.full_like(returns, 2.0), junk)
    assert math.isnan(explained_variance(values, constant, mask))  # nothing to explain


# ---------------------------------------------------------------------------------------------- over ranks


def on_two_ranks(fn, inputs):
    """fn(*inputs[r], reduce=all_sum) run by two threads as two ranks, all_sum adding a tensor over both as
    distributed.all_sum does. Returns both ranks' results; ranks that do not call all_sum alike (a collective
    one rank skips: a hang under torchrun) are an error here."""
    import threading

    barrier, slots, out, errors, rank_of = threading.Barrier(2, timeout=2), [None, None], [None, None], [], {}

    def all_sum(t):
        slots[rank_of[threading.get_ident()]] = t
        barrier.wait()
        total = slots[0] + slots[1]
        barrier.wait()  # both have read the slots before the next call writes them
        return total

    def run(r):
        rank_of[threading.get_ident()] = r
        try:
            out[r] = fn(*inputs[r], reduce=all_sum)
            barrier.wait()  # the other rank is done too: it is not waiting in an all_sum this one skipped
        except threading.BrokenBarrierError as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "the ranks did not call all_sum alike"
    return out


def two_batches(data):
    """Two ranks' batches of x, y and a mask of one width, the ranks' statistics apart (rank 1 shifted and scaled)."""
    (x0, y0, m0), (x1, y1, m1) = batch(data), batch(data)
    T = max(x0.size(1), x1.size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.size(1)))  # noqa: E731
    (x0, y0, m0), (x1, y1, m1) = map(pad, (x0, y0, m0)), map(pad, (x1, y1, m1))
    return (x0, y0, m0), (3 * x1 + 2, y1 - 1, m1)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_with_reduce_the_statistics_are_the_global_batchs(data):
    """masked_mean, masked_var, masked_whiten and explained_variance with reduce (two ranks summing over each
    other) are what they are on the two ranks' batches as one: each rank whitens with the global mean and
    variance, not its own."""
    (x0, y0, m0), (x1, y1, m1) = two_batches(data)
    x, y, m = torch.cat([x0, x1]), torch.cat([y0, y1]), torch.cat([m0, m1])
    for fn in (masked_mean, masked_var):
        got = on_two_ranks(fn, [(x0, m0), (x1, m1)])
        for rank in (0, 1):
            torch.testing.assert_close(got[rank], fn(x, m))
    got = on_two_ranks(masked_whiten, [(x0, m0), (x1, m1)])
    torch.testing.assert_close(torch.cat(got), masked_whiten(x, m))
    if m0.sum() >= 2 and m1.sum() >= 2:  # (a rank with less: test_reduce_changes_the_statistics_of_a_rank)
        ev = on_two_ranks(explained_variance, [(y0, x0, m0), (y1, x1, m1)])
        want = explained_variance(y, x, m)
        assert ev[0] == ev[1] and math.isnan(ev[0]) == math.isnan(want)
        assert math.isnan(want) or ev[0] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_reduce_changes_the_statistics_of_a_rank():
    """A rank whose batch differs from the other's: its reduced mean, variance and explained variance are the
    global batch's, not its own."""
    x0, x1 = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64), torch.tensor([[10.0, 0.0, 7.0]], dtype=torch.float64)
    v0, v1 = torch.tensor([[1.5, 2.0, 3.0]], dtype=torch.float64), torch.tensor([[9.0, 2.0, 7.0]], dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.bool)
    both, vals = torch.cat([x0, x1]), torch.cat([v0, v1])
    mean, var = on_two_ranks(masked_mean, [(x0, m), (x1, m)])[0], on_two_ranks(masked_var, [(x0, m), (x1, m)])[0]
    assert mean.item() == pytest.approx(4.0) and var.item() == pytest.approx(both.var().item())
    white = on_two_ranks(masked_whiten, [(x0, m), (x1, m)])[0]
    assert white[0].tolist() == pytest.approx(((x0 - 4.0) / both.var().sqrt())[0].tolist(), rel=1e-6)
    ev = on_two_ranks(explained_variance, [(v0, x0, m), (v1, x1, m)])[0]
    assert ev == pytest.approx(1 - (both - vals).var().item() / both.var().item(), rel=1e-9)
    assert ev != pytest.approx(explained_variance(v0, x0, m), rel=1e-3)
    one = torch.tensor([[False, True, False]])  # rank 1 has a single token: its own variance is not defined
    ev = on_two_ranks(explained_variance, [(v0, x0, m), (v1, x1, one)])
    both, vals = torch.cat([x0[0], x1[0, 1:2]]), torch.cat([v0[0], v1[0, 1:2]])
    assert ev[0] == ev[1] == pytest.approx(1 - (both - vals).var().item() / both.var().item(), rel=1e-9)


@settings(max_examples=30)
@given(data=st.data(), n_tokens=st.sampled_from([1.0, 3.0, 17.5]))
def test_losses_with_n_tokens_are_sums_over_the_tokens_divided_by_it(data, n_tokens):
    """With n_tokens (the global token count over the world size) every output of ppo_policy_loss and
    ppo_value_loss is its per-token sum over the mask divided by n_tokens, not the mean over the rank's own
    tokens; in the dtype of the inputs."""
    advantages, old, mask = batch(data)
    new = old + 0.5 * torch.randn(old.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    returns = advantages
    for fn, args in ((ppo_policy_loss, (new, old, advantages, mask)), (ppo_value_loss, (new, old, returns, mask))):
        mean_out, sum_out = fn(*args), fn(*args, n_tokens=n_tokens)
        count = int(mask.sum())
        for m, s in zip(mean_out, sum_out):
            assert s.dtype == torch.float64
            assert s.item() == pytest.approx(m.item() * count / n_tokens, rel=1e-9, abs=1e-12)
    tokens = per_token(new, old, advantages, mask)
    pg = sum(max(-a * math.exp(lp - o), -a * min(max(math.exp(lp - o), 0.8), 1.2)) for _, _, lp, o, a in tokens)
    assert ppo_policy_loss(new, old, advantages, mask, n_tokens=n_tokens)[0].item() == \
        pytest.approx(pg / n_tokens, rel=1e-9, abs=1e-12)
    clipped = sum(-a * min(max(math.exp(lp - o), 0.8), 1.2) > -a * math.exp(lp - o) for _, _, lp, o, a in tokens)
    assert ppo_policy_loss(new, old, advantages, mask, n_tokens=n_tokens)[1].item() == \
        pytest.approx(clipped / n_tokens, abs=1e-12)
