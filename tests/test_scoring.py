"""
minirlhf/scoring.py: every helper against a plain full forward of each sequence alone (no
padding, no `last`, no targets), on left-padded batches whose prompts and responses have
different lengths; and the rollout/training agreement: the log-probs that GPT.generate returned
with its samples are the ones response_logprobs computes from response_batch's layout of them.
"""
import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.data import IGNORE_INDEX, left_pad
from minirlhf.model import GPT, GPTConfig
from minirlhf.sampling import sample
from minirlhf.scoring import in_parts, minibatch_rows, response_batch, response_logprobs, response_values, reward_scores
from minirlhf.tokenizer import get_tokenizer

tok = get_tokenizer("bytes")
EOS, PAD = tok.eos_id, tok.pad_id
NO_AUTOCAST = contextlib.nullcontext  # a context factory, as distributed.setup returns


def make_model(seed, scalar_head=False):
    torch.manual_seed(seed)
    config = GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32,
                       scalar_head=scalar_head, attn_impl="torch")
    model = GPT(config).eval()
    if scalar_head:
        with torch.no_grad():  # a bias and a larger head, so that a misread position or an offset shows
            model.score_head.weight.mul_(10)
            model.score_head.bias.fill_(0.5)
    return model


def random_rows(data, max_rows=4):
    """Prompts (1-9 tokens) and response dicts (0-8 tokens, some ended by an EOS), all different lengths."""
    n = data.draw(st.integers(1, max_rows))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    prompts = [torch.randint(0, 256, (data.draw(st.integers(1, 9)),), generator=g).tolist() for _ in range(n)]
    responses = []
    for _ in range(n):
        ended = data.draw(st.booleans())
        ids = torch.randint(0, 256, (data.draw(st.integers(0 if ended else 1, 8)),), generator=g).tolist()
        responses.append({"ids": ids, "ended": ended})
    return prompts, responses


def full_forward(model, tokens):
    """The model's output for one unpadded sequence, all positions: logits (T, V) or scalars (T,)."""
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0]


# ---------------------------------------------------------------------------------------------- response_batch


@given(data=st.data())
def test_response_batch_layout(data):
    prompts, responses = random_rows(data)
    seq, start, P, targets, lengths, ended = response_batch(prompts, responses, tok, "cpu")
    R = max(max(len(r["ids"]) + r["ended"] for r in responses), 1)
    assert P == max(map(len, prompts)) and seq.shape == (len(prompts), P + R) and targets.shape == (len(prompts), R)
    assert seq.dtype == start.dtype == targets.dtype == lengths.dtype == torch.long and ended.dtype == torch.bool
    for b, (prompt, r) in enumerate(zip(prompts, responses)):
        response = r["ids"] + [EOS] * r["ended"]  # the EOS is part of the response: it is a sampled action
        assert start[b] == P - len(prompt)
        assert seq[b, :P].tolist() == [PAD] * (P - len(prompt)) + prompt  # left-padded prompt
        assert seq[b, P:].tolist() == response + [PAD] * (R - len(response))  # response, then padding
        assert targets[b].tolist() == response + [IGNORE_INDEX] * (R - len(response))
        assert lengths[b] == len(response) and ended[b] == r["ended"]


# ---------------------------------------------------------------------------------------------- reading the models


@settings(max_examples=10)
@given(data=st.data(), temperature=st.sampled_from([1.0, 0.7, 1.6]))
def test_response_logprobs_and_entropy_equal_a_full_forward(data, temperature):
    """The log-prob of each response token is log_softmax(logits / temperature) at the position before it,
    as a forward of that sequence alone gives it; no target (-100) gives 0; the entropy is the one
    of the same distribution."""
    model = make_model(data.draw(st.integers(0, 50)))
    prompts, responses = random_rows(data)
    seq, start, P, targets, lengths, _ = response_batch(prompts, responses, tok, "cpu")
    with torch.no_grad():
        logprobs = response_logprobs(model, seq, start, P, targets, temperature, NO_AUTOCAST)
        logprobs_e, entropy = response_logprobs(model, seq, start, P, targets, temperature, NO_AUTOCAST, entropy=True)
    assert logprobs.shape == entropy.shape == targets.shape and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs_e, logprobs, atol=0, rtol=0)
    for b, prompt in enumerate(prompts):
        n = int(lengths[b])
        response = seq[b, P:P + n].tolist()
        log_p = torch.log_softmax(full_forward(model, prompt + response)[len(prompt) - 1:-1] / temperature, -1)
        expect = log_p.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)  # (n,)
        torch.testing.assert_close(logprobs[b, :n], expect, atol=1e-5, rtol=1e-5)
        assert (logprobs[b, n:] == 0).all()
        torch.testing.assert_close(entropy[b, :n], -(log_p.exp() * log_p).sum(-1), atol=1e-5, rtol=1e-5)


@settings(max_examples=10)
@given(data=st.data())
def test_response_values_are_the_head_before_each_response_token(data):
    model = make_model(data.draw(st.integers(0, 50)), scalar_head=True)
    prompts, responses = random_rows(data)
    seq, start, P, targets, lengths, _ = response_batch(prompts, responses, tok, "cpu")
    with torch.no_grad():
        values = response_values(model, seq, start, P, NO_AUTOCAST)
    assert values.shape == targets.shape and values.dtype == torch.float32
    for b, prompt in enumerate(prompts):
        n = int(lengths[b])
        alone = full_forward(model, prompt + seq[b, P:P + n].tolist())  # (len(prompt) + n,)
        # the value of response token j is read where it is chosen: at the position of the token before it
        torch.testing.assert_close(values[b, :n], alone[len(prompt) - 1:-1], atol=1e-5, rtol=1e-5)


@settings(max_examples=10)
@given(data=st.data())
def test_reward_scores_are_read_at_each_responses_last_token(data):
    """At the EOS of a response that ended; at the last sampled token of one that ran out of budget."""
    model = make_model(data.draw(st.integers(0, 50)), scalar_head=True)
    prompts, responses = random_rows(data)
    seq, start, P, _, lengths, _ = response_batch(prompts, responses, tok, "cpu")
    with torch.no_grad():
        scores = reward_scores(model, seq, start, P, lengths, NO_AUTOCAST)
    assert scores.shape == (len(prompts),) and scores.dtype == torch.float32
    for b, (prompt, r) in enumerate(zip(prompts, responses)):
        alone = full_forward(model, prompt + r["ids"] + [EOS] * r["ended"])
        torch.testing.assert_close(scores[b], alone[-1], atol=1e-5, rtol=1e-5)


@settings(max_examples=10)
@given(data=st.data())
def test_minibatch_rows_change_no_logprob_or_value(data):
    """Dropping the prompt columns that are padding in every chosen row changes nothing for those rows,
    and leaves no such column."""
    policy, value_model = make_model(data.draw(st.integers(0, 50))), make_model(7, scalar_head=True)
    prompts, responses = random_rows(data, max_rows=6)
    seq, start, P, targets, _, _ = response_batch(prompts, responses, tok, "cpu")
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, len(prompts) - 1), min_size=1))), dtype=torch.long)
    with torch.no_grad():
        full_lp = response_logprobs(policy, seq, start, P, targets, 0.8, NO_AUTOCAST)
        full_v = response_values(value_model, seq, start, P, NO_AUTOCAST)
        mb_seq, mb_start, mb_P = minibatch_rows(rows, seq, start, P)
        mb_lp = response_logprobs(policy, mb_seq, mb_start, mb_P, targets[rows], 0.8, NO_AUTOCAST)
        mb_v = response_values(value_model, mb_seq, mb_start, mb_P, NO_AUTOCAST)
    longest = max(len(prompts[i]) for i in rows.tolist())
    assert mb_P == longest and mb_seq.shape == (len(rows), longest + seq.size(1) - P) and mb_start.min() == 0
    assert torch.equal(mb_seq[:, mb_P:], seq[rows, P:])
    for i, b in enumerate(rows.tolist()):
        assert mb_start[i] == longest - len(prompts[b]) and mb_seq[i, mb_start[i]:mb_P].tolist() == prompts[b]
    torch.testing.assert_close(mb_lp, full_lp[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mb_v, full_v[rows], atol=1e-5, rtol=1e-5)


@settings(max_examples=10)
@given(data=st.data(), n=st.integers(2, 5))
def test_in_parts_gives_the_whole_batchs_scores_in_row_order(data, n):
    """PPO scores its rollout in parts of similar prompt lengths (scoring.in_parts): the reference
    log-probs, values and rewards of every row are those of the whole batch, in the batch's order."""
    policy, value_model = make_model(data.draw(st.integers(0, 50))), make_model(7, scalar_head=True)
    reward_model = make_model(8, scalar_head=True)
    prompts, responses = random_rows(data, max_rows=8)
    seq, start, P, targets, lengths, _ = response_batch(prompts, responses, tok, "cpu")
    parts = []

    def score(rows, seq, start, P):
        parts.append((len(rows), seq.size(1)))
        return (response_logprobs(policy, seq, start, P, targets[rows], 0.8, NO_AUTOCAST),
                response_values(value_model, seq, start, P, NO_AUTOCAST),
                reward_scores(reward_model, seq, start, P, lengths[rows], NO_AUTOCAST))
    with torch.no_grad():
        whole = score(torch.arange(len(prompts)), seq, start, P)
        got = in_parts(n, seq, start, P, score)
    assert sum(rows for rows, _ in parts[1:]) == len(prompts) and len(parts) - 1 <= n
    assert len(parts) - 1 > 1 or len(prompts) == 1  # in parts indeed
    for a, b in zip(got, whole):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert in_parts(1, seq, start, P, score)[2].tolist() == whole[2].tolist()  # one part: the batch as it is


# ---------------------------------------------------------------------------------------------- rollout == training


def test_generate_logprobs_are_what_training_computes_from_response_batch():
    """PPO's old log-probs come with the samples; on the first minibatch the policy's log-probs of the
    same tokens must equal them (ratio 1). Prompts of different lengths, rows that stop at their EOS at
    different steps and rows that run out of budget."""
    model = make_model(11)
    with torch.no_grad():  # a large EOS row: EOS is likely after some contexts, so rows end at different steps
        model.lm_head.weight[EOS] = 20 * model.lm_head.weight[101]
    prompts = [tok.encode(text) for text in ["add 3 4\n", "sort 9 1\n", "hi\n", "reverse abc\n", "x", "count 1 2 3\n"]]
    temperature, budget = 0.9, 12
    idx, start = left_pad(prompts, PAD)
    gen = model.generate(idx, budget, start=start, temperature=temperature, eos_id=EOS, pad_id=PAD,
                         generator=torch.Generator().manual_seed(3))
    responses = sample(model, tok, prompts, max_new_tokens=budget, temperature=temperature,
                                 generator=torch.Generator().manual_seed(3))  # the same samples, as dicts
    lengths = gen.mask.sum(1)
    assert 0 < sum(r["ended"] for r in responses) < len(prompts) and len(set(lengths.tolist())) > 2

    seq, start, P, targets, lengths_b, ended = response_batch(prompts, responses, tok, "cpu")
    assert torch.equal(seq[:, P:], gen.tokens) and torch.equal(targets, gen.tokens.masked_fill(~gen.mask, IGNORE_INDEX))
    assert torch.equal(lengths_b, lengths) and ended.tolist() == (gen.tokens == EOS).any(1).tolist()
    with torch.no_grad():
        logprobs = response_logprobs(model, seq, start, P, targets, temperature, NO_AUTOCAST)
    torch.testing.assert_close(logprobs, gen.logprobs, atol=1e-5, rtol=1e-5)
