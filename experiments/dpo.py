"""
DPO (Rafailov et al. 2023) as a baseline: the SFT policy trained straight on the reward model's comparisons, with no
reward model and no sampling. Each K-way ranking counts as its C(K, 2) (chosen, rejected) pairs, weighted 1 / C(K, 2)
as train_rm.py weighs them; the frozen SFT policy is the reference:

    loss = -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

The comparisons are exactly the ones the reward model at --rm_ckpt trained on: its own JSONL files, or, for the
built-in data, remade with its seeds and options (checked against its summary: the held-out labelers' agreement).
At the end SFT and DPO answer the same held-out prompts, as train_ppo.py's report does.

    python experiments/dpo.py                                   # on the default run's out/sft and out/rm
    python experiments/dpo.py --beta=0.3 --out_dir=out/dpo_b03
"""
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import common
import torch
import torch.nn.functional as F

from minirlhf import config, evaluate, optim, reward
from minirlhf.checkpoint import read_checkpoint, save_checkpoint
from minirlhf.config import check
from minirlhf.data import encode_comparison, sft_batch
from minirlhf.runs import write_json
from minirlhf.tasks import get_task, labelers


@dataclass
class Config(common.ExperimentOptions):
    """DPO from the SFT policy on the reward model's comparisons; the report compares it with SFT."""
    out_dir: str = "out/dpo"
    """where ckpt.pt (the DPO policy) and summary.json go"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT policy: the start and the frozen reference"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the reward model whose comparisons DPO trains on (and whose score the report shows)"""
    beta: float = 0.1
    """DPO's beta: the strength of the implicit KL to the reference (larger: closer to SFT)"""
    learning_rate: float = 1e-4
    """peak AdamW learning rate (warmup, then cosine decay to a tenth)"""
    warmup_iters: int = 10
    """linear warmup steps"""
    epochs: int = 2
    """passes over the comparisons"""
    batch_size: int = 32
    """ranked prompts (each with all its pairs) per step"""
    n_eval: int = 500
    """held-out prompts in the final SFT vs DPO comparison"""
    temperature: float = 1.0
    """sampling temperature of the comparison"""
    max_new_tokens: int = 24
    """response budget of the comparison's samples"""
    eos_penalty_score: float = -1.0
    """the reward model's score of a response that never ends, in the report"""

    def __post_init__(self):
        super().__post_init__()
        check(self, ("beta", "learning_rate", "temperature"), lambda x: x > 0, "> 0")
        check(self, ("epochs", "batch_size", "n_eval", "max_new_tokens"), lambda x: x >= 1, "at least 1")
        check(self, "warmup_iters", lambda x: x >= 0, ">= 0")


def rm_comparisons(rm_path, sft, tokenizer, task, device, autocast):
    """(train, eval) ranked groups the reward model at rm_path was trained and measured on, as train_rm.py made them."""
    rm = read_checkpoint(rm_path, mmap=True, option="rm_ckpt")
    rc = rm["train_config"]
    block_size = sft.config.block_size
    if rc["data"] != "builtin":
        from minirlhf.jsonl import read_comparisons
        return [[encode_comparison(tokenizer, r, block_size) for r in read_comparisons(paths)]
                for paths in (rc["data"], rc["eval_data"])]
    if rc["sample_from"]:
        raise ValueError(f"--rm_ckpt={rm_path} ranked samples of {rc['sample_from']}, not of the SFT policy: DPO "
                         f"here remakes only comparisons of SFT samples")
    rng = random.Random(rc["seed"])  # the streams of train_rm.py, in its order: train, then eval
    gen = torch.Generator(device=device).manual_seed(rc["seed"])
    seed = rc["seed"] if rc["prompt_seed"] < 0 else rc["prompt_seed"]
    groups = [reward.comparisons(sft, tokenizer, task.prompt_records(n, split, seed), task, rng, k=rc["k"],
                                 temperature=rc["sample_temperature"], max_new_tokens=rc["max_new_tokens"], gen=gen,
                                 d=common.ONE_PROCESS, autocast=autocast)
              for n, split in ((rc["n_prompts"], "train"), (rc["n_eval_prompts"], "eval"))]
    agreement = labelers.labeler_agreement(groups[1][1], random.Random(rc["seed"] + 1), task.LABELER_TEMPERATURE)
    saved = common.summary_of(rm_path).get("labeler_agreement")
    if saved is not None and agreement != saved:
        raise ValueError(f"--rm_ckpt={rm_path}: its comparisons could not be remade here (labelers agree on "
                         f"{agreement:.4f} of held-out pairs, {saved:.4f} in its summary): run DPO with the device "
                         f"and --threads that train_rm.py ran with")
    return groups[0][0], groups[1][0]


def pair_batch(groups, pad_id):
    """(idx, targets) of every response of the groups after its prompt (loss on the response and its EOS), and each
    pair's chosen and rejected index and weight, as reward.comparison_batch pairs them."""
    seqs, chosen, rejected, weights = reward.comparison_batch(groups)
    examples = []
    for prompt, responses, _ in groups:
        examples += [(prompt + r, [0] * len(prompt) + [1] * len(r)) for r in responses]
    idx, targets = sft_batch(examples, pad_id)
    return idx, targets, chosen, rejected, weights


def sequence_logprobs(model, idx, targets):
    """log pi(response | prompt) of each row: the sum of its response tokens' log-probs."""
    return model(idx, targets=targets).sum(1)


def dpo_loss(logp, ref_logp, chosen, rejected, weights, beta):
    """The DPO loss of the pairs (weights sum to 1 per prompt), and each pair's implicit reward margin."""
    margin = beta * ((logp[chosen] - ref_logp[chosen]) - (logp[rejected] - ref_logp[rejected]))
    return (weights * -F.logsigmoid(margin)).sum(), margin


def main(cfg):
    device, autocast = common.setup(cfg)
    torch.manual_seed(cfg.seed)
    sft, tokenizer = common.load(cfg, cfg.sft_ckpt, device)
    policy = common.load(cfg, cfg.sft_ckpt, device, tokenizer)[0].requires_grad_(True).train()
    reward_model = common.load(cfg, cfg.rm_ckpt, device, tokenizer)[0]
    task = get_task(read_checkpoint(cfg.rm_ckpt, mmap=True)["train_config"]["task"])
    train, evals = rm_comparisons(cfg.rm_ckpt, sft, tokenizer, task, device, autocast)
    n_pairs = sum(len(reward.ranking_pairs(r)) for _, _, r in train)
    print(f"DPO on {len(train)} ranked prompts ({n_pairs} pairs), {len(evals)} held out; beta {cfg.beta}")

    def batches(groups):
        for i in range(0, len(groups), cfg.batch_size):
            idx, targets, chosen, rejected, weights = pair_batch(groups[i:i + cfg.batch_size], tokenizer.pad_id)
            yield i, idx.to(device), targets.to(device), chosen.to(device), rejected.to(device), weights.to(device)

    @torch.no_grad()
    def held_out():
        """The held-out loss per prompt, and the share of pairs the policy's implicit reward orders right."""
        policy.eval()
        loss = right = pairs = 0.0
        for _, idx, targets, chosen, rejected, weights in batches(evals):
            with autocast():
                part, margin = dpo_loss(sequence_logprobs(policy, idx, targets), sequence_logprobs(sft, idx, targets),
                                        chosen, rejected, weights, cfg.beta)
            loss, right, pairs = loss + part.item(), right + (margin > 0).sum().item(), pairs + len(margin)
        policy.train()
        return loss / len(evals), right / pairs

    optimizer = optim.adamw(policy, cfg.learning_rate, 0.0, 1e-8, fsdp=False)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    rows, step, t0 = [], 0, time.time()
    eval_loss, eval_acc = held_out()
    rows.append({"step": 0, "eval/loss": eval_loss, "eval/accuracy": eval_acc})
    print(f"step 0: held-out loss {eval_loss:.4f} (log 2 = {math.log(2):.4f}), accuracy {eval_acc:.3f}")
    for epoch in range(cfg.epochs):
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)
        for i, idx, targets, chosen, rejected, weights in batches([train[j] for j in order]):
            lr = optim.lr_at(step, cfg.learning_rate, cfg.learning_rate / 10, cfg.warmup_iters, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.no_grad(), autocast():
                ref_logp = sequence_logprobs(sft, idx, targets)
            with autocast():
                loss, margin = dpo_loss(sequence_logprobs(policy, idx, targets), ref_logp, chosen, rejected, weights,
                                        cfg.beta)
            n_groups = min(cfg.batch_size, len(train) - i)
            optimizer.zero_grad(set_to_none=True)
            (loss / n_groups).backward()
            stepped, _ = optim.step(policy.parameters(), [optimizer], 1.0)
            step += 1
            row = {"step": step, "epoch": epoch, "train/loss": loss.item() / n_groups, "train/lr": lr,
                   "train/accuracy": (margin > 0).float().mean().item(), "train/skipped": not stepped}
            if step % 20 == 0 or step == steps:
                row["eval/loss"], row["eval/accuracy"] = held_out()
                print(f"step {step}/{steps} | loss {row['train/loss']:.4f} | held-out loss {row['eval/loss']:.4f}, "
                      f"accuracy {row['eval/accuracy']:.3f} | {time.time() - t0:.0f}s")
            rows.append(row)

    eval_prompts = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    result = evaluate.compare({"sft": sft, "dpo": policy.eval()}, tokenizer, eval_prompts, cfg, reference=sft,
                              reward_model=reward_model, task=task, seed=cfg.seed + 3, d=common.ONE_PROCESS,
                              autocast=autocast)
    summary = {**result, "n_train_prompts": len(train), "n_train_pairs": n_pairs, "steps": step,
               "train_seconds": time.time() - t0, "curve": rows, "config": asdict(cfg)}
    os.makedirs(cfg.out_dir, exist_ok=True)
    save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), policy, tokenizer, cfg, step)
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))}, indent=1))
    print(f"done: {cfg.out_dir}/ckpt.pt, {cfg.out_dir}/summary.json")


if __name__ == "__main__":
    config.main(main, Config, "experiments/dpo.py")
