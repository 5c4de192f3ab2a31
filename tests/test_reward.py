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

from minirlhf.reward import (
    accuracy,
    comparison_batch,
    comparisons,
    pairwise_loss,
    ranking_pairs,
    rewards,
    rewards_at_eos,
)


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
    for a, b in zip(grads, want):  # fp32 sums over up to 20 sequences, in another order: error relative to the scale
        torch.testing.assert_close(a, b, atol=1e-4 * max(1.0, b.abs().max().item()), rtol=1e-3)


def test_forward_with_responses_checks_repeats():
    model = make_model(0, scalar_head=True)
    idx, responses = torch.randint(0, 256, (2, 3)), torch.randint(0, 256, (5, 2))
    with pytest.raises(ValueError, match="repeats sum to 4, but there are 5 responses"):
        model(idx, responses=responses, repeats=2)
    with pytest.raises(ValueError, match="last does not go with responses"):
        model(idx, responses=responses, repeats=torch.tensor([2, 3]), last=1)
    assert model(idx, responses=responses, repeats=torch.tensor([2, 3])).shape == (5, 2)


def test_a_sharded_model_reads_each_response_with_its_prompt_for_the_same_rewards():
    """Under FSDP2 (a model that can unshard) rewards reads every prompt + response whole instead of a
    prompt once for its K responses: the same rewards, in the same order."""
    model = make_model(3, scalar_head=True)
    g = torch.Generator().manual_seed(4)
    groups = [(torch.randint(0, 256, (n,), generator=g).tolist(),
               [torch.randint(0, 256, (m,), generator=g).tolist() + [EOS] for m in (1, 4, 2)][:k], list(range(k)))
              for n, k in ((3, 3), (6, 2), (1, 3))]
    with torch.no_grad():
        once = rewards(model, groups, PAD, "cpu", NO_AUTOCAST)
        model.unshard = lambda: None  # what distributed.sharded looks for
        whole = rewards(model, groups, PAD, "cpu", NO_AUTOCAST)
    seqs = [p + r for p, rs, _ in groups for r in rs]
    torch.testing.assert_close(whole, rewards_at_eos(model, seqs, PAD, "cpu", NO_AUTOCAST), atol=0, rtol=0)
    torch.testing.assert_close(whole, once, atol=1e-5, rtol=1e-5)


def test_accuracy_counts_the_pairs_ordered_as_the_labeler_and_as_gold():
    """accuracy against a plain loop over the pairs: the share ordered as the ranking, and among the pairs
    whose gold scores differ, the share ordered as gold; in batches of any size."""
    import random

    from minirlhf.distributed import ONE
    from minirlhf.tokenizer import get_tokenizer
    model, tok = make_model(5, scalar_head=True), get_tokenizer("bytes")
    rng = random.Random(0)
    groups, gold = [], []
    for _ in range(7):
        k = rng.randint(2, 4)
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 5))]
        responses = [[rng.randrange(256) for _ in range(rng.randint(0, 4))] + [EOS] for _ in range(k)]
        groups.append((prompt, responses, rng.sample(range(k), k)))
        gold.append([rng.choice([0.0, 0.5, 1.0]) for _ in range(k)])
    agree = total = right = differ = 0.0
    for (prompt, responses, ranking), g in zip(groups, gold):
        r = [full_forward(model, prompt + resp)[-1].item() for resp in responses]
        for i, j in itertools.combinations(ranking, 2):  # i ranked above j
            agree, total = agree + (r[i] > r[j]), total + 1
            if g[i] != g[j]:
                right, differ = right + ((r[i] > r[j]) == (g[i] > g[j])), differ + 1
    for batch_size in (1, 3, 64):
        acc, gold_acc = accuracy(model, groups, tok, device="cpu", autocast=NO_AUTOCAST, d=ONE, gold=gold,
                                 batch_size=batch_size)
        assert acc == pytest.approx(agree / total, abs=1e-9) and gold_acc == pytest.approx(right / differ, abs=1e-9)
    assert accuracy(model, groups, tok, device="cpu", autocast=NO_AUTOCAST, d=ONE)[1] is None
    assert 0 < agree / total < 1 and model.training is False
    pair = [(groups[0][0], groups[0][1][:2], [1, 0])]  # one pair: accuracy 1 or 0
    acc, gold_acc = accuracy(model, pair, tok, device="cpu", autocast=NO_AUTOCAST, d=ONE, gold=[[1.0, 0.0]])
    assert acc in (0.0, 1.0) and gold_acc == 1.0 - acc
    with torch.no_grad():
        model.score_head.weight.zero_()  # every response scores alike: every pair a tie, counting half
    assert accuracy(model, groups, tok, device="cpu", autocast=NO_AUTOCAST, d=ONE)[0] == 0.5


def test_comparisons_are_k_samples_ranked_by_their_gold_scores():
    """comparisons: k samples of the policy per prompt record, each with its EOS, the ranking a permutation
    drawn by the task's labeler from the samples' gold scores (a noiseless labeler sorts by them)."""
    import random

    from minirlhf.distributed import ONE
    from minirlhf.tasks import instruct
    from minirlhf.tokenizer import get_tokenizer
    tok = get_tokenizer("bytes")
    policy = make_model(6)
    records = instruct.prompt_records(8, "eval", seed=1, weights={"add": 1, "count": 1})  # a digit gets credit
    old = instruct.LABELER_TEMPERATURE
    instruct.LABELER_TEMPERATURE = 0.0
    try:
        groups, gold = comparisons(policy, tok, records, instruct, random.Random(0), k=4, temperature=1.0,
                                   max_new_tokens=8, gen=torch.Generator().manual_seed(2), d=ONE,
                                   autocast=NO_AUTOCAST)
    finally:
        instruct.LABELER_TEMPERATURE = old
    assert len(groups) == len(gold) == 8
    for record, (prompt, responses, ranking), g in zip(records, groups, gold):
        assert tok.decode(prompt) == record["prompt"] and len(responses) == 4 and sorted(ranking) == [0, 1, 2, 3]
        texts = [tok.decode(r) for r in responses]
        assert all(x in (instruct.gold_score(record, t, True), instruct.gold_score(record, t, False))
                   for x, t in zip(g, texts))  # ended at EOS or not
        assert [g[i] for i in ranking] == sorted(g, reverse=True)
    assert sum(len(set(g)) > 1 for g in gold) >= 2  # samples that differ in gold: the ranking had work to do


def test_comparison_batch_weights_are_float32_whatever_the_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        seqs, better, worse, weights = comparison_batch([([1, 2], [[3, EOS], [4, EOS]], [1, 0])])
    finally:
        torch.set_default_dtype(old)
    assert seqs == [[1, 2, 3, EOS], [1, 2, 4, EOS]] and better.tolist() == [1] and worse.tolist() == [0]
    assert better.dtype == worse.dtype == torch.long and weights.dtype == torch.float32 and weights.tolist() == [1.0]


def test_accuracy_of_a_single_pair():
    """One pair that the reward model orders as the labeler has accuracy 1, misordered 0; the gold accuracy
    likewise, whatever the labeler said."""
    from minirlhf.distributed import ONE
    from minirlhf.tokenizer import get_tokenizer
    model, tok = make_model(7, scalar_head=True), get_tokenizer("bytes")
    prompt, responses = [5, 6, 7], [[8, EOS], [9, 10, EOS]]
    r = [full_forward(model, prompt + resp)[-1].item() for resp in responses]
    assert r[0] != r[1]
    best_first = sorted(range(2), key=lambda i: -r[i])
    agrees = [1.0 * (i == best_first[0]) for i in range(2)]  # gold scores that order the pair as the model does
    kw = dict(device="cpu", autocast=NO_AUTOCAST, d=ONE)
    for ranking, acc in ((best_first, 1.0), (best_first[::-1], 0.0)):
        assert accuracy(model, [(prompt, responses, ranking)], tok, gold=[agrees], **kw) == (acc, 1.0)
        assert accuracy(model, [(prompt, responses, ranking)], tok, gold=[agrees[::-1]], **kw) == (acc, 0.0)
        assert accuracy(model, [(prompt, responses, ranking)], tok, gold=[[0.5, 0.5]], **kw) == (acc, 0.0)


def test_accuracy_reads_a_sharded_model_with_its_whole_weights(monkeypatch):
    """Under FSDP2 accuracy scores every batch inside fsdp.full_weights of the reward model (each rank's batches
    differ, so no forward may gather weights), with the accuracy of the model read unsharded."""
    from minirlhf import fsdp
    from minirlhf.distributed import ONE
    from minirlhf.tokenizer import get_tokenizer
    model, tok = make_model(8, scalar_head=True), get_tokenizer("bytes")
    g = torch.Generator().manual_seed(1)
    groups = [(torch.randint(0, 256, (n,), generator=g).tolist(),
               [torch.randint(0, 256, (m,), generator=g).tolist() + [EOS] for m in (2, 3, 1)], [2, 0, 1])
              for n in (2, 5, 3)]
    kw = dict(device="cpu", autocast=NO_AUTOCAST, d=ONE, batch_size=2)
    plain = accuracy(model, groups, tok, **kw)
    entered, inside = [], []

    class FullWeights:
        def __init__(self, m):
            entered.append(m)

        def __enter__(self):
            inside.append(True)

        def __exit__(self, *exc):
            inside.pop()

    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(bool(inside)))
    monkeypatch.setattr(fsdp, "full_weights", FullWeights)
    model.unshard = lambda: None  # what distributed.sharded looks for
    assert accuracy(model, groups, tok, **kw) == plain
    assert entered == [model, model] and forwards == [True, True]  # two batches, each inside


def test_rewards_read_a_batch_that_fits_in_one_forward():
    """rewards runs the model once for a batch whose longest prompt and longest response fit the block together
    (to the last position); a batch that does not fit is scored in halves, each in one forward."""
    model = make_model(9, scalar_head=True)
    model.config.block_size = 12  # positions past it are never read
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    fits = [([1] * 7, [[2, 3, 4, EOS], [5, EOS]], [0, 1]), ([6, 7], [[8] * 4 + [EOS], [9, EOS]], [1, 0])]  # 7 + 5 = 12
    too_long = [([1] * 8, [[2, 3, EOS], [5, EOS]], [0, 1]), ([6, 7], [[8] * 4 + [EOS], [9, EOS]], [1, 0])]  # 8 + 5
    with torch.no_grad():
        for groups, n_forwards in ((fits, 1), (too_long, 2)):
            calls.clear()
            got = rewards(model, groups, PAD, "cpu", NO_AUTOCAST)
            assert len(calls) == n_forwards
            want = [full_forward(model, p + r)[-1] for p, rs, _ in groups for r in rs]
            torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)


def test_comparisons_sample_with_the_given_settings_and_rank_with_the_labeler(monkeypatch):
    """comparisons asks sampling.sample for k responses of each prompt with the caller's settings (temperature,
    generator, ranks, autocast, the prompt budget block_size - max_new_tokens), scores each by the task's gold
    score (a response that never ended scores less) and has the labeler rank them from rng at the task's labeler
    temperature: the same rankings as labelers.rank from the same rng."""
    import random

    from minirlhf import reward
    from minirlhf.distributed import Dist
    from minirlhf.tasks import instruct, labelers
    from minirlhf.tokenizer import get_tokenizer
    tok, policy = get_tokenizer("bytes"), make_model(6)
    records = instruct.prompt_records(3, "eval", seed=2, weights={"add": 1, "reverse": 1})
    k, gen, d, autocast = 4, torch.Generator(), Dist(0, 1, 0), lambda: NO_AUTOCAST()
    calls = []

    def fake_sample(model, tokenizer, prompts, **kw):
        calls.append((model, prompts, kw))
        out = []
        for record in records:
            right = instruct.answer(record["prompt"])
            for text, ended in ((right, True), (right, False), (right[:-1], True), ("", True)):
                out.append({"ids": tok.encode(text), "text": text, "ended": ended})
        return out

    monkeypatch.setattr(reward, "sample", fake_sample)
    groups, gold = comparisons(policy, tok, records, instruct, random.Random(5), k=k, temperature=0.7,
                               max_new_tokens=9, gen=gen, d=d, autocast=autocast)
    [(model, prompts, kw)] = calls
    assert model is policy and prompts == [tok.encode(r["prompt"]) for r in records]
    assert kw == dict(n=k, max_new_tokens=9, temperature=0.7, generator=gen, d=d, autocast=autocast)
    rng = random.Random(5)
    for record, (prompt, responses, ranking), g in zip(records, groups, gold):
        right = instruct.answer(record["prompt"])
        assert prompt == tok.encode(record["prompt"])
        assert responses == [tok.encode(t) + [EOS] for t in (right, right, right[:-1], "")]
        assert g == [instruct.gold_score(record, right, True), instruct.gold_score(record, right, False),
                     instruct.gold_score(record, right[:-1], True), 0.0]
        assert g[0] == 1.0 and g[1] == instruct.MISSING_EOS_FACTOR
        assert ranking == labelers.rank(g, rng, instruct.LABELER_TEMPERATURE)
    longest = max(len(tok.encode(r["prompt"])) for r in records)
    for budget, fits in ((48 - longest, True), (48 - longest + 1, False)):  # the prompt and budget share the block
        calls.clear()
        if fits:
            comparisons(policy, tok, records, instruct, random.Random(5), k=k, temperature=0.7, max_new_tokens=budget,
                        gen=gen, d=d, autocast=autocast)
        else:
            with pytest.raises(ValueError, match=f"more than the {longest - 1} allowed"):
                comparisons(policy, tok, records, instruct, random.Random(5), k=k, temperature=0.7,
                            max_new_tokens=budget, gen=gen, d=d, autocast=autocast)
