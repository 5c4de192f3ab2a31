"""
minirlhf/reward.py: the reward model's batches and loss. One sequence per response and every
(better, worse) pair of a ranking once, each prompt weighing one; rewards read at each response's
EOS, a prompt read once for its K responses, equal (with their gradients) to each sequence scored
alone; the Bradley-Terry loss antisymmetric in its pair.
"""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scoring import EOS, NO_AUTOCAST, PAD, full_forward, make_model

from minirlhf.reward import comparison_batch, pairwise_loss, ranking_pairs, rewards, rewards_at_eos


@given(a=st.floats(-20, 20), b=st.floats(-20, 20))
def test_pairwise_loss_is_antisymmetric(a, b):
    ra, rb = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (a, b))
    # swapping chosen and rejected: loss(a, b) - loss(b, a) = b - a, and the gradients change sign
    assert (pairwise_loss(ra, rb) - pairwise_loss(rb, ra)).item() == pytest.approx(b - a, abs=1e-9)
    (ga,) = torch.autograd.grad(pairwise_loss(ra, rb), ra)  # chosen: pushed up by sigmoid(b - a)
    (gb,) = torch.autograd.grad(pairwise_loss(rb, ra), ra)  # rejected: pushed down by sigmoid(a - b)
    assert ga.item() == pytest.approx(-torch.sigmoid(rb - ra).item(), abs=1e-12)
    assert gb.item() == pytest.approx(torch.sigmoid(ra - rb).item(), abs=1e-12)
    assert pairwise_loss(ra, rb).item() > 0


@given(k=st.integers(2, 9), seed=st.integers(0, 1000))
def test_a_prompts_loss_is_the_mean_over_its_pairs(k, seed):
    """train_rm.py's loss of one K-way ranking: the weighted sum of comparison_batch's pairs is the mean of
    the pairwise losses over all C(K, 2) (better, worse) pairs of the ranking."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(k, generator=g, dtype=torch.float64)
    ranking = torch.randperm(k, generator=g).tolist()
    pairs = [pairwise_loss(rewards[i], rewards[j]) for i, j in itertools.combinations(ranking, 2)]
    assert len(pairs) == k * (k - 1) // 2
    _, better, worse, weights = comparison_batch([([1], [[2]] * k, ranking)])
    loss = (weights.double() * pairwise_loss(rewards[better], rewards[worse])).sum()
    assert loss.item() == pytest.approx(sum(p.item() for p in pairs) / len(pairs))


def test_ranking_pairs_are_better_worse_pairs_in_ranking_order():
    assert ranking_pairs([0, 2, 1]) == [(0, 2), (0, 1), (2, 1)]


@settings(max_examples=10)
@given(lengths=st.lists(st.integers(1, 14), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_rewards_at_eos_are_each_sequences_last_token(lengths, seed):
    model = make_model(seed % 50, scalar_head=True)
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 256, (n - 1,), generator=g).tolist() + [EOS] for n in lengths]
    with torch.no_grad():
        got = rewards_at_eos(model, seqs, PAD, "cpu", NO_AUTOCAST)
    assert got.shape == (len(seqs),)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(got[i], full_forward(model, s)[-1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- reward model batches


@given(ks=st.lists(st.integers(2, 5), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_comparison_batch_pairs_and_weights(ks, seed):
    g = torch.Generator().manual_seed(seed)
    groups = []
    for k in ks:
        prompt = torch.randint(0, 256, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(0, 256, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist() + [EOS]
                     for _ in range(k)]
        groups.append((prompt, responses, torch.randperm(k, generator=g).tolist()))
    seqs, better, worse, weights = comparison_batch(groups)
    assert better.dtype == worse.dtype == torch.long and weights.dtype == torch.float32
    assert seqs == [prompt + r for prompt, responses, _ in groups for r in responses]  # one sequence per response
    offset, pair = 0, 0
    for prompt, responses, ranking in groups:
        k, n_pairs = len(responses), math.comb(len(responses), 2)
        got = list(zip(better[pair:pair + n_pairs].tolist(), worse[pair:pair + n_pairs].tolist()))
        rank_of = {r: i for i, r in enumerate(ranking)}
        expect = [(offset + i, offset + j) for i, j in itertools.permutations(range(k), 2) if rank_of[i] < rank_of[j]]
        assert sorted(got) == sorted(expect)  # every (better, worse) pair of the ranking, once, in its group's rows
        assert weights[pair:pair + n_pairs].tolist() == pytest.approx([1 / n_pairs] * n_pairs)
        offset, pair = offset + k, pair + n_pairs
    assert len(better) == len(worse) == len(weights) == pair and len(seqs) == offset
    assert weights.sum().item() == pytest.approx(len(groups))  # each prompt weighs one, whatever its K


@settings(max_examples=15, deadline=None)
@given(ks=st.lists(st.integers(1, 5), min_size=1, max_size=5), block=st.sampled_from([48, 14]),
       seed=st.integers(0, 1000))
def test_rewards_are_each_sequence_scored_alone(ks, block, seed):
    """The reward model reads each prompt once for its K responses (GPT.forward with responses): every
    response's reward, and the gradient of any weighting of them, is what the whole sequence prompt +
    response gives alone, read at its EOS; groups of different K, prompts and responses of different
    lengths. In a block of 14 the longest prompt and the longest response often do not fit together:
    the batch is then scored in parts, in order."""
    model = make_model(seed % 50, scalar_head=True)
    model.config.block_size = block  # positions past it are never read: a smaller block forces the split
    g = torch.Generator().manual_seed(seed)
    groups = []
    for k in ks:
        prompt = torch.randint(0, 256, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(0, 256, (int(torch.randint(0, 14 - len(prompt), (1,), generator=g)),),
                                   generator=g).tolist() + [EOS] for _ in range(k)]
        groups.append((prompt, responses, list(range(k))))
    seqs = [prompt + r for prompt, responses, _ in groups for r in responses]
    got = rewards(model, groups, PAD, "cpu", NO_AUTOCAST)
    assert got.shape == (len(seqs),)
    alone = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    w = torch.randn(len(seqs), generator=g)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad((w * got).sum(), params)
    want = torch.autograd.grad((w * alone).sum(), params)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_forward_with_responses_checks_repeats():
    model = make_model(0, scalar_head=True)
    idx, responses = torch.randint(0, 256, (2, 3)), torch.randint(0, 256, (5, 2))
    with pytest.raises(ValueError, match="repeats sum to 4, but there are 5 responses"):
        model(idx, responses=responses, repeats=2)
    with pytest.raises(ValueError, match="last does not go with responses"):
        model(idx, responses=responses, repeats=torch.tensor([2, 3]), last=1)
    assert model(idx, responses=responses, repeats=torch.tensor([2, 3])).shape == (5, 2)
