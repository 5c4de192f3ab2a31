"""
Sampling responses to text prompts in batches, and what the scripts measure on them.

    sample_responses   responses of a policy to token-list prompts, with the KV cache
    score_responses    the reward model's score of each response, at its EOS, with the EOS trick
    best_of_n          n samples per prompt, the one the reward model scores highest kept
"""
import time
from contextlib import nullcontext

import torch

from minirlhf.data import left_pad
from minirlhf.rl import eos_penalty
from minirlhf.scoring import response_batch, reward_scores


@torch.no_grad()
def sample_responses(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, batch_size=256,
                     generator=None, n=1):
    """n responses of model to each prompt token list (prompt-major: prompt i's are items i * n ... i * n + n - 1),
    about batch_size responses at a time with the KV cache, a prompt read once for its n.
    Returns a list of dicts: ids (response tokens, EOS excluded), text, ended (stopped at EOS)."""
    device = model.lm_head.weight.device
    was_training = model.training
    model.eval()
    out = []
    per_batch = max(batch_size // n, 1)  # prompts per batch
    for i in range(0, len(prompts), per_batch):
        idx, start = left_pad(prompts[i:i + per_batch], tokenizer.pad_id)
        gen = model.generate(idx.to(device), max_new_tokens, start=start.to(device), temperature=temperature,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, generator=generator, num_samples=n)
        for tokens, mask in zip(gen.tokens.tolist(), gen.mask.tolist()):
            ids = [t for t, m in zip(tokens, mask) if m]
            ended = bool(ids) and ids[-1] == tokenizer.eos_id
            ids = ids[:-1] if ended else ids
            out.append({"ids": ids, "text": tokenizer.decode(ids), "ended": ended})
    model.train(was_training)
    return out


@torch.no_grad()
def score_responses(reward_model, tokenizer, prompts, responses, *, eos_penalty_score=-1.0, autocast=nullcontext,
                    batch_size=256):
    """The reward model's score of each response (a sample_responses dict) to its prompt (a token
    list), read at its EOS as in PPO's rollout; a response that never ended gets eos_penalty_score
    instead (the EOS trick, "The N+ implementation details of RLHF with PPO"). A list of floats."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_responses: {len(prompts)} prompts but {len(responses)} responses")
    device = next(reward_model.parameters()).device
    was_training = reward_model.training
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
    """Best-of-n (rejection) sampling against a reward model (Nakano et al. 2021, WebGPT; Gao et al.
    2022): n responses per prompt from policy, each scored by the reward model (score_responses: at
    its EOS, with the EOS trick), and the highest-scoring one kept, the first of them on a tie. Its
    KL to the policy is at most log n - (n - 1) / n, equal when scores never tie (Gao et al. 2022).

    Returns, per prompt, the chosen response (a sample_responses dict with its "score"); with
    return_all, (chosen, samples), samples[i] being prompt i's n responses in the order drawn, each
    with its score, so that another reward model or a smaller n can reuse them."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be at least 1, got {n}")
    repeated = [p for p in prompt_ids for _ in range(n)]  # as the responses come: prompt i's n are neighbours
    with autocast():
        responses = sample_responses(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, n=n,
                                     temperature=temperature, batch_size=batch_size, generator=generator)
    scores = score_responses(reward_model, tokenizer, repeated, responses, eos_penalty_score=eos_penalty_score,
                             autocast=autocast, batch_size=batch_size)
    samples = [[{**r, "score": s} for r, s in zip(responses[i * n:(i + 1) * n], scores[i * n:(i + 1) * n])]
               for i in range(len(prompt_ids))]
    chosen = [max(group, key=lambda r: r["score"]) for group in samples]  # max keeps the first of equals
    return (chosen, samples) if return_all else chosen


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One readable line per interval: step, the metrics given, throughput and ETA."""

    def __init__(self, total, start=0):
        """total steps; start: steps done before this process began (a resumed run)."""
        self.total, self.start, self.t0, self.last_t, self.last_n = total, start, time.time(), time.time(), 0

    def line(self, step, n_items, unit="tok", **metrics):
        """n_items: items (tokens, pairs...) processed since the start, for the throughput."""
        now = time.time()
        rate = (n_items - self.last_n) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_n = now, n_items
        eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
        parts = [f"step {step:>{len(str(self.total))}}/{self.total}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        parts += [f"{rate:,.0f} {unit}/s", f"eta {format_eta(eta)}"]
        return " | ".join(parts)
