"""
Held-out evaluation: several policies answer the same prompts, and what tells them apart is
measured on every response: the reward model's score (with the EOS trick, as in training), the KL
to a reference policy, the length, and on the built-in tasks the gold score (what the labelers
really want) with the task's per-response assessment (minirlhf/tasks: exact, refused, ...), so a
report can break the totals down by kind of prompt (task kind, dialogue behaviour).

Used by train_sft.py (SFT's gold score), train_ppo.py (the SFT vs PPO report), the rounds and the
experiments. Under torchrun the prompts are split over the ranks and the results gathered on all.
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
    """SFT's summary on held-out built-in prompts: the gold score of greedy and sampled (T = 1)
    responses, with an untrained model of the same shape and the demonstrations themselves for scale."""
    ids = [encode_prompt(tokenizer, r, distributed.unwrapped(model).config.block_size - max_new_tokens)
           for r in records]
    gen = torch.Generator(device=device).manual_seed(seed + d.rank)
    kw = dict(max_new_tokens=max_new_tokens, generator=gen, d=d, autocast=autocast)

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
def compare(policies, tokenizer, records, cfg, *, reference, reward_model, task, seed, d, autocast, n_examples=8):
    """The policies {name: model} answer the held-out prompt records, sampled at cfg.temperature (the
    policies as trained) and greedy, with cfg.max_new_tokens. Returns a flat dict:
        n_prompts, temperature
        {name}_rm_score, {name}_mean_length, {name}_ended       on the sampled responses
        {name}_kl                                             KL(policy || reference) per response, nats
        {name}_gold_{mode}, {name}_exact_{mode}               built-in tasks, mode sampled / greedy
        win_rate_{name}_{mode}                                gold win rate over the first policy (ties half)
        by_kind, by_kind_greedy                               {kind: {n, {name}_{field}: mean of task.assess}}
        examples                                              the first prompts, side by side
    KL and RM scores are per response; gold is None where the prompts are not the task's."""
    names = list(policies)
    device = reference.lm_head.weight.device
    ids = [encode_prompt(tokenizer, r, reference.config.block_size - cfg.max_new_tokens) for r in records]
    gen = torch.Generator(device=device).manual_seed(seed + d.rank)
    result = {"n_prompts": len(ids), "temperature": cfg.temperature}
    samples = {}
    for name, model in policies.items():
        for mode, t in (("sampled", cfg.temperature), ("greedy", 0.0)):
            samples[name, mode] = sample(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens, temperature=t,
                                         generator=gen, d=d, autocast=autocast)
        rs = samples[name, "sampled"]
        result[f"{name}_mean_length"] = sum(len(r["ids"]) + r["ended"] for r in rs) / len(rs)
        result[f"{name}_ended"] = sum(r["ended"] for r in rs) / len(rs)
        # the reward model's score, with the EOS trick as in training, and KL(policy || reference) per
        # response: the sum over its tokens of log pi - log pi_ref, on the policy's own samples
        my_ids, my_rs = distributed.shard(ids, d), distributed.shard(rs, d)
        scores = score_responses(reward_model, tokenizer, my_ids, my_rs, eos_penalty_score=cfg.eos_penalty_score,
                                 autocast=autocast)
        kls = [] if model is reference else response_kls(model, reference, tokenizer, my_ids, my_rs, cfg.temperature,
                                                         autocast)
        scores = distributed.unshard(distributed.all_gather_objects(scores))
        kls = distributed.unshard(distributed.all_gather_objects(kls))
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
        result["by_kind"] = by_kind(records, {name: assessed[name, "sampled"] for name in names}, names[0], task)
        result["by_kind_greedy"] = by_kind(records, {name: assessed[name, "greedy"] for name in names}, names[0],
                                           task)
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
    """KL(model || reference) of each sampled response (a sampling.sample dict) to its prompt: the sum
    over its tokens of log pi - log pi_ref, at the sampling temperature. A list of floats."""
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


@torch.no_grad()
def ceiling(policy, reward_model, tokenizer, records, task, cfg, *, ns=(1, 4, 16), seed, autocast):
    """The reward model's ceiling: best-of-n from the policy ranked by the reward model (Nakano et al.
    2021; Gao et al. 2022), each n of ns from the first n of one draw of max(ns) samples per prompt, on the
    prompt records (the task's: gold judges). Per n: the gold score, the gold win rate over another sample
    of the policy (ties half; about 1/2 at n = 1) and the KL bound log n - (n - 1) / n. PPO that stays
    below it is held back by the reward model, not by its optimization."""
    ids = [encode_prompt(tokenizer, r, policy.config.block_size - cfg.max_new_tokens) for r in records]
    gen = torch.Generator(device=policy.lm_head.weight.device).manual_seed(seed)
    _, samples = best_of_n(policy, reward_model, tokenizer, ids, max(ns) + 1, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, generator=gen, autocast=autocast,
                           eos_penalty_score=cfg.eos_penalty_score, return_all=True)
    gold = [[task.gold_score(r, s["text"], s["ended"]) for s in group] for r, group in zip(records, samples)]
    out = {}
    for n in ns:  # sample 0 of each prompt is the policy's own answer to beat; best-of-n picks among the next n
        picks = [max(range(1, n + 1), key=lambda j: group[j]["score"]) for group in samples]  # the first of equals
        chosen = [g[j] for g, j in zip(gold, picks)]
        out[n] = {"gold": sum(chosen) / len(chosen), "win_rate": win_rate(chosen, [g[0] for g in gold]),
                  "kl_bound": math.log(n) - (n - 1) / n}
    return {"n_prompts": len(records), "best_of_n": out}
