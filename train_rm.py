"""
Step 2 of InstructGPT: a reward model trained on labelers' rankings of the SFT model's samples.

The reward model is the SFT model with its language-model output replaced by a scalar head, read at
the final (EOS) token. For each prompt, K responses are ranked; all C(K, 2) pairs of one prompt go
into one batch element with one forward pass per response, not per pair (InstructGPT, section 3.5:
training on each pair separately overfits), with the loss -log sigmoid(r_better - r_worse) averaged
over the pairs. After training, a bias makes the SFT model's samples score 0 on average.

On the built-in tasks the comparisons are made here: K samples per prompt from the SFT checkpoint
(or any policy, --sample_from), ranked by a simulated labeler (Plackett-Luce on the gold scores, as
noisy as InstructGPT's labelers).

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

from minirlhf import distributed, evaluate, runs
from minirlhf.checkpoint import load_checkpoint, require_finished, save_checkpoint
from minirlhf.cli import RunOptions, check, check_at_least_one, check_files, print_config, run, setup_device
from minirlhf.data import encode_comparison, micro_batches, read_comparisons
from minirlhf.rl import pairwise_loss, ranking_pairs
from minirlhf.sampling import Progress, format_eta
from minirlhf.scoring import comparison_batch, group_rewards, rewards_at_eos
from minirlhf.tasks import get_task, labelers
from minirlhf.tokenizer import get_tokenizer


@dataclass
class Config(RunOptions):
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
    """the tokenizer, when the one a checkpoint recorded has moved: "bytes", "gpt2", a GPT-2 directory or a
    .tiktoken file (it must be the same vocabulary; empty: the checkpoint's own)"""
    data: str = "builtin"
    """"builtin" (samples ranked by simulated labelers) or comma-separated JSONL files of {"prompt" or "messages",
    "chosen", "rejected"} or {"prompt" or "messages", "responses", "ranking"} records"""
    eval_data: str = ""
    """held-out comparisons JSONL (required when data is not builtin)"""
    n_prompts: int = 3000
    """built-in: training prompts, each with k ranked samples"""
    n_eval_prompts: int = 500
    """built-in: held-out prompts for the pairwise accuracy"""
    prompt_seed: int = -1
    """built-in: seed of the prompts drawn (-1: seed); fresh prompts for another round of comparisons"""
    k: int = 4
    """built-in: responses ranked per prompt (InstructGPT: 4 to 9)"""
    sample_temperature: float = 1.0
    """built-in: temperature of the samples to rank"""
    max_new_tokens: int = 24
    """response budget of the samples"""
    epochs: int = 2
    """passes over the comparisons (InstructGPT: 1, where data is plentiful; a small RM from scratch needs 2)"""
    batch_size: int = 32
    """prompts (each with all its responses and pairs) per step, over all ranks"""
    micro_batches: int = 1
    """each rank's prompts of a step go through forward and backward in up to this many parts of similar
    lengths, whose gradients add up to the step's: the same step, less padding (the chat task: 4)"""
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
    max_bad_steps: int = 10
    """stop with an error after this many steps in a row with a non-finite loss or gradient (each is skipped)"""
    n_bias_samples: int = 512
    """SFT samples whose mean reward the final bias sets to 0"""
    log_interval: int = 10
    """steps between progress lines"""
    eval_interval: int = 50
    """steps between held-out accuracy measurements and checkpoints"""

    def __post_init__(self):
        super().__post_init__()
        check_at_least_one(self, "n_prompts", "n_eval_prompts", "epochs", "batch_size", "micro_batches",
                           "max_bad_steps", "n_bias_samples", "log_interval", "eval_interval", "max_new_tokens")
        check(self, "k", lambda x: x >= 2, "at least 2 (a ranking compares responses)")
        check(self, "sample_temperature", lambda x: x >= 0, ">= 0 (0: greedy)")
        check(self, "learning_rate", lambda x: x > 0, "> 0")
        check(self, "warmup_iters", lambda x: x >= 0, ">= 0")
        check(self, "weight_decay", lambda x: x >= 0, ">= 0")
        check(self, "adam_eps", lambda x: x > 0, "> 0")
        check(self, "grad_clip", lambda x: x >= 0, ">= 0 (0: off)")
        if self.data != "builtin" and not self.eval_data:
            raise ValueError("--eval_data is required with JSONL --data (held-out comparisons for the accuracy)")
        check_files(self, "data", "eval_data")


def main(cfg):
    d, device = distributed.setup(cfg.device)
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg, device)
    resume = runs.start(cfg, d.is_main)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # data order and labelers: the same on every rank
    gen = torch.Generator(device=device).manual_seed(cfg.seed + d.rank)  # each rank samples its own responses
    task = get_task(cfg.task)

    # the reward model: the SFT model plus a scalar head, N(0, 1/sqrt(n_embd + 1)) (the N+ implementation details)
    sft_dir = os.path.dirname(cfg.sft_ckpt) or "."
    require_finished(cfg.sft_ckpt, "SFT", f"finish it first: python train_sft.py --out_dir={sft_dir} --resume")
    kernels = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels)
    sft, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None,
                                        device=device, **kernels)
    sft.requires_grad_(False).eval()
    if sft.score_head is not None:
        raise ValueError(f"--sft_ckpt={cfg.sft_ckpt} is a reward/value model, not an SFT policy")
    if resume is not None:
        model, _, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), tokenizer, device=device, **kernels)
    elif cfg.init_from:
        model, _, _ = load_checkpoint(cfg.init_from, tokenizer, device=device, **kernels)
        if model.score_head is None:
            raise ValueError(f"--init_from={cfg.init_from} has no scalar head: not a reward model checkpoint")
    else:
        model, _, _ = load_checkpoint(cfg.sft_ckpt, tokenizer, device=device, scalar_head=True, **kernels)
    block_size = model.config.block_size

    # 1. the comparisons: (prompt ids, [response ids + EOS], ranking best first) per prompt
    labeler_agreement = gold_pairs_agreement = eval_groups = None
    if cfg.data == "builtin":
        policy = load_checkpoint(cfg.sample_from, tokenizer, device=device, **kernels)[0] if cfg.sample_from else sft
        prompt_seed = cfg.seed if cfg.prompt_seed < 0 else cfg.prompt_seed

        def ranked_samples(n, split):
            """n prompts of the split with k samples each, ranked by a simulated labeler; and the gold scores."""
            return evaluate.ranked_samples(policy, tokenizer, task.prompt_records(n, split, prompt_seed), task, rng,
                                           k=cfg.k, temperature=cfg.sample_temperature,
                                           max_new_tokens=cfg.max_new_tokens, gen=gen, d=d, autocast=autocast)
        t0 = time.time()
        train, _ = ranked_samples(cfg.n_prompts, "train")
        evals, eval_groups = ranked_samples(cfg.n_eval_prompts, "eval")
        # the ceiling: how often a second, independent labeler agrees with the first on the held-out pairs
        temperature = task.LABELER_TEMPERATURE
        labeler_agreement = labelers.labeler_agreement(eval_groups, random.Random(cfg.seed + 1), temperature)
        gold_pairs_agreement = labelers.gold_agreement(eval_groups, random.Random(cfg.seed + 2), temperature)
        print(f"sampled and ranked {cfg.k} responses for {len(train)} + {len(evals)} prompts "
              f"in {time.time() - t0:.0f}s; two labelers agree on {labeler_agreement:.1%} of held-out pairs")
    else:
        def read(paths):
            records = [r for path in paths.split(",") for r in read_comparisons(path)]
            return [encode_comparison(tokenizer, r, block_size) for r in records]
        train, evals = read(cfg.data), read(cfg.eval_data)
    n_pairs = sum(len(ranking_pairs(r)) for _, _, r in train)
    print(f"data: {len(train)} ranked prompts ({n_pairs} pairs) for training, {len(evals)} held out")

    train_model = distributed.wrap(model, d, cfg.fsdp)

    def rewards_of(groups):
        """The reward of each response of the groups (one forward pass per response, not per pair, and
        each prompt read once for its K responses), the (better, worse) index pairs of every ranking,
        each pair's weight. Under FSDP2 each response is read with its prompt: the responses' gradients
        reach a block's prompt pass through its keys and values, not its outputs, where FSDP2 would
        gather the block's weights again for the backward."""
        seqs, better, worse, weights = comparison_batch(groups)
        rewards = rewards_at_eos(train_model, seqs, tokenizer.pad_id, device, autocast) if cfg.fsdp else \
            group_rewards(train_model, groups, tokenizer.pad_id, device, autocast)
        return rewards, better.to(device), worse.to(device), weights.to(device)

    def accuracy(groups, gold=None):
        """Share of the pairs that the reward model orders as the labeler did (a tie counts half)."""
        model.eval()
        return evaluate.rm_accuracy(train_model, groups, tokenizer, device=device, autocast=autocast, d=d, gold=gold)

    decay = [p for n, p in train_model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in train_model.named_parameters() if p.dim() < 2 or "wpe" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.99), eps=cfg.adam_eps, fused=not cfg.fsdp)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    max_iters = cfg.epochs * steps_per_epoch

    def lr_at(it):
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / cfg.warmup_iters
        progress = (it - cfg.warmup_iters) / max(max_iters - cfg.warmup_iters, 1)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    state = resume["state"] if resume else {}
    metrics = runs.Metrics(cfg.out_dir, state.get("metrics", []), owned=d.is_main and not cfg.overwrite)
    skips = runs.Skips(cfg.max_bad_steps, "step", state.get("skips"))
    if resume:
        distributed.load_optimizer_state(train_model, optimizer, state["optimizer"], cfg.fsdp)
        runs.set_rng_state(runs.rank_state(state["rng"], d), rng, gen)
        print(f"resuming {cfg.out_dir} at step {resume['step']} of {max_iters}")

    def save(step, finished, extra_state=None):
        weights = distributed.model_state(train_model, cfg.fsdp)
        train_state = None if finished else {
            "optimizer": distributed.optimizer_state(train_model, optimizer, cfg.fsdp),
            "rng": distributed.all_gather_objects(runs.rng_state(rng, gen)), "metrics": metrics.rows,
            "skips": skips.state()}
        if d.is_main:
            save_checkpoint(ckpt_path, model, tokenizer, cfg, step, finished=finished, state=train_state,
                            weights=weights, total_steps=max_iters)
            metrics.own()

    # 2. training: one loss per prompt over all of its pairs, the prompts of a batch weighing alike
    start_it = resume["step"] if resume else 0
    progress, seen_pairs, window = Progress(max_iters, start_it), 0, []
    if not resume:
        print(f"held-out accuracy before training: {accuracy(evals)[0]:.3f}")
    model.train()
    it = start_it
    for epoch in range(start_it // steps_per_epoch, cfg.epochs):
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)  # each epoch's order from its own seed: resumable mid-epoch
        for i in range((it - epoch * steps_per_epoch) * cfg.batch_size, len(order), cfg.batch_size):
            groups = [train[j] for j in order[i:i + cfg.batch_size]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(it)
            optimizer.zero_grad(set_to_none=True)
            parts = micro_batches(distributed.shard(groups, d), cfg.micro_batches,
                                  lambda g: len(g[0]) + max(map(len, g[1])))  # this rank's groups, by longest sequence
            loss = agree = step_pairs = 0.0
            for m, part in enumerate(parts):  # the gradients add up; the ranks reduce them after the last part
                with distributed.grad_sync(train_model, m == len(parts) - 1):
                    rewards, better, worse, weights = rewards_of(part)
                    part_loss = (weights * pairwise_loss(rewards[better], rewards[worse])).sum() / len(groups) * d.world
                    part_loss.backward()
                loss += part_loss.detach()
                agree += ((rewards[better] > rewards[worse]).sum() + 0.5 * (rewards[better] == rewards[worse]).sum())
                step_pairs += len(better)
            stepped, _ = runs.apply_grads(train_model.parameters(), [optimizer], cfg.grad_clip)
            skips.record(stepped, f"step {it + 1}")
            it += 1
            seen_pairs += step_pairs * d.world
            # this rank's part of the loss, its agreeing pairs and its pairs; read at the log interval
            window.append(torch.stack([loss / d.world, agree.float(), torch.tensor(float(step_pairs), device=device)]))
            if it % cfg.log_interval == 0 or it == max_iters:
                loss_sum, agree_sum, n = distributed.all_sum(torch.stack(window).sum(0)).tolist()
                mean_loss, mean_acc = loss_sum / len(window), agree_sum / max(n, 1)
                row = {"step": it, "epoch": epoch, "train/loss": mean_loss, "train/accuracy": mean_acc,
                       "train/lr": lr_at(it - 1), "train/skipped_steps": skips.total, "time": time.time() - t_start}
                window = []
                if it % cfg.eval_interval == 0 or it == max_iters:
                    row["eval/accuracy"] = accuracy(evals)[0]
                    model.train()
                metrics.append(row)
                if "eval/accuracy" in row:
                    save(it, finished=False)
                shown = {"loss": row["train/loss"], "acc": row["train/accuracy"]}
                if "eval/accuracy" in row:
                    shown["eval_acc"] = row["eval/accuracy"]
                print(progress.line(it, seen_pairs, unit="pairs", **shown))

    # 3. normalize: the bias that makes the SFT model's samples score 0 on average (InstructGPT, section 3.5)
    model.eval()
    bias_groups = random.Random(cfg.seed + 3).sample(train, min(cfg.n_bias_samples, len(train)))
    bias_prompts = [prompt for prompt, _, _ in bias_groups]
    budget = min(cfg.max_new_tokens, block_size - max(map(len, bias_prompts)) - 1)  # room for the EOS appended
    if budget < 1:
        raise ValueError(f"the longest training prompt ({max(map(len, bias_prompts))} tokens) leaves no room for a "
                         f"response in block_size={block_size}")
    samples = evaluate.sample(sft, tokenizer, bias_prompts, max_new_tokens=budget, temperature=cfg.sample_temperature,
                              gen=torch.Generator(device=device).manual_seed(cfg.seed + 4 + d.rank), d=d,
                              autocast=autocast)
    seqs = [p + s["ids"] + [tokenizer.eos_id] for p, s in zip(bias_prompts, samples)]

    def mean_reward():
        with torch.no_grad(), distributed.full_weights(train_model):
            mine = distributed.shard(seqs, d)
            total = sum(rewards_at_eos(train_model, mine[i:i + 128], tokenizer.pad_id, device, autocast).sum()
                        for i in range(0, len(mine), 128))
        return (distributed.all_sum(torch.as_tensor(total, device=device, dtype=torch.float32)) / len(seqs)).item()
    before = mean_reward()
    with torch.no_grad():
        model.score_head.bias.sub_(before)  # a Python float: fine for a sharded (DTensor) bias too
    after = mean_reward()
    print(f"reward bias set: SFT samples scored {before:+.3f} on average, now {after:+.2e}")
    acc, gold_acc = accuracy(evals, eval_groups)

    summary = {"steps": it, "eval_accuracy": acc, "labeler_agreement": labeler_agreement,
               "labeler_gold_agreement": gold_pairs_agreement, "sft_mean_reward_before_bias": before,
               "sft_mean_reward_after_bias": after, "skipped_steps": skips.total,
               "n_train_prompts": len(train), "n_eval_prompts": len(evals), "n_train_pairs": n_pairs,
               "checkpoint": ckpt_path}
    if eval_groups is not None:
        # and against the truth: the share of held-out pairs with different gold scores ordered right
        summary["eval_gold_accuracy"] = gold_acc
        print(f"held-out pairwise accuracy: {acc:.1%} against the labelers (two labelers agree on "
              f"{labeler_agreement:.1%}), {summary['eval_gold_accuracy']:.1%} against the gold scores")
    else:
        print(f"held-out pairwise accuracy: {acc:.1%}")
    summary["total_seconds"] = time.time() - t_start
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), {"config": asdict(cfg), **summary})
    save(it, finished=True)
    print(f"done in {format_eta(summary['total_seconds'])}: {ckpt_path}, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    run(main, Config, "train_rm.py", task_defaults="rm")
