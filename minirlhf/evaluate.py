"""
Held-out evaluation: several policies answer the same prompts, and what tells them apart is
measured on every response: the reward model's score (with the EOS trick, as in training), the KL
to a reference policy, the length, and on the built-in tasks the gold score (what the labelers
really want) with the task's per-response assessment (minirlhf/tasks: exact, refused, ...), so a
report can break the totals down by kind of prompt (task kind, dialogue behaviour).

Used by train_sft.py (SFT's gold score), train_ppo.py (the SFT vs PPO report, rounds) and the
experiments. Under torchrun the prompts are split over the ranks and the results gathered on all.
"""
import os
from collections import defaultdict

import torch

from minirlhf import distributed
from minirlhf.data import encode_prompt
from minirlhf.rl import eos_penalty
from minirlhf.sampling import sample_responses
from minirlhf.scoring import comparison_batch, group_rewards, response_batch, response_logprobs, reward_scores
from minirlhf.tasks import labelers


def sample(model, tokenizer, prompt_ids, *, max_new_tokens, temperature, gen, d, autocast, n=1):
    """sample_responses over all ranks (n per prompt, prompt-major): each samples every world-th prompt;
    every rank gets all."""
    with distributed.full_weights(model), autocast():
        mine = sample_responses(distributed.unwrapped(model), tokenizer, distributed.shard(prompt_ids, d),
                                max_new_tokens=max_new_tokens, temperature=temperature, generator=gen, n=n)
    per_prompt = [mine[i:i + n] for i in range(0, len(mine), n)]
    return [r for group in distributed.unshard(distributed.all_gather_objects(per_prompt)) for r in group]


def ranked_samples(policy, tokenizer, records, task, rng, *, k, temperature, max_new_tokens, gen, d, autocast):
    """Comparisons made the built-in way: k samples of the policy for each prompt record, ranked by
    a simulated labeler of the task (drawing from rng, alike on every rank). Returns the groups
    (prompt ids, [response ids + EOS] * k, ranking best first) and each group's gold scores."""
    ids = [encode_prompt(tokenizer, r, distributed.unwrapped(policy).config.block_size - max_new_tokens)
           for r in records]
    responses = sample(policy, tokenizer, ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature, gen=gen,
                       d=d, autocast=autocast)
    groups, score_groups = [], []
    for i, record in enumerate(records):
        group = responses[i * k:(i + 1) * k]
        scores = [task.gold_score(record, r["text"], r["ended"]) for r in group]
        # token ids, not text: a sample need not be valid UTF-8, so its text may not encode back to it
        groups.append((ids[i], [r["ids"] + [tokenizer.eos_id] for r in group],
                       labelers.rank(scores, rng, task.LABELER_TEMPERATURE)))
        score_groups.append(scores)
    return groups, score_groups


@torch.no_grad()
def rm_accuracy(reward_model, groups, tokenizer, *, device, autocast, d, gold=None, batch_size=64):
    """The share of the groups' (better, worse) pairs that the reward model orders as the labeler
    did, a tie counting half; with gold (each group's gold scores) also the share of the pairs with
    different gold scores that it orders as the gold scores do. Returns (accuracy, gold accuracy or None)."""
    agree = total = gold_right = gold_total = 0.0
    for i in range(0, len(groups), batch_size):
        mine = distributed.shard(list(range(i, min(i + batch_size, len(groups)))), d)
        if not mine:
            continue
        _, better, worse, _ = comparison_batch([groups[j] for j in mine])
        with distributed.full_weights(reward_model):
            rewards = group_rewards(reward_model, [groups[j] for j in mine], tokenizer.pad_id, device, autocast).cpu()
        agree += ((rewards[better] > rewards[worse]).sum() + 0.5 * (rewards[better] == rewards[worse]).sum()).item()
        total += len(better)
        if gold is not None:
            g = torch.tensor([s for j in mine for s in gold[j]])
            differ = g[better] != g[worse]
            gold_right += ((rewards[better] > rewards[worse]) == (g[better] > g[worse]))[differ].sum().item()
            gold_total += differ.sum().item()
    agree, total, gold_right, gold_total = distributed.all_sum(
        torch.tensor([agree, total, gold_right, gold_total], dtype=torch.float64, device=device)).tolist()
    return agree / max(total, 1), (gold_right / max(gold_total, 1) if gold is not None else None)


def split_sft_record(record):
    """(prompt record, final response text) of an SFT record: a completion, or the last assistant turn."""
    if "messages" in record:
        return {"messages": record["messages"][:-1]}, record["messages"][-1]["content"]
    return {"prompt": record["prompt"]}, record["completion"]


def sft_gold(model, tokenizer, task, records, demonstrations, *, max_new_tokens, seed, d, device, autocast):
    """SFT's summary on held-out built-in prompts: the gold score of greedy and sampled (T = 1)
    responses, with an untrained model of the same shape and the demonstrations themselves for scale."""
    ids = [encode_prompt(tokenizer, r, distributed.unwrapped(model).config.block_size - max_new_tokens)
           for r in records]
    gen = torch.Generator(device=device).manual_seed(seed + d.rank)
    kw = dict(max_new_tokens=max_new_tokens, gen=gen, d=d, autocast=autocast)

    def gold(responses):
        return sum(task.gold_score(r, s["text"], s["ended"]) for r, s in zip(records, responses)) / len(records)
    untrained = type(distributed.unwrapped(model))(distributed.unwrapped(model).config).to(device)
    demos = [split_sft_record(r) for r in demonstrations]
    return {"gold_greedy": gold(sample(model, tokenizer, ids, temperature=0.0, **kw)),
            "gold_sampled": gold(sample(model, tokenizer, ids, temperature=1.0, **kw)),
            "gold_untrained_greedy": gold(sample(untrained, tokenizer, ids, temperature=0.0, **kw)),
            "gold_demonstrations": sum(task.gold_score(p, c, True) for p, c in demos) / len(demos),
            "n_gold_prompts": len(records)}


@torch.no_grad()
def compare(policies, tokenizer, records, *, reference, reward_model, task, temperature, max_new_tokens,
            eos_penalty_score, seed, d, device, autocast, n_examples=8):
    """The policies {name: model} answer the held-out prompt records, sampled at the training
    temperature (the policies as trained) and greedy. Returns a flat dict:
        n_prompts, temperature
        {name}_rm_score, {name}_mean_length, {name}_ended       on the sampled responses
        {name}_kl                                             KL(policy || reference) per response, nats
        {name}_gold_{mode}, {name}_exact_{mode}               built-in tasks, mode sampled / greedy
        win_rate_{name}_{mode}                                gold win rate over the first policy (ties half)
        by_kind                                               {kind: {n, {name}_{field}: mean of task.assess}}
        examples                                              the first prompts, side by side
    KL and RM scores are per response; gold is None where the prompts are not the task's."""
    names = list(policies)
    block_size = distributed.unwrapped(reference).config.block_size
    ids = [encode_prompt(tokenizer, r, block_size - max_new_tokens) for r in records]
    gen = torch.Generator(device=device).manual_seed(seed + d.rank)
    result = {"n_prompts": len(ids), "temperature": temperature}
    samples = {}
    for name, model in policies.items():
        was_training = model.training
        model.eval()
        for mode, t in (("sampled", temperature), ("greedy", 0.0)):
            samples[name, mode] = sample(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=t,
                                         gen=gen, d=d, autocast=autocast)
        rs = samples[name, "sampled"]
        result[f"{name}_mean_length"] = sum(len(r["ids"]) + r["ended"] for r in rs) / len(rs)
        result[f"{name}_ended"] = sum(r["ended"] for r in rs) / len(rs)
        # the reward model's score, with the EOS trick as in training, and KL(policy || reference)
        # per response: the sum over its tokens of log pi - log pi_ref, on the policy's own samples
        scores, kls = [], []
        my_ids, my_rs = distributed.shard(ids, d), distributed.shard(rs, d)
        for i in range(0, len(my_ids), 256):
            seq, start, P, targets, lengths, ended = response_batch(my_ids[i:i + 256], my_rs[i:i + 256], tokenizer,
                                                                    device)
            scores += eos_penalty(reward_scores(reward_model, seq, start, P, lengths, autocast), ended,
                                  eos_penalty_score).tolist()
            if model is not reference:
                with distributed.full_weights(model):
                    lp = response_logprobs(distributed.unwrapped(model), seq, start, P, targets, temperature, autocast)
                lp_ref = response_logprobs(reference, seq, start, P, targets, temperature, autocast)
                kls += (lp - lp_ref).sum(1).tolist()
        scores = distributed.unshard(distributed.all_gather_objects(scores))
        kls = distributed.unshard(distributed.all_gather_objects(kls))
        result[f"{name}_rm_score"] = sum(scores) / len(scores)
        result[f"{name}_kl"] = sum(kls) / len(kls) if kls else 0.0
        model.train(was_training)

    try:  # gold scores exist for the prompts of the built-in task, whatever file they come from
        assessed = {key: [task.assess(r, s["text"], s["ended"]) for r, s in zip(records, rs)]
                    for key, rs in samples.items()}
    except ValueError:
        assessed = None
    if assessed is not None:
        for (name, mode), a in assessed.items():
            result[f"{name}_gold_{mode}"] = sum(x["gold"] for x in a) / len(a)
            result[f"{name}_exact_{mode}"] = sum(x["gold"] == 1.0 for x in a) / len(a)
        for name in names[1:]:
            for mode in ("sampled", "greedy"):
                result[f"win_rate_{name}_{mode}"] = win_rate([x["gold"] for x in assessed[name, mode]],
                                                             [x["gold"] for x in assessed[names[0], mode]])
        result["by_kind"] = by_kind(records, {name: assessed[name, "sampled"] for name in names}, names[0], task)
    result["examples"] = []
    for i in range(min(n_examples, len(ids))):
        example = {"prompt": tokenizer.decode(ids[i])}
        for name in names:
            example[name] = samples[name, "sampled"][i]["text"]
            if assessed:
                example[f"{name}_gold"] = assessed[name, "sampled"][i]["gold"]
        result["examples"].append(example)
    return result


def win_rate(gold_a, gold_b):
    """The share of prompts where a's response scores above b's, ties counting half."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_a, gold_b)) / len(gold_a)


def by_kind(records, assessed, baseline, task):
    """Per kind of prompt: the count, the mean of every numeric field of each policy's assessments,
    and each policy's gold win rate over the baseline policy."""
    kinds = [task.kind_of(r) for r in records]
    out = {}
    for kind in [k for k in task.KINDS if k in kinds]:
        rows = [i for i, k in enumerate(kinds) if k == kind]
        entry = {"n": len(rows)}
        for name, a in assessed.items():
            sums = defaultdict(float)
            for i in rows:
                for field, v in a[i].items():
                    if isinstance(v, (bool, int, float)):
                        sums[field] += float(v)
            entry.update({f"{name}_{field}": v / len(rows) for field, v in sums.items()})
            if name != baseline:
                entry[f"{name}_win_rate"] = win_rate([a[i]["gold"] for i in rows],
                                                     [assessed[baseline][i]["gold"] for i in rows])
        out[kind] = entry
    return out


def plot_curves(history, path, x="iteration", keys=("objective/gold", "objective/rm_score", "objective/kl",
                                                      "policy/entropy", "charts/response_length",
                                                      "val/explained_variance")):
    """A PNG of training curves when matplotlib (the `plot` extra) is installed; None otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in keys if history and any(h.get(k) is not None for h in history)]
    if not keys:  # every update was skipped: nothing to draw
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        points = [(h[x], h[k]) for h in history if h.get(k) is not None]
        ax.plot(*zip(*points))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
