"""
Held-out evaluation, split over the ranks under torchrun: policies answer the same prompts; each response gets its
reward model score (EOS trick), KL to a reference, length and, on built-in tasks, gold score and assessment by kind.
"""
import math
from collections import defaultdict

import torch

from minirlhf import distributed
from minirlhf.data import encode_prompt
from minirlhf.sampling import best_of_n, sample, score_responses
from minirlhf.scoring import response_batch, response_logprobs


def split_sft_record(record):
    """(prompt record, final response text) of an SFT record: a completion, or the last assistant turn."""
    if "messages" in record:
        return {"messages": record["messages"][:-1]}, record["messages"][-1]["content"]
    return {"prompt": record["prompt"]}, record["completion"]


def sft_gold(model, tokenizer, task, records, demonstrations, *, max_new_tokens, seed, d, device, autocast):
    """Gold scores on held-out built-in prompts: SFT's greedy and sampled, an untrained model's, the demonstrations'."""
    net = distributed.unwrapped(model)
    ids = [encode_prompt(tokenizer, r, net.config.block_size - max_new_tokens) for r in records]
    gen = torch.Generator(device=device).manual_seed(seed + d.rank)
    kw = dict(max_new_tokens=max_new_tokens, generator=gen, d=d, autocast=autocast)

    def gold(responses):
        return sum(task.gold_score(r, s["text"], s["ended"]) for r, s in zip(records, responses)) / len(records)
    untrained = type(net)(net.config).to(device)
    demos = [split_sft_record(r) for r in demonstrations]
    return {"gold_greedy": gold(sample(model, tokenizer, ids, temperature=0.0, **kw)),
            "gold_sampled": gold(sample(model, tokenizer, ids, temperature=1.0, **kw)),
            "gold_untrained_greedy": gold(sample(untrained, tokenizer, ids, temperature=0.0, **kw)),
            "gold_demonstrations": sum(task.gold_score(p, c, True) for p, c in demos) / len(demos),
            "n_gold_prompts": len(records)}


@torch.no_grad()
def compare(policies, tokenizer, records, cfg, *, reference, reward_model, task, seed, d, autocast, n_examples=8):
    """The policies {name: model} answer the prompt records, sampled at cfg.temperature and greedy. A flat dict:
        n_prompts, temperature
        {name}_rm_score, {name}_kl, {name}_mean_length, {name}_ended   sampled responses; KL(policy || reference), nats
        {name}_gold_{mode}, {name}_exact_{mode}                        built-in tasks only, mode sampled / greedy
        win_rate_{name}_{mode}                                         gold win rate over the first policy (ties half)
        by_kind, by_kind_greedy                                        {kind: {n, {name}_{field}: mean of task.assess}}
        examples                                                       the first prompts, side by side"""
    names = list(policies)
    ids = [encode_prompt(tokenizer, r, reference.config.block_size - cfg.max_new_tokens) for r in records]
    gen = torch.Generator(device=reference.lm_head.weight.device).manual_seed(seed + d.rank)
    result = {"n_prompts": len(ids), "temperature": cfg.temperature}
    samples = {}
    for name, model in policies.items():
        for mode, t in (("sampled", cfg.temperature), ("greedy", 0.0)):
            samples[name, mode] = sample(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens, temperature=t,
                                         generator=gen, d=d, autocast=autocast)
        rs = samples[name, "sampled"]
        result[f"{name}_mean_length"] = sum(len(r["ids"]) + r["ended"] for r in rs) / len(rs)
        result[f"{name}_ended"] = sum(r["ended"] for r in rs) / len(rs)
        my_ids, my_rs = distributed.shard(ids, d), distributed.shard(rs, d)  # RM score and KL on its own samples
        scores = score_responses(reward_model, tokenizer, my_ids, my_rs, eos_penalty_score=cfg.eos_penalty_score,
                                 autocast=autocast)
        kls = [] if model is reference else response_kls(model, reference, tokenizer, my_ids, my_rs, cfg.temperature,
                                                         autocast)
        scores, kls = (distributed.unshard(distributed.all_gather_objects(x)) for x in (scores, kls))
        result[f"{name}_rm_score"] = sum(scores) / len(scores)
        result[f"{name}_kl"] = sum(kls) / len(kls) if kls else 0.0
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
        for key, mode in (("by_kind", "sampled"), ("by_kind_greedy", "greedy")):
            result[key] = by_kind(records, {name: assessed[name, mode] for name in names}, names[0], task)
    result["examples"] = []
    for i in range(min(n_examples, len(ids))):
        example = {"prompt": tokenizer.decode(ids[i])}
        for name in names:
            example[name] = samples[name, "sampled"][i]["text"]
            if assessed:
                example[f"{name}_gold"] = assessed[name, "sampled"][i]["gold"]
        result["examples"].append(example)
    return result


def response_kls(model, reference, tokenizer, prompts, responses, temperature, autocast, batch_size=256):
    """KL(model || reference) of each sampled response: the sum over its tokens of log pi - log pi_ref, as floats."""
    device, kls = reference.lm_head.weight.device, []
    for i in range(0, len(prompts), batch_size):
        seq, start, P, targets, _, _ = response_batch(prompts[i:i + batch_size], responses[i:i + batch_size],
                                                      tokenizer, device)
        with distributed.full_weights(model):
            lp = response_logprobs(distributed.unwrapped(model), seq, start, P, targets, temperature, autocast)
        lp_ref = response_logprobs(reference, seq, start, P, targets, temperature, autocast)
        kls += (lp - lp_ref).sum(1).tolist()
    return kls


def win_rate(gold_a, gold_b):
    """The share of prompts where a's response scores above b's, ties counting half."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_a, gold_b)) / len(gold_a)


def by_kind(records, assessed, baseline, task):
    """Per kind of prompt: the count, each policy's mean of each numeric assessment field and win rate over baseline."""
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


@torch.no_grad()
def ceiling(policy, reward_model, tokenizer, records, task, cfg, *, ns=(1, 4, 16), seed, autocast):
    """The reward model's ceiling: per n of ns, best-of-n from one draw of the policy: gold score, gold win rate over
    another sample (ties half), KL bound log n - (n - 1) / n; and the same n picked by gold (what a perfect reward
    model would pick). PPO below the first is held back by PPO; the first below the second, by the reward model."""
    ids = [encode_prompt(tokenizer, r, policy.config.block_size - cfg.max_new_tokens) for r in records]
    gen = torch.Generator(device=policy.lm_head.weight.device).manual_seed(seed)
    _, samples = best_of_n(policy, reward_model, tokenizer, ids, max(ns) + 1, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, generator=gen, autocast=autocast,
                           eos_penalty_score=cfg.eos_penalty_score, return_all=True)
    gold = [[task.gold_score(r, s["text"], s["ended"]) for s in group] for r, group in zip(records, samples)]
    out = {}
    for n in ns:  # sample 0 of each prompt is the policy's own answer to beat; best-of-n picks among the next n
        picks = [max(range(1, n + 1), key=lambda j: group[j]["score"]) for group in samples]  # the first of equals
        chosen, perfect = [g[j] for g, j in zip(gold, picks)], [max(g[1:n + 1]) for g in gold]
        out[n] = {"gold": sum(chosen) / len(chosen), "win_rate": win_rate(chosen, [g[0] for g in gold]),
                  "kl_bound": math.log(n) - (n - 1) / n, "gold_picked_gold": sum(perfect) / len(perfect),
                  "gold_picked_win_rate": win_rate(perfect, [g[0] for g in gold])}
    return {"n_prompts": len(records), "best_of_n": out}
