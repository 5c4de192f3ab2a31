"""
Sampling text responses to token-list prompts in batches with the KV cache: `sample` (split over the ranks under
torchrun), `score_responses` (EOS trick), `best_of_n`. PPO's rollout calls GPT.generate itself to keep tensors.
"""
from contextlib import nullcontext

import torch

from minirlhf import distributed
from minirlhf.data import left_pad
from minirlhf.rl import eos_penalty
from minirlhf.scoring import response_batch, reward_scores


@torch.no_grad()
def sample(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, n=1, generator=None, d=distributed.ONE,
           autocast=nullcontext, batch_size=256):
    """n responses to each prompt, prompt i's at items i * n ... i * n + n - 1, about batch_size at a time. Under
    torchrun each rank samples every world-th prompt and every rank gets all. Dicts: ids (EOS excluded), text, ended."""
    net = distributed.unwrapped(model)
    device, was_training = net.lm_head.weight.device, net.training
    net.eval()
    mine, per_batch = [], max(batch_size // n, 1)  # prompts per batch
    my_prompts = distributed.shard(prompts, d)
    with distributed.full_weights(model), autocast():
        for i in range(0, len(my_prompts), per_batch):
            idx, start = left_pad(my_prompts[i:i + per_batch], tokenizer.pad_id)
            out = net.generate(idx.to(device), max_new_tokens, start=start.to(device), temperature=temperature,
                               eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, generator=generator, num_samples=n)
            for tokens, mask in zip(out.tokens.tolist(), out.mask.tolist()):
                ids = [t for t, m in zip(tokens, mask) if m]
                ended = bool(ids) and ids[-1] == tokenizer.eos_id
                ids = ids[:-1] if ended else ids
                mine.append({"ids": ids, "text": tokenizer.decode(ids), "ended": ended})
    net.train(was_training)
    if d.world == 1:
        return mine
    per_prompt = [mine[i:i + n] for i in range(0, len(mine), n)]
    return [r for group in distributed.unshard(distributed.all_gather_objects(per_prompt)) for r in group]


@torch.no_grad()
def score_responses(reward_model, tokenizer, prompts, responses, *, eos_penalty_score=-1.0, autocast=nullcontext,
                    batch_size=256):
    """Reward model scores (floats) at each response's EOS, or eos_penalty_score if it never ended (the EOS trick)."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_responses: {len(prompts)} prompts but {len(responses)} responses")
    device, was_training = next(reward_model.parameters()).device, reward_model.training
    reward_model.eval()
    scores = []
    for i in range(0, len(prompts), batch_size):
        seq, start, P, _, lengths, ended = response_batch(prompts[i:i + batch_size], responses[i:i + batch_size],
                                                          tokenizer, device)
        scores += eos_penalty(reward_scores(reward_model, seq, start, P, lengths, autocast), ended,
                              eos_penalty_score).float().tolist()
    reward_model.train(was_training)
    return scores


@torch.no_grad()
def best_of_n(policy, reward_model, tokenizer, prompt_ids, n, *, max_new_tokens, temperature=1.0, generator=None,
              autocast=nullcontext, eos_penalty_score=-1.0, batch_size=256, return_all=False):
    """Best-of-n sampling (WebGPT, Nakano et al. 2021; Gao et al. 2022): per prompt, the first of n responses that the
    reward model scores highest, its KL to the policy at most log n - (n - 1) / n. Returns those sample dicts with their
    "score"; with return_all, (chosen, samples), samples[i] being prompt i's n scored responses."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be at least 1, got {n}")
    responses = sample(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, n=n, temperature=temperature,
                       batch_size=batch_size, generator=generator, autocast=autocast)
    repeated = [p for p in prompt_ids for _ in range(n)]  # as the responses come: prompt i's n are neighbours
    scores = score_responses(reward_model, tokenizer, repeated, responses, eos_penalty_score=eos_penalty_score,
                             autocast=autocast, batch_size=batch_size)
    samples = [[{**r, "score": s} for r, s in zip(responses[i * n:(i + 1) * n], scores[i * n:(i + 1) * n])]
               for i in range(len(prompt_ids))]
    chosen = [max(group, key=lambda r: r["score"]) for group in samples]  # max keeps the first of equals
    return (chosen, samples) if return_all else chosen
