"""
Scoring responses in a PPO rollout's layout, seq (B, P + R): a left-padded prompt of P columns, then a response of R
columns padded after its EOS. PPO, reward model training and evaluation all read positions through these:
    response_logprobs   log pi(token) of each response token (and entropies)     policy, reference
    response_values     the value model's estimate at each response position      value model
    reward_scores       the reward model's score of each response, at its EOS     reward model
    response_batch      prompts and sampled responses (minirlhf/sampling.py) -> that layout
    minibatch_rows      some rows of a batch, without the prompt columns that are padding in all of them
    in_parts            a batch scored in parts of similar prompt lengths, put back in row order
"""
import torch

from minirlhf.data import IGNORE_INDEX, left_pad, micro_batches


def response_logprobs(model, seq, start, P, targets, temperature, autocast, entropy=False):
    """Log-probs (B, R) of the response tokens seq[:, P:] (with entropy, also entropies) at the sampling temperature,
    read at positions P-1 ... T-2 (t predicts t + 1). targets: the response tokens, -100 where there is none."""
    with autocast():
        return model(seq[:, :-1], start, last=seq.size(1) - P, targets=targets, temperature=temperature,
                     return_entropy=entropy)


def response_values(model, seq, start, P, autocast):
    """The value model's estimate (B, R) at each response position: the state before each token is chosen."""
    with autocast():
        return model(seq[:, :-1], start, last=seq.size(1) - P)


def reward_scores(reward_model, seq, start, P, lengths, autocast):
    """The reward model's score (B,) of each response, read at its last token (lengths (B,) count the EOS)."""
    with autocast():
        scores = reward_model(seq, start, last=seq.size(1) - P)  # (B, R)
    return scores[torch.arange(len(seq), device=seq.device), lengths - 1]


def response_batch(prompts, responses, tokenizer, device):
    """Prompts (token lists) and sampled responses (sampling.sample dicts) -> seq (B, P + R), start (B,), P,
    targets (B, R) with -100 after each response, lengths (B,) with the EOS counted, ended (B,)."""
    prompt_idx, start = left_pad(prompts, tokenizer.pad_id)
    resp = [r["ids"] + [tokenizer.eos_id] * r["ended"] for r in responses]
    lengths = torch.tensor([len(r) for r in resp])
    tokens = torch.full((len(resp), max(int(lengths.max()), 1)), tokenizer.pad_id, dtype=torch.long)
    for b, r in enumerate(resp):
        tokens[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    targets = tokens.masked_fill(torch.arange(tokens.size(1))[None, :] >= lengths[:, None], IGNORE_INDEX)
    ended = torch.tensor([r["ended"] for r in responses])
    seq = torch.cat([prompt_idx, tokens], 1)
    return (seq.to(device), start.to(device), prompt_idx.size(1), targets.to(device), lengths.to(device),
            ended.to(device))


def in_parts(n, seq, start, P, score):
    """score(rows, seq, start, P) -> per-row tensors, computed in up to n parts of similar prompt lengths
    (minibatch_rows), put back in row order: the same outputs, less padding. rows: a part's indices into the batch."""
    if n == 1:
        return score(torch.arange(seq.size(0), device=seq.device), seq, start, P)
    prompt_lengths = (P - start).tolist()
    parts = micro_batches(list(range(seq.size(0))), n, lambda i: prompt_lengths[i])
    outs = [score(torch.tensor(part, device=seq.device), *minibatch_rows(torch.tensor(part, device=seq.device),
                                                                         seq, start, P)) for part in parts]
    inverse = torch.argsort(torch.tensor([i for part in parts for i in part], device=seq.device))
    return tuple(torch.cat(pieces)[inverse] for pieces in zip(*outs))


def minibatch_rows(rows, seq, start, P):
    """seq, start, P of some rows (a LongTensor), without the prompt columns that are padding in all of them."""
    drop = int(start[rows].min())  # leading columns that are padding in every row
    return seq[rows, drop:], start[rows] - drop, P - drop
