"""
Step 2 of InstructGPT: a reward model trained on labelers' rankings of the SFT model's samples.

The reward model is the SFT model with its language-model output replaced by a scalar head, read at
the final (EOS) token. For each prompt, K responses are ranked; all C(K, 2) pairs of one prompt go
into one batch element with one forward pass per response, not per pair (InstructGPT, section 3.5:
training on each pair separately overfits), with the loss -log sigmoid(r_better - r_worse) averaged
over the pairs. After training, a bias makes the SFT model's samples score 0 on average.

On the built-in task the comparisons are made here: K samples per prompt from the SFT checkpoint,
ranked by a simulated labeler (Bradley-Terry on the gold scores, as noisy as InstructGPT's labelers).

    python train_rm.py                          # after train_sft.py; a few CPU minutes
    python train_rm.py --data=comparisons.jsonl --eval_data=held_out.jsonl
    python train_rm.py --help
"""
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf.tasks import instruct as tasks
from minirlhf.tasks import labelers
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.cli import check_at_least_one, print_config, run, setup_device
from minirlhf.data import encode_comparison, read_comparisons
from minirlhf.rl import pairwise_loss, ranking_pairs
from minirlhf.sampling import Progress, format_eta, sample_responses
from minirlhf.scoring import comparison_batch, rewards_at_eos


@dataclass
class Config:
    """Reward modelling (InstructGPT step 2): Bradley-Terry loss on ranked responses."""
    out_dir: str = "out/rm"
    """where ckpt.pt, metrics.jsonl and summary.json are written"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT checkpoint: the reward model starts from it, and on the built-in task samples the responses to rank"""
    data: str = "builtin"
    """"builtin" (SFT samples ranked by simulated labelers) or comma-separated JSONL files of {"prompt", "chosen", "rejected"} or {"prompt", "responses", "ranking"} records"""
    eval_data: str = ""
    """held-out comparisons JSONL (required when data is not builtin)"""
    n_prompts: int = 3000
    """built-in: training prompts, each with k ranked SFT samples"""
    n_eval_prompts: int = 500
    """built-in: held-out prompts for the pairwise accuracy"""
    k: int = 4
    """built-in: responses ranked per prompt (InstructGPT: 4 to 9)"""
    sample_temperature: float = 1.0
    """built-in: temperature of the SFT samples to rank"""
    max_new_tokens: int = 24
    """built-in: response budget of the SFT samples"""
    epochs: int = 2
    """passes over the comparisons (InstructGPT: 1, where data is plentiful; a small RM from scratch needs 2)"""
    batch_size: int = 32
    """prompts (each with all its responses and pairs) per step"""
    learning_rate: float = 5e-4
    """peak learning rate (AdamW), linear warmup then cosine decay to a tenth"""
    warmup_iters: int = 20
    """linear warmup steps"""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices"""
    adam_eps: float = 1e-5
    """Adam epsilon (the N+ implementation details)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    n_bias_samples: int = 512
    """SFT samples whose mean reward the final bias sets to 0"""
    log_interval: int = 10
    """steps between progress lines"""
    eval_interval: int = 50
    """steps between held-out accuracy measurements and checkpoints"""
    seed: int = 1337
    """seed of the sampling, the labelers and the data order"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, ..."""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    def __post_init__(self):
        check_at_least_one(self, "n_prompts", "n_eval_prompts", "epochs", "batch_size", "log_interval", "eval_interval",
                           "max_new_tokens")
        if self.k < 2:
            raise ValueError(f"--k must be at least 2 (a ranking compares responses), got {self.k}")
        if self.data != "builtin" and not self.eval_data:
            raise ValueError("--eval_data is required with JSONL --data (held-out comparisons for the accuracy)")


def main(cfg):
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    # the reward model: the SFT model plus a scalar head, N(0, 1/sqrt(n_embd + 1)) (the N+ implementation details)
    sft, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, device=device)
    model, _, _ = load_checkpoint(cfg.sft_ckpt, tokenizer, device=device, scalar_head=True)
    block_size = model.config.block_size
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    # 1. the comparisons: {"prompt", "responses", "ranking"} records
    labeler_agreement = gold_pairs_agreement = None
    if cfg.data == "builtin":
        def ranked_samples(n, split):
            """(prompt ids, [response ids + EOS], ranking) of n prompts, and each group's gold scores."""
            prompts = [r["prompt"] for r in tasks.prompt_records(n, split, cfg.seed)]
            ids = [tokenizer.encode(p) for p in prompts]
            responses = sample_responses(sft, tokenizer, [i for i in ids for _ in range(cfg.k)],
                                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                                         generator=gen)
            groups, score_groups = [], []
            for i, p in enumerate(prompts):
                group = responses[i * cfg.k:(i + 1) * cfg.k]
                scores = [tasks.gold_score(p, r["text"], r["ended"]) for r in group]
                # token ids, not text: a sample need not be valid UTF-8, so its text may not encode back to it
                groups.append((ids[i], [r["ids"] + [tokenizer.eos_id] for r in group], labelers.rank(scores, rng, tasks.LABELER_TEMPERATURE)))
                score_groups.append(scores)
            return groups, score_groups
        t0 = time.time()
        train, _ = ranked_samples(cfg.n_prompts, "train")
        evals, eval_groups = ranked_samples(cfg.n_eval_prompts, "eval")
        # the ceiling: how often a second, independent labeler agrees with the first on the held-out pairs
        labeler_agreement = labelers.labeler_agreement(eval_groups, random.Random(cfg.seed + 1), tasks.LABELER_TEMPERATURE)
        gold_pairs_agreement = labelers.gold_agreement(eval_groups, random.Random(cfg.seed + 2), tasks.LABELER_TEMPERATURE)
        print(f"sampled and ranked {cfg.k} SFT responses for {len(train)} + {len(evals)} prompts "
              f"in {time.time() - t0:.0f}s; two labelers agree on {labeler_agreement:.1%} of held-out pairs")
    else:
        train = [encode_comparison(tokenizer, r, block_size) for path in cfg.data.split(",") for r in read_comparisons(path)]
        evals = [encode_comparison(tokenizer, r, block_size) for path in cfg.eval_data.split(",") for r in read_comparisons(path)]
    n_pairs = sum(len(ranking_pairs(r)) for _, _, r in train)
    print(f"data: {len(train)} ranked prompts ({n_pairs} pairs) for training, {len(evals)} held out")

    def rewards_of(groups):
        """The rewards of every response of the groups (one forward pass per response, not per pair),
        the (better, worse) index pairs of every group's ranking, and each pair's weight."""
        seqs, better, worse, weights = comparison_batch(groups)
        return (rewards_at_eos(model, seqs, tokenizer.pad_id, device, autocast), better.to(device), worse.to(device),
                weights.to(device))

    @torch.no_grad()
    def evaluate():
        """Share of held-out pairs that the reward model orders as the labeler did."""
        model.eval()
        agree = total = 0
        for i in range(0, len(evals), 64):
            rewards, better, worse, _ = rewards_of(evals[i:i + 64])
            agree += (rewards[better] > rewards[worse]).sum().item() + 0.5 * (rewards[better] == rewards[worse]).sum().item()
            total += len(better)
        model.train()
        return agree / total

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.99), eps=cfg.adam_eps, fused=True)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    max_iters = cfg.epochs * steps_per_epoch

    def lr_at(it):
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / cfg.warmup_iters
        progress = (it - cfg.warmup_iters) / max(max_iters - cfg.warmup_iters, 1)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    # 2. training: one loss per prompt over all of its pairs
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    metrics_file = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "w")
    progress, it, seen_pairs, window = Progress(max_iters), 0, 0, []
    print(f"held-out accuracy before training: {evaluate():.3f}")
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            groups = [train[j] for j in order[i:i + cfg.batch_size]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(it)
            rewards, better, worse, weights = rewards_of(groups)
            loss = (weights * pairwise_loss(rewards[better], rewards[worse])).sum() / len(groups)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            it += 1
            seen_pairs += len(better)
            agree = (rewards[better] > rewards[worse]).float() + 0.5 * (rewards[better] == rewards[worse]).float()
            # a tie (identical responses) counts half; no device sync per step: read at the log interval
            window.append(torch.stack([loss.detach(), agree.mean()]))
            if it % cfg.log_interval == 0 or it == max_iters:
                mean_loss, mean_acc = torch.stack(window).mean(0).tolist()
                row = {"step": it, "epoch": epoch, "train/loss": mean_loss,
                       "train/accuracy": mean_acc, "train/lr": lr_at(it - 1),
                       "time": time.time() - t_start}
                window = []
                if it % cfg.eval_interval == 0 or it == max_iters:
                    row["eval/accuracy"] = evaluate()
                    save_checkpoint(ckpt_path, model, tokenizer, cfg, it, metrics=row)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                shown = {"loss": row["train/loss"], "acc": row["train/accuracy"]}
                if "eval/accuracy" in row:
                    shown["eval_acc"] = row["eval/accuracy"]
                print(progress.line(it, seen_pairs, unit="pairs", **shown))
    metrics_file.close()

    # 3. normalize: the bias that makes the SFT model's samples score 0 on average (InstructGPT, section 3.5)
    bias_prompts = [prompt for prompt, _, _ in rng.sample(train, min(cfg.n_bias_samples, len(train)))]
    samples = sample_responses(sft, tokenizer, bias_prompts, max_new_tokens=min(cfg.max_new_tokens, block_size - max(map(len, bias_prompts))),
                               temperature=cfg.sample_temperature, generator=gen)
    with torch.no_grad():
        model.eval()
        seqs = [p + s["ids"] + [tokenizer.eos_id] for p, s in zip(bias_prompts, samples)]
        mean_reward = torch.cat([rewards_at_eos(model, seqs[i:i + 128], tokenizer.pad_id, device, autocast)
                                 for i in range(0, len(seqs), 128)]).mean()
        model.score_head.bias -= mean_reward
    accuracy = evaluate()
    save_checkpoint(ckpt_path, model, tokenizer, cfg, it, metrics={"eval/accuracy": accuracy})
    print(f"reward bias set: SFT samples scored {mean_reward.item():+.3f} on average, now 0")

    summary = {"steps": it, "eval_accuracy": accuracy, "labeler_agreement": labeler_agreement,
               "labeler_gold_agreement": gold_pairs_agreement, "sft_mean_reward_before_bias": mean_reward.item(),
               "n_train_prompts": len(train), "n_eval_prompts": len(evals), "n_train_pairs": n_pairs,
               "checkpoint": ckpt_path, "total_seconds": time.time() - t_start}
    if cfg.data == "builtin":
        # and against the truth: the share of held-out pairs with different gold scores ordered right
        with torch.no_grad():
            model.eval()
            right = total = 0
            for i in range(0, len(evals), 64):
                rewards, better, worse, _ = rewards_of(evals[i:i + 64])
                gold = torch.tensor([s for g in eval_groups[i:i + 64] for s in g], device=device)
                differ = gold[better] != gold[worse]
                right += ((rewards[better] > rewards[worse]) == (gold[better] > gold[worse]))[differ].sum().item()
                total += differ.sum().item()
        summary["eval_gold_accuracy"] = right / max(total, 1)
        print(f"held-out pairwise accuracy: {accuracy:.1%} against the labelers (two labelers agree on "
              f"{labeler_agreement:.1%}), {summary['eval_gold_accuracy']:.1%} against the gold scores")
    else:
        print(f"held-out pairwise accuracy: {accuracy:.1%}")
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump({"config": asdict(cfg), **summary}, f, indent=2)
    print(f"done in {format_eta(summary['total_seconds'])}: {ckpt_path}, {cfg.out_dir}/summary.json")


if __name__ == "__main__":
    run(main, Config, "train_rm.py")
