"""minirlhf/sampling.py: sample in several batches is one big batch of GPT.generate, as dicts."""
import torch

from minirlhf.data import left_pad
from minirlhf.model import GPT, GPTConfig
from minirlhf.sampling import sample
from minirlhf.tokenizer import get_tokenizer

tok = get_tokenizer("bytes")
PROMPTS = ["add 3 4\n", "sort 9 1\n", "hi\n", "reverse abc\n", "x", "count 1 2 3\n", "what is 2 + 2?\n"]


def test_batches_of_responses_equal_one_generate_call():
    """Greedy decoding in chunks of 3 prompts (the last one short) gives, in the prompts' order, what one
    generate call over all of them gives: ids without the EOS, their text, and whether the EOS came.
    The model samples in eval mode (no dropout) and is handed back in the mode it was in."""
    torch.manual_seed(11)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32,
                          dropout=0.3, attn_impl="torch"))
    with torch.no_grad():  # a large EOS row: EOS is likely after some contexts, so rows end at different steps
        model.lm_head.weight[tok.eos_id] = 5 * model.lm_head.weight[101]
    prompts = [tok.encode(p) for p in PROMPTS]
    budget = 8

    model.train()
    responses = sample(model, tok, prompts, max_new_tokens=budget, temperature=0, batch_size=3)
    assert model.training  # handed back in training mode
    model.eval()
    one_batch = sample(model, tok, prompts, max_new_tokens=budget, temperature=0, batch_size=len(prompts))
    assert one_batch == responses
    assert not model.training

    idx, start = left_pad(prompts, tok.pad_id)
    gen = model.generate(idx, budget, start=start, temperature=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    assert len(responses) == len(prompts)
    for r, tokens, mask in zip(responses, gen.tokens.tolist(), gen.mask.tolist()):
        sampled = [t for t, m in zip(tokens, mask) if m]  # this row's response, its EOS included
        assert r["ended"] == (tok.eos_id in sampled)
        assert r["ids"] + [tok.eos_id] * r["ended"] == sampled and tok.eos_id not in r["ids"]
        assert r["text"] == tok.decode(r["ids"])
    ended = [r["ended"] for r in responses]
    assert any(ended) and not all(ended)  # both kinds of rows are exercised
    assert len({len(r["ids"]) for r in responses}) > 2


def test_n_samples_per_prompt_read_the_prompt_once_and_equal_repeated_prompts():
    """n samples per prompt from one prefill (the cache's rows repeated) are the samples of the prompts
    repeated n times, drawn with the same generator: tokens, ends and log-probs; with and without the cache,
    and in batches that split the prompts. The prefill runs over the distinct prompts only."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, attn_impl="torch"))
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] = 5 * model.lm_head.weight[101]
    prompts = [tok.encode(p) for p in PROMPTS]
    n, budget = 3, 8
    repeated = [p for p in prompts for _ in range(n)]
    plain = sample(model, tok, repeated, max_new_tokens=budget, generator=torch.Generator().manual_seed(7))
    shared = sample(model, tok, prompts, max_new_tokens=budget, n=n,
                              generator=torch.Generator().manual_seed(7))
    assert shared == plain
    assert len({r["text"] for r in shared[:n]}) > 1  # a prompt's samples differ: it is sampling

    idx, start = left_pad(prompts, tok.pad_id)
    ridx, rstart = left_pad(repeated, tok.pad_id)
    kw = dict(temperature=1.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    for use_cache in (True, False):
        a = model.generate(ridx, budget, start=rstart, use_cache=use_cache, generator=torch.Generator().manual_seed(1),
                           **kw)
        b = model.generate(idx, budget, start=start, use_cache=use_cache, num_samples=n,
                           generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.logprobs, b.logprobs)

    rows = []  # the batch sizes of the forward passes: the prompts' pass sees 7 rows, then 21 (fewer once rows stop)
    hook = model.transformer.h[0].register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:2]))
    model.generate(idx, budget, start=start, num_samples=n, generator=torch.Generator().manual_seed(1), **kw)
    hook.remove()
    assert rows[0] == (len(prompts), idx.size(1)) and rows[1] == (len(prompts) * n, 1)
    assert all(r[1] == 1 and r[0] <= len(prompts) * n for r in rows[2:])


def test_rows_that_stop_leave_the_batch_and_change_no_sample():
    """Once half of the running rows have stopped at their EOS, generate goes on with the others alone;
    the result is the one of the whole batch going on to the end (drop_stopped=False); and every row's
    tokens up to its EOS, and their log-probs, are those of a run where no row stops (no eos_id: every
    row runs the whole budget), since the random draws are made for every row at every step. With and
    without the cache, with n samples per prompt."""
    torch.manual_seed(5)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, attn_impl="torch"))
    with torch.no_grad():  # EOS about one time in ten: replies of 1 to 12 tokens
        model.lm_head.weight[tok.eos_id] = 0
        model.lm_head.weight[tok.eos_id, 0] = 1.0
        model.transformer.ln_f.bias[0] = 3.5
    idx, start = left_pad([tok.encode(p) for p in PROMPTS], tok.pad_id)
    budget, n = 12, 3
    for use_cache in (True, False):
        rows = []  # rows of each forward pass after the prompts'
        hook = model.transformer.h[0].register_forward_hook(lambda m, args, out: rows.append(args[0].size(0)))
        stops = model.generate(idx, budget, start=start, temperature=1.0, eos_id=tok.eos_id, pad_id=tok.pad_id,
                               num_samples=n, use_cache=use_cache, generator=torch.Generator().manual_seed(2))
        hook.remove()
        runs_on = model.generate(idx, budget, start=start, temperature=1.0, num_samples=n, use_cache=use_cache,
                                 generator=torch.Generator().manual_seed(2))
        kept = model.generate(idx, budget, start=start, temperature=1.0, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              num_samples=n, use_cache=use_cache, generator=torch.Generator().manual_seed(2),
                              drop_stopped=False)
        assert rows[1] == len(PROMPTS) * n and min(rows[1:]) < len(PROMPTS) * n / 2  # rows did leave the batch
        assert torch.equal(stops.tokens, kept.tokens) and torch.equal(stops.mask, kept.mask)
        torch.testing.assert_close(stops.logprobs, kept.logprobs)
        lengths = stops.mask.sum(1)
        assert len(set(lengths.tolist())) > 2 and lengths.min() < stops.tokens.size(1)
        for b, length in enumerate(lengths.tolist()):
            assert torch.equal(stops.tokens[b, :length], runs_on.tokens[b, :length])
            assert (stops.tokens[b, length:] == tok.pad_id).all() and not stops.mask[b, length:].any()
            assert stops.tokens[b, length - 1] == tok.eos_id or length == budget
            torch.testing.assert_close(stops.logprobs[b, :length], runs_on.logprobs[b, :length])
            assert (stops.logprobs[b, length:] == 0).all()


def test_samples_gathered_over_ranks_keep_each_prompts_n_together(monkeypatch):
    """sampling.sample over 2 ranks (each samples every other prompt, n per prompt) hands every rank the
    samples of one process, prompt-major: the gather puts the ranks' prompts back in order, n at a time."""
    from contextlib import nullcontext

    from minirlhf import distributed
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, attn_impl="torch"))
    prompts = [tok.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=6, temperature=0.0, autocast=nullcontext)  # greedy: the same replies wherever sampled
    alone = sample(model, tok, prompts, n=3, d=distributed.ONE, **kw)
    parts = []  # what each of two ranks gives the gather
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts.append(obj) or [obj])
    for rank in (0, 1):
        sample(model, tok, prompts, n=3, d=distributed.Dist(rank, 2, rank), **kw)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts)
    gathered = sample(model, tok, prompts, n=3, d=distributed.Dist(0, 2, 0), **kw)
    assert gathered == alone and len(alone) == 3 * len(prompts)
    assert [r["text"] for r in alone[:3]] == [alone[0]["text"]] * 3  # greedy: a prompt's n are alike
    assert len({r["text"] for r in alone[::3]}) > 1  # prompts differ: misplaced groups would show
