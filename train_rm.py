"""
Step 2 of InstructGPT: a reward model trained on labelers' rankings of the SFT model's samples.

The reward model is the SFT model with its language-model output replaced by a scalar head, read at
the final (EOS) token. For each prompt, K responses are ranked; all C(K, 2) pairs of one prompt go
into one batch element with one forward pass per response, not per pair (InstructGPT, section 3.5:
training on each pair separately overfits), with the loss -log sigmoid(r_better - r_worse) averaged
over the pairs. After training, a bias makes the SFT model's samples score 0 on average.

On the built-in tasks the comparisons are made here: K samples per prompt from the SFT checkpoint
(or any policy, --sample_from), ranked by a simulated labeler (Plackett-Luce on the gold scores, as
noisy as InstructGPT's labelers). The pieces are in minirlhf/reward.py.

    python train_rm.py                          # after train_sft.py; a few CPU minutes
    python train_rm.py --task=chat              # the dialogue task: replies ranked in their conversation
    python train_rm.py --data=comparisons.jsonl --eval_data=held_out.jsonl
    python train_rm.py --resume                 # continue the unfinished run in --out_dir
    python train_rm.py --help
"""
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf import config, distributed, optim, reward, runs
from minirlhf.checkpoint import load_checkpoint
from minirlhf.config import at_least_one, check, check_files
from minirlhf.data import encode_comparison, format_of, micro_batches
from minirlhf.sampling import sample
from minirlhf.tasks import get_task, labelers
from minirlhf.tokenizer import get_tokenizer


@dataclass
class Config(config.TrainOptions):
    """Reward modelling (InstructGPT step 2): Bradley-Terry loss on ranked responses."""
    out_dir: str = "out/rm"
    """where ckpt.pt, metrics.jsonl and summary.json are written"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the finished SFT checkpoint: the reward model starts from it (see init_from), its samples set the final bias"""
    init_from: str = ""
    """empty: the SFT model with a fresh scalar head; or a reward model checkpoint to go on training"""
    sample_from: str = ""
    """built-in data: the policy checkpoint whose samples are ranked (empty: the SFT checkpoint)"""
    tokenizer: str = ""
    """the tokenizer, when the one the checkpoints recorded has moved (the same vocabulary; empty: theirs)"""
    data: str = "builtin"
    """"builtin" (samples ranked by simulated labelers) or comma-separated JSONL files (minirlhf/jsonl.py)"""
    eval_data: str = ""
    """held-out comparisons JSONL (required when data is not builtin)"""
    n_prompts: int = 9000
    """built-in: training prompts, each with k ranked samples"""
    n_eval_prompts: int = 500
    """built-in: held-out prompts for the pairwise accuracy"""
    prompt_seed: int = -1
    """built-in: seed of the prompts drawn (-1: seed); fresh prompts for another round of comparisons"""
    k: int = 4
    """built-in: responses ranked per prompt (InstructGPT: 4 to 9)"""
    sample_temperature: float = 1.0
    """built-in: temperature of the samples to rank"""
    epochs: int = 2
    """passes over the comparisons (InstructGPT: 1, where data is plentiful; a small RM from scratch needs 2)"""
    batch_size: int = 32
    """prompts (each with all its responses and pairs) per step, over all ranks"""
    micro_batches: int = 1
    """forward and backward in up to this many parts of similar lengths, whose gradients add up: less padding"""
    n_bias_samples: int = 512
    """SFT samples whose mean reward the final bias sets to 0"""
    learning_rate: float = 5e-4  # the options of TrainOptions, with the RM's defaults
    min_lr: float = 5e-5
    warmup_iters: int = 20
    weight_decay: float = 0.0
    log_interval: int = 10
    eval_interval: int = 100

    def __post_init__(self):
        super().__post_init__()
        at_least_one(self, "n_prompts", "n_eval_prompts", "epochs", "batch_size", "micro_batches", "n_bias_samples")
        check(self, "k", lambda x: x >= 2, "at least 2 (a ranking compares responses)")
        check(self, "sample_temperature", lambda x: x >= 0, ">= 0 (0: greedy)")
        if self.data != "builtin" and not self.eval_data:
            raise ValueError("--eval_data is required with JSONL --data (held-out comparisons for the accuracy)")
        check_files(self, "data", "eval_data")


def main(cfg):
    d, device, autocast = distributed.setup(cfg)
    run = runs.Run(cfg, d, total_steps=None)  # the step count depends on the data; set below
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # data order and labelers: the same on every rank
    gen = torch.Generator(device=device).manual_seed(cfg.seed + d.rank)  # each rank samples its own responses
    task = get_task(cfg.task)

    # the reward model: the SFT model plus a scalar head, N(0, 1/sqrt(n_embd + 1)) (the N+ implementation details)
    kernels = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels, device=device)
    sft, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None,
                                        kind="policy", option="sft_ckpt", **kernels)
    sft.requires_grad_(False).eval()
    if run.ckpt is not None:
        model, _, _ = load_checkpoint(run.path, tokenizer, finished=False, **kernels)
    elif cfg.init_from:
        model, _, _ = load_checkpoint(cfg.init_from, tokenizer, kind="reward", option="init_from", **kernels)
    else:
        model, _, _ = load_checkpoint(cfg.sft_ckpt, tokenizer, scalar_head=True, **kernels)
    block_size = model.config.block_size

    # 1. the comparisons: (prompt ids, [response ids + EOS], ranking best first) per prompt
    labeler_agreement = gold_pairs_agreement = eval_gold = None
    if cfg.data == "builtin":
        policy = sft if not cfg.sample_from else \
            load_checkpoint(cfg.sample_from, tokenizer, kind="policy", option="sample_from", **kernels)[0]
        prompt_seed = cfg.seed if cfg.prompt_seed < 0 else cfg.prompt_seed

        def ranked(n, split):
            """n prompts of the split with k samples each, ranked by a simulated labeler; and the gold scores."""
            return reward.comparisons(policy, tokenizer, task.prompt_records(n, split, prompt_seed), task, rng, k=cfg.k,
                                      temperature=cfg.sample_temperature, max_new_tokens=cfg.max_new_tokens, gen=gen,
                                      d=d, autocast=autocast)
        t0 = time.time()
        train, _ = ranked(cfg.n_prompts, "train")
        run.info["data_format"] = format_of(task.prompt_records(1, "train", prompt_seed))
        evals, eval_gold = ranked(cfg.n_eval_prompts, cfg.eval_split)
        # the ceiling: how often a second, independent labeler agrees with the first on the held-out pairs
        labeler_agreement = labelers.labeler_agreement(eval_gold, random.Random(cfg.seed + 1), task.LABELER_TEMPERATURE)
        gold_pairs_agreement = labelers.gold_agreement(eval_gold, random.Random(cfg.seed + 2), task.LABELER_TEMPERATURE)
        print(f"sampled and ranked {cfg.k} responses for {len(train)} + {len(evals)} prompts "
              f"in {time.time() - t0:.0f}s; two labelers agree on {labeler_agreement:.1%} of held-out pairs")
    else:  # the user's JSONL files, checked record by record
        from minirlhf.jsonl import read_comparisons
        records = read_comparisons(cfg.data)
        run.info["data_format"] = format_of(records)
        train = [encode_comparison(tokenizer, r, block_size) for r in records]
        evals = [encode_comparison(tokenizer, r, block_size) for r in read_comparisons(cfg.eval_data)]
    n_pairs = sum(len(reward.ranking_pairs(r)) for _, _, r in train)
    print(f"data: {len(train)} ranked prompts ({n_pairs} pairs) for training, {len(evals)} held out")

    train_model = distributed.wrap(model, d, cfg.fsdp)
    optimizer = optim.adamw(train_model, cfg.learning_rate, cfg.weight_decay, cfg.adam_eps, cfg.fsdp)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    run.total = max_iters = cfg.epochs * steps_per_epoch
    run.restore([train_model], [optimizer], rng, gen)

    def accuracy(groups, gold=None):
        return reward.accuracy(train_model, groups, tokenizer, device=device, autocast=autocast, d=d, gold=gold)

    # 2. training: one loss per prompt over all of its pairs, the prompts of a batch weighing alike
    progress, seen_pairs, window, it = runs.Progress(max_iters, run.step), 0, [], run.step
    if run.ckpt is None:
        print(f"held-out accuracy before training: {accuracy(evals)[0]:.3f}")
    model.train()
    for epoch in range(it // steps_per_epoch, cfg.epochs):
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)  # each epoch's order from its own seed: resumable mid-epoch
        for i in range((it - epoch * steps_per_epoch) * cfg.batch_size, len(order), cfg.batch_size):
            groups = [train[j] for j in order[i:i + cfg.batch_size]]
            lr = optim.lr_at(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, max_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            parts = micro_batches(distributed.shard(groups, d), cfg.micro_batches,
                                  lambda g: len(g[0]) + max(map(len, g[1])))  # this rank's groups, by longest sequence
            loss = agree = step_pairs = 0.0
            for m, part in enumerate(parts):  # the gradients add up; the ranks reduce them after the last part
                with distributed.grad_sync(train_model, m == len(parts) - 1):
                    _, better, worse, weights = reward.comparison_batch(part)
                    better, worse, weights = better.to(device), worse.to(device), weights.to(device)
                    r = reward.rewards(train_model, part, tokenizer.pad_id, device, autocast)
                    part_loss = (weights * reward.pairwise_loss(r[better], r[worse])).sum() / len(groups) * d.world
                    part_loss.backward()
                loss += part_loss.detach()
                agree += (r[better] > r[worse]).sum() + 0.5 * (r[better] == r[worse]).sum()
                step_pairs += len(better)
            stepped, _ = optim.step(train_model.parameters(), [optimizer], cfg.grad_clip)
            run.skips.record(stepped, f"step {it + 1}")
            it += 1
            seen_pairs += step_pairs * d.world
            # this rank's part of the loss, its agreeing pairs and its pairs; read at the log interval
            window.append(torch.stack([loss / d.world, agree.float(), torch.tensor(float(step_pairs), device=device)]))
            if it % cfg.log_interval == 0 or it == max_iters:
                loss_sum, agree_sum, n = distributed.all_sum(torch.stack(window).sum(0)).tolist()
                row = {"step": it, "epoch": epoch, "train/loss": loss_sum / len(window),
                       "train/accuracy": agree_sum / max(n, 1), "train/lr": lr, "train/skipped_steps": run.skips.total,
                       "time": run.seconds()}
                window = []
                if it % cfg.eval_interval == 0 or it == max_iters:
                    row["eval/accuracy"] = accuracy(evals)[0]
                run.metrics.append(row)
                if "eval/accuracy" in row:
                    run.save(it, [train_model], [optimizer], tokenizer, rng, gen)
                shown = {"loss": row["train/loss"], "acc": row["train/accuracy"]}
                if "eval/accuracy" in row:
                    shown["eval_acc"] = row["eval/accuracy"]
                print(progress.line(it, seen_pairs, unit="pairs", **shown))

    # 3. normalize: the bias that makes the SFT model's samples score 0 on average (InstructGPT, section 3.5)
    model.eval()
    bias_prompts = [prompt for prompt, _, _ in random.Random(cfg.seed + 3).sample(train, min(cfg.n_bias_samples,
                                                                                            len(train)))]
    budget = min(cfg.max_new_tokens, block_size - max(map(len, bias_prompts)) - 1)  # room for the EOS appended
    if budget < 1:
        raise ValueError(f"the longest training prompt ({max(map(len, bias_prompts))} tokens) leaves no room for a "
                         f"response in block_size={block_size}")
    samples = sample(sft, tokenizer, bias_prompts, max_new_tokens=budget, temperature=cfg.sample_temperature,
                     generator=torch.Generator(device=device).manual_seed(cfg.seed + 4 + d.rank), d=d,
                     autocast=autocast)
    seqs = [p + s["ids"] + [tokenizer.eos_id] for p, s in zip(bias_prompts, samples)]

    def mean_reward():
        with torch.no_grad(), distributed.full_weights(train_model):
            mine = distributed.shard(seqs, d)
            total = sum(reward.rewards_at_eos(train_model, mine[i:i + 128], tokenizer.pad_id, device, autocast).sum()
                        for i in range(0, len(mine), 128))
        return (distributed.all_sum(torch.as_tensor(total, device=device, dtype=torch.float32)) / len(seqs)).item()
    before = mean_reward()
    with torch.no_grad():
        model.score_head.bias.sub_(before)  # a Python float: fine for a sharded (DTensor) bias too
    after = mean_reward()
    print(f"reward bias set: SFT samples scored {before:+.3f} on average, now {after:+.2e}")
    acc, gold_acc = accuracy(evals, eval_gold)

    summary = {"steps": it, "eval_accuracy": acc, "labeler_agreement": labeler_agreement,
               "labeler_gold_agreement": gold_pairs_agreement, "sft_mean_reward_before_bias": before,
               "sft_mean_reward_after_bias": after, "skipped_steps": run.skips.total,
               "n_train_prompts": len(train), "n_eval_prompts": len(evals), "n_train_pairs": n_pairs,
               "checkpoint": run.path}
    if eval_gold is not None:
        # and against the truth: the share of held-out pairs with different gold scores ordered right
        summary["eval_gold_accuracy"] = gold_acc
        print(f"held-out pairwise accuracy: {acc:.1%} against the labelers (two labelers agree on "
              f"{labeler_agreement:.1%}), {gold_acc:.1%} against the gold scores")
    else:
        print(f"held-out pairwise accuracy: {acc:.1%}")
    summary["total_seconds"] = run.seconds()
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), {"config": asdict(cfg), **summary})
    run.save(it, [train_model], [], tokenizer, rng, finished=True)
    print(f"done in {runs.format_eta(summary['total_seconds'])}: {run.path}, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    config.main(main, Config, "train_rm.py", "rm")
