"""
The reward model's pieces (InstructGPT step 2), in the order train_rm.py runs them:
    comparisons      K samples of a policy per prompt, ranked by a simulated labeler of the task
    comparison_batch ranked groups -> one sequence per response, its (better, worse) pairs, their weights
    rewards          the reward of every response of the groups: a prompt read once for its K responses
    pairwise_loss    the Bradley-Terry loss -log sigmoid(r_better - r_worse) of each pair
    accuracy         the share of held-out pairs ordered as the labeler (and the gold scores) order them
A group is (prompt ids, [response ids ending in EOS] * K, ranking best first), as data.encode_comparison makes it.
"""
import itertools

import torch
import torch.nn.functional as F

from minirlhf import distributed
from minirlhf.data import encode_prompt, left_pad
from minirlhf.sampling import sample
from minirlhf.tasks import labelers


def comparisons(policy, tokenizer, records, task, rng, *, k, temperature, max_new_tokens, gen, d, autocast):
    """(groups, gold scores): k samples per prompt record, ranked by the task's simulated labeler (drawing from rng)."""
    ids = [encode_prompt(tokenizer, r, distributed.unwrapped(policy).config.block_size - max_new_tokens)
           for r in records]
    responses = sample(policy, tokenizer, ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator=gen, d=d, autocast=autocast)
    groups, gold = [], []
    for i, record in enumerate(records):
        group = responses[i * k:(i + 1) * k]
        scores = [task.gold_score(record, r["text"], r["ended"]) for r in group]
        # token ids, not text: a sample need not be valid UTF-8, so its text may not encode back to it
        groups.append((ids[i], [r["ids"] + [tokenizer.eos_id] for r in group],
                       labelers.rank(scores, rng, task.LABELER_TEMPERATURE)))
        gold.append(scores)
    return groups, gold


def ranking_pairs(ranking):
    """All C(K, 2) (better, worse) index pairs of a ranking given best first."""
    return list(itertools.combinations(ranking, 2))


def comparison_batch(groups):
    """Sequences, one per response (InstructGPT, 3.5), each pair's better and worse index, weights 1 / C(K, 2)."""
    seqs, better, worse, weights = [], [], [], []
    for prompt, responses, ranking in groups:
        offset = len(seqs)
        seqs += [prompt + r for r in responses]
        pairs = ranking_pairs(ranking)
        better += [offset + b for b, _ in pairs]
        worse += [offset + w for _, w in pairs]
        weights += [1.0 / len(pairs)] * len(pairs)
    return seqs, torch.tensor(better, dtype=torch.long), torch.tensor(worse, dtype=torch.long), \
        torch.tensor(weights, dtype=torch.float32)


def pairwise_loss(r_better, r_worse):
    """Bradley-Terry loss -log sigmoid(r_better - r_worse), per pair."""
    return -F.logsigmoid(r_better - r_worse)


def rewards_at_eos(reward_model, seqs, pad_id, device, autocast):
    """The reward (n,) of each prompt + response + EOS at its last token: left padding puts those in the last column."""
    idx, start = left_pad(seqs, pad_id)
    with autocast():
        return reward_model(idx.to(device), start.to(device), last=1).view(-1)


def rewards(reward_model, groups, pad_id, device, autocast):
    """rewards_at_eos of every prompt + response of the groups (comparison_batch's order), each prompt read once for its
    K responses; in halves if the longest prompt + response overflow the block. Under FSDP2 each response goes with its
    prompt: FSDP2 would not gather a block's weights for a backward through its keys and values alone."""
    prompts = [prompt for prompt, _, _ in groups]
    responses = [r for _, rs, _ in groups for r in rs]
    if distributed.sharded(reward_model):
        return rewards_at_eos(reward_model, [p + r for p, rs, _ in groups for r in rs], pad_id, device, autocast)
    if max(map(len, prompts)) + max(map(len, responses)) > distributed.unwrapped(reward_model).config.block_size \
            and len(groups) > 1:
        half = len(groups) // 2
        return torch.cat([rewards(reward_model, part, pad_id, device, autocast)
                          for part in (groups[:half], groups[half:])])
    idx, start = left_pad(prompts, pad_id)
    lengths = torch.tensor([len(r) for r in responses])
    tokens = torch.full((len(responses), int(lengths.max())), pad_id, dtype=torch.long)  # right-padded
    for n, r in enumerate(responses):
        tokens[n, :len(r)] = torch.tensor(r, dtype=torch.long)
    repeats = torch.tensor([len(rs) for _, rs, _ in groups])
    with autocast():
        out = reward_model(idx.to(device), start.to(device), responses=tokens.to(device), repeats=repeats.to(device))
    return out[torch.arange(len(responses), device=out.device), lengths.to(device) - 1]  # out (n, R): at each EOS


@torch.no_grad()
def accuracy(reward_model, groups, tokenizer, *, device, autocast, d, gold=None, batch_size=64):
    """(accuracy, gold accuracy or None): the share of pairs the reward model orders as the labeler did (ties half), and
    with gold (each group's gold scores) of the pairs whose gold differs, as gold orders them."""
    was_training = reward_model.training
    reward_model.eval()
    agree = total = gold_right = gold_total = 0.0
    for i in range(0, len(groups), batch_size):
        mine = distributed.shard(list(range(i, min(i + batch_size, len(groups)))), d)
        if not mine:
            continue
        _, better, worse, _ = comparison_batch([groups[j] for j in mine])
        with distributed.full_weights(reward_model):
            r = rewards(reward_model, [groups[j] for j in mine], tokenizer.pad_id, device, autocast).cpu()
        agree += ((r[better] > r[worse]).sum() + 0.5 * (r[better] == r[worse]).sum()).item()
        total += len(better)
        if gold is not None:
            g = torch.tensor([s for j in mine for s in gold[j]])
            differ = g[better] != g[worse]
            gold_right += ((r[better] > r[worse]) == (g[better] > g[worse]))[differ].sum().item()
            gold_total += differ.sum().item()
    reward_model.train(was_training)
    agree, total, gold_right, gold_total = distributed.all_sum(
        torch.tensor([agree, total, gold_right, gold_total], dtype=torch.float64, device=device)).tolist()
    return agree / max(total, 1), (gold_right / max(gold_total, 1) if gold is not None else None)
