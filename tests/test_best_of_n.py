"""Best-of-n sampling (minirlhf/sampling.py): it keeps the response the reward model scores highest,
reads each score at the response's EOS (a response that never ends gets the EOS trick's fixed score),
n = 1 is plain sampling, and how many sequences are scored at once changes nothing."""
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.model import GPT, GPTConfig
from minirlhf.reward import rewards_at_eos
from minirlhf.sampling import best_of_n, sample, score_responses
from minirlhf.tokenizer import get_tokenizer

TOK = get_tokenizer("bytes")
PROMPTS = [TOK.encode(p) for p in ("add 37 5\n", "sort 7 2 9 4\n", "reverse bajewu\n", "upper ki\n")]
PENALTY = -1.0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def policy(seed=0):
    """An untrained byte-level GPT that ends about 4% of its responses at each token: within 12 tokens
    some responses end and some never do, so both sides of the EOS trick come up."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():  # the final hidden state gets a constant direction that only the EOS row reads
        model.transformer.ln_f.weight.fill_(0.1)
        model.transformer.ln_f.bias.zero_()[0] = 1.0
        model.lm_head.weight[TOK.eos_id, 0] = 2.5
    return model.eval()


class KnownReward(torch.nn.Module):
    """A reward model whose score at a position is the sum of the token ids up to it over 1000 (pad
    tokens counting 0), plus 100 at a pad token: read anywhere but at a response's EOS, at the padding
    after it, its score is one this test does not expect."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, start=None, last=None):
        ids = idx.masked_fill(idx == TOK.pad_id, 0).double()
        scores = ids.cumsum(1) / 1000 + 100.0 * (idx == TOK.pad_id) + self.dummy
        return scores[:, -last:] if last else scores


def known_score(prompt, response):
    if not response["ended"]:
        return PENALTY
    return (sum(prompt) + sum(t for t in response["ids"] if t != TOK.pad_id) + TOK.eos_id) / 1000


@settings(max_examples=25)
@given(n=st.integers(1, 6), n_prompts=st.integers(1, 4), batch_size=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_keeps_the_response_the_reward_model_scores_highest(n, n_prompts, batch_size, seed):
    prompts = PROMPTS[:n_prompts]
    chosen, samples = best_of_n(policy(), KnownReward(), TOK, prompts, n, max_new_tokens=12,
                                generator=torch.Generator().manual_seed(seed), eos_penalty_score=PENALTY,
                                batch_size=batch_size, return_all=True)
    assert len(chosen) == len(samples) == n_prompts and all(len(group) == n for group in samples)
    for prompt, best, group in zip(prompts, chosen, samples):
        expected = [known_score(prompt, r) for r in group]
        assert [r["score"] for r in group] == pytest.approx(expected, abs=1e-6)
        first_best = max(range(n), key=lambda i: expected[i])  # the first of equal scores
        assert best == group[first_best]
        assert best["text"] == TOK.decode(best["ids"])


def test_both_sides_of_the_eos_trick_come_up():
    """The property test above is only as good as its samples: some must end and some must not."""
    _, samples = best_of_n(policy(), KnownReward(), TOK, PROMPTS, 8, max_new_tokens=12,
                           generator=torch.Generator().manual_seed(0), return_all=True)
    ended = [r["ended"] for group in samples for r in group]
    assert 0.1 < sum(ended) / len(ended) < 0.9


def test_n_1_is_plain_sampling():
    kw = dict(max_new_tokens=12, batch_size=3)
    chosen = best_of_n(policy(), KnownReward(), TOK, PROMPTS, 1, generator=torch.Generator().manual_seed(5), **kw)
    plain = sample(policy(), TOK, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    assert [{k: v for k, v in r.items() if k != "score"} for r in chosen] == plain


def test_scores_are_the_reward_models_at_the_eos_whatever_the_batching():
    """A real reward model (a GPT with a scalar head): the score best_of_n gives each sample is
    rewards_at_eos (the reward model's training read-out) of prompt + response + EOS scored alone, or
    the EOS trick's score; and scoring the same samples in batches of any size changes no score and
    so no choice (prompts of different lengths share a left-padded batch)."""
    torch.manual_seed(1)
    rm = GPT(GPTConfig(block_size=64, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    rm.eval()
    chosen, samples = best_of_n(policy(), rm, TOK, PROMPTS, 6, max_new_tokens=12, eos_penalty_score=PENALTY,
                                generator=torch.Generator().manual_seed(2), batch_size=5, return_all=True)
    prompts = [p for p in PROMPTS for _ in range(6)]
    flat = [r for group in samples for r in group]
    alone = [rewards_at_eos(rm, [p + r["ids"] + [TOK.eos_id]], TOK.pad_id, "cpu", nullcontext).item()
             if r["ended"] else PENALTY for p, r in zip(prompts, flat)]
    assert [r["score"] for r in flat] == pytest.approx(alone, abs=1e-5)
    ended = [s for s, r in zip(alone, flat) if r["ended"]]
    assert len(ended) >= 4 and len({round(s, 6) for s in ended}) > len(ended) // 2  # the scores tell samples apart
    for batch_size in (1, 4, 7, 1000):
        scores = score_responses(rm, TOK, prompts, flat, eos_penalty_score=PENALTY, batch_size=batch_size)
        assert scores == pytest.approx(alone, abs=1e-5)
        picks = [group[max(range(6), key=lambda i: scores[g * 6 + i])] for g, group in enumerate(samples)]
        assert picks == chosen


def test_bad_input():
    with pytest.raises(ValueError, match="n must be at least 1"):
        best_of_n(policy(), KnownReward(), TOK, PROMPTS, 0, max_new_tokens=4)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_responses(KnownReward(), TOK, PROMPTS[:2], [{"ids": [], "text": "", "ended": True}])


def test_the_ceiling_is_best_of_n_of_one_draw_with_its_kl_bound():
    """evaluate.ceiling: n = 1 is plain sampling (its gold is one sample's, its win rate over another sample
    is the plain comparison), best-of-n takes the reward model's highest of the first n draws, and the KL
    bound is log n - (n - 1) / n, 0 at n = 1."""
    import math
    from types import SimpleNamespace

    from minirlhf.data import encode_prompt
    from minirlhf.evaluate import ceiling, win_rate
    from minirlhf.tasks import instruct
    records = instruct.prompt_records(8, "eval", seed=0)
    cfg = SimpleNamespace(max_new_tokens=12, temperature=1.0, eos_penalty_score=PENALTY)
    got = ceiling(policy(), KnownReward(), TOK, records, instruct, cfg, ns=(1, 2, 4), seed=3, autocast=nullcontext)
    ids = [encode_prompt(TOK, r) for r in records]
    _, samples = best_of_n(policy(), KnownReward(), TOK, ids, 5, max_new_tokens=12, return_all=True,
                           generator=torch.Generator().manual_seed(3))
    gold = [[instruct.gold_score(r, s["text"], s["ended"]) for s in g] for r, g in zip(records, samples)]
    assert got["n_prompts"] == 8 and list(got["best_of_n"]) == [1, 2, 4]
    for n, e in got["best_of_n"].items():
        best = [g[max(range(1, n + 1), key=lambda j: group[j]["score"])] for g, group in zip(gold, samples)]
        assert e["gold"] == pytest.approx(sum(best) / len(best))
        assert e["win_rate"] == pytest.approx(win_rate(best, [g[0] for g in gold]))
        assert e["kl_bound"] == pytest.approx(math.log(n) - (n - 1) / n)
        perfect = [max(g[1:n + 1]) for g in gold]  # picked by gold: never below the reward model's pick
        assert e["gold_picked_gold"] == pytest.approx(sum(perfect) / len(perfect))
        assert e["gold_picked_gold"] >= e["gold"]
        assert e["gold_picked_win_rate"] == pytest.approx(win_rate(perfect, [g[0] for g in gold]))
    assert got["best_of_n"][1]["kl_bound"] == 0 and got["best_of_n"][1]["gold"] == pytest.approx(
        sum(g[1] for g in gold) / len(gold))
    scores = [[s["score"] for s in group] for group in samples]
    assert len({max(s[1:2]) != max(s[1:5]) for s in scores}) == 2  # the larger n chose otherwise somewhere
