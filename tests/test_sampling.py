"""minirlhf/sampling.py: sample_responses in several batches is one big batch of GPT.generate, as dicts."""
import torch

from minirlhf.data import left_pad
from minirlhf.model import GPT, GPTConfig
from minirlhf.sampling import sample_responses
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
    responses = sample_responses(model, tok, prompts, max_new_tokens=budget, temperature=0, batch_size=3)
    assert model.training  # handed back in training mode
    model.eval()
    one_batch = sample_responses(model, tok, prompts, max_new_tokens=budget, temperature=0, batch_size=len(prompts))
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
    plain = sample_responses(model, tok, repeated, max_new_tokens=budget, generator=torch.Generator().manual_seed(7))
    shared = sample_responses(model, tok, prompts, max_new_tokens=budget, n=n,
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

    rows = []  # the batch sizes of the forward passes: the prompts' pass sees 7 rows, then 21
    hook = model.transformer.h[0].register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:2]))
    model.generate(idx, budget, start=start, num_samples=n, generator=torch.Generator().manual_seed(1), **kw)
    hook.remove()
    assert rows[0] == (len(prompts), idx.size(1)) and all(r == (len(prompts) * n, 1) for r in rows[1:])


def test_samples_gathered_over_ranks_keep_each_prompts_n_together(monkeypatch):
    """evaluate.sample over 2 ranks (each samples every other prompt, n per prompt) hands every rank the
    samples of one process, prompt-major: the gather puts the ranks' prompts back in order, n at a time."""
    from contextlib import nullcontext

    from minirlhf import distributed, evaluate
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, attn_impl="torch"))
    prompts = [tok.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=6, temperature=0.0, autocast=nullcontext)  # greedy: the same replies wherever sampled
    alone = evaluate.sample(model, tok, prompts, n=3, gen=None, d=distributed.Dist(0, 1, 0), **kw)
    parts = []  # what each of two ranks gives the gather
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts.append(obj) or [obj])
    for rank in (0, 1):
        evaluate.sample(model, tok, prompts, n=3, gen=None, d=distributed.Dist(rank, 2, rank), **kw)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts)
    gathered = evaluate.sample(model, tok, prompts, n=3, gen=None, d=distributed.Dist(0, 2, 0), **kw)
    assert gathered == alone and len(alone) == 3 * len(prompts)
    assert [r["text"] for r in alone[:3]] == [alone[0]["text"]] * 3  # greedy: a prompt's n are alike
    assert len({r["text"] for r in alone[::3]}) > 1  # prompts differ: misplaced groups would show
