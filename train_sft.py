"""
Step 1 of InstructGPT: supervised fine-tuning on demonstrations.

The loss is next-token cross-entropy on the completion (or the assistant turns) only: the prompt is
given, not learned. On the built-in tasks the demonstrations come from noisy demonstrators, so the
SFT policy is good but clearly imperfect, which is what leaves room for the reward model and PPO.

    python train_sft.py                                  # the built-in instruct task, from scratch, a few CPU minutes
    python train_sft.py --task=chat                      # the built-in dialogue task
    python train_sft.py --data=train.jsonl --eval_data=eval.jsonl --init_from=path/to/gpt2
    python train_sft.py --resume                         # continue the unfinished run in --out_dir
    torchrun --nproc_per_node=4 train_sft.py             # 4 GPUs (DDP; --fsdp to shard the model)
    python train_sft.py --help
"""
import os
import random
from dataclasses import asdict, dataclass

import torch

from minirlhf import config, distributed, evaluate, optim, runs
from minirlhf.checkpoint import load_checkpoint
from minirlhf.config import at_least_one, check, check_files
from minirlhf.data import IGNORE_INDEX, encode_sft, format_of, micro_batches, sft_batch
from minirlhf.model import GPT, GPTConfig
from minirlhf.tasks import get_task
from minirlhf.tokenizer import get_tokenizer


@dataclass
class Config(config.TrainOptions):
    """Supervised fine-tuning (InstructGPT step 1): next-token loss on the demonstrations' completions."""
    out_dir: str = "out/sft"
    """where ckpt.pt, metrics.jsonl and summary.json are written"""
    data: str = "builtin"
    """"builtin" (the task's noisy demonstrations) or comma-separated JSONL files (minirlhf/jsonl.py)"""
    eval_data: str = ""
    """held-out JSONL for the eval loss; with data=builtin, empty means the built-in held-out split"""
    init_from: str = "scratch"
    """"scratch", a local Hugging Face GPT-2 directory, or a minirlhf policy checkpoint (.pt)"""
    tokenizer: str = ""
    """"bytes", "gpt2", a GPT-2 directory or a .tiktoken file (empty: bytes, the checkpoint's or the directory's)"""
    n_layer: int = 4
    """layers of a model trained from scratch"""
    n_head: int = 4
    """attention heads of a model trained from scratch"""
    n_embd: int = 192
    """width of a model trained from scratch"""
    block_size: int = 64
    """longest sequence (prompt + response) of a model trained from scratch"""
    n_builtin: int = 50000
    """built-in demonstrations to train on"""
    demo_error_rate: float = -1.0
    """share of built-in demonstrations with a content mistake in them (-1: the task's default)"""
    demo_ramble_rate: float = -1.0
    """share of built-in demonstrations with a chatty word tacked on, which labelers dislike (-1: the task's default)"""
    max_iters: int = 1800
    """optimizer steps"""
    batch_size: int = 64
    """sequences per step (over all ranks)"""
    micro_batches: int = 2
    """forward and backward in up to this many parts of similar lengths, whose gradients add up: less padding"""
    eval_batches: int = 8
    """batches of held-out data per eval-loss measurement"""
    n_gold_eval: int = 500
    """held-out built-in prompts for the final gold scores (0: skip)"""

    def __post_init__(self):
        super().__post_init__()
        at_least_one(self, "n_layer", "n_head", "n_embd", "block_size", "n_builtin", "max_iters", "batch_size",
                     "micro_batches", "eval_batches")
        check(self, "n_gold_eval", lambda x: x >= 0, ">= 0")
        check(self, ("demo_error_rate", "demo_ramble_rate"), lambda x: x == -1 or 0 <= x <= 1,
              "in [0, 1] (or -1: the task's default)")
        if self.data == "builtin" and self.eval_data:
            raise ValueError("--eval_data goes with JSONL --data; the built-in data has its own held-out split")
        check_files(self, "data", "eval_data")


def main(cfg):
    d, device, autocast = distributed.setup(cfg)
    run = runs.Run(cfg, d, cfg.max_iters)  # a new run, or the checkpoint of the one to go on with (--resume)
    torch.manual_seed(cfg.seed)  # the same initialization on every rank
    rng = random.Random(cfg.seed)  # the data order: the same on every rank, each takes its share of a batch
    task = get_task(cfg.task)

    # 1. the model and its tokenizer: from scratch, GPT-2 weights, a policy checkpoint, or this run's own
    kernels = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels)
    tokenizer = get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if run.ckpt is not None:
        model, tokenizer, _ = load_checkpoint(run.path, tokenizer, finished=False, **kernels)
    elif cfg.init_from == "scratch":
        tokenizer = tokenizer or get_tokenizer("bytes")
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, **kernels))
    elif os.path.isdir(cfg.init_from):  # GPT-2 weights in Hugging Face's format, and its tokenizer files
        from minirlhf import gpt2
        tokenizer = tokenizer or get_tokenizer(cfg.init_from)
        model = gpt2.from_pretrained(cfg.init_from, vocab_size=tokenizer.vocab_size, **kernels)  # room for the pad
    else:
        model, tokenizer, _ = load_checkpoint(cfg.init_from, tokenizer, kind="policy", option="init_from", **kernels)
    model.to(device)
    block_size = model.config.block_size
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers, "
          f"{model.config.n_embd} wide, block {block_size}; tokenizer {tokenizer}; device {device}"
          + (f"; {d.world} ranks ({'FSDP' if cfg.fsdp else 'DDP'})" if d.world > 1 else ""))

    # 2. the data: (ids, loss_mask) per example
    builtin = cfg.data == "builtin"
    if builtin:
        rates = {k: v for k, v in (("error_rate", cfg.demo_error_rate), ("ramble_rate", cfg.demo_ramble_rate))
                 if v >= 0}
        train_records = task.sft_records(cfg.n_builtin, "train", cfg.seed, **rates)
        eval_records = task.sft_records(1000, cfg.eval_split, cfg.seed, **rates)
    else:  # the user's JSONL files, checked record by record
        from minirlhf.jsonl import read_sft
        train_records, eval_records = read_sft(cfg.data), read_sft(cfg.eval_data) if cfg.eval_data else []
    run.info["data_format"] = format_of(train_records)
    train = [encode_sft(tokenizer, r, block_size) for r in train_records]
    evals = [encode_sft(tokenizer, r, block_size) for r in eval_records]
    print(f"data: {len(train)} training examples ({sum(sum(m) for _, m in train)} loss tokens), {len(evals)} held-out")
    distributed.share(cfg.batch_size, d, "batch_size")

    def batch(examples, rng):
        """This rank's share of a batch drawn with rng (which every rank draws alike), as micro-batches
        (idx, targets), and the number of loss tokens in the whole batch (all ranks')."""
        picks = [examples[rng.randrange(len(examples))] for _ in range(cfg.batch_size)]
        micro = [sft_batch(part, tokenizer.pad_id)
                 for part in micro_batches(distributed.my_slice(picks, d), cfg.micro_batches, lambda e: len(e[0]))]
        n_tokens = distributed.all_sum(sum((targets != IGNORE_INDEX).sum() for _, targets in micro).to(device))
        return [(idx.to(device), targets.to(device)) for idx, targets in micro], n_tokens

    train_model = distributed.wrap(model, d, cfg.fsdp)  # what forward and backward go through

    def loss_of(idx, targets, n_tokens):
        """A micro-batch's part of the batch's loss: the mean negative log-likelihood of the completion
        tokens of the whole batch (n_tokens of them); targets of -100 carry no loss."""
        with autocast():
            logprobs = train_model(idx, targets=targets)
        return -logprobs.sum() / n_tokens * d.world  # DDP and FSDP average the gradients over ranks

    @torch.no_grad()
    def eval_loss():
        """The loss on the same eval_batches held-out batches every time."""
        if not evals:
            return None
        model.eval()
        eval_rng = random.Random(cfg.seed + 1)
        losses = []
        for _ in range(cfg.eval_batches):
            micro, n_tokens = batch(evals, eval_rng)
            losses.append(sum(loss_of(idx, targets, n_tokens) for idx, targets in micro) / d.world)  # this rank's part
        model.train()
        return distributed.all_sum(torch.stack(losses).mean()).item()

    optimizer = optim.adamw(train_model, cfg.learning_rate, cfg.weight_decay, cfg.adam_eps, cfg.fsdp)
    run.restore([train_model], [optimizer], rng)

    # 3. training: the gradients of a batch's micro-batches add up; the ranks reduce them after the last
    progress, seen_tokens, losses = runs.Progress(cfg.max_iters, run.step), 0, []
    model.train()
    for it in range(run.step + 1, cfg.max_iters + 1):
        lr = optim.lr_at(it - 1, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro, n_loss_tokens = batch(train, rng)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for i, (idx, targets) in enumerate(micro):
            with distributed.grad_sync(train_model, i == len(micro) - 1):
                part = loss_of(idx, targets, n_loss_tokens)
                part.backward()
            loss += part.detach()
            seen_tokens += idx.numel() * d.world
        stepped, grad_norm = optim.step(train_model.parameters(), [optimizer], cfg.grad_clip)
        run.skips.record(stepped, f"step {it}")
        losses.append(loss.detach() / d.world)  # this rank's part of the batch's loss; read at the log interval

        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            row = {"step": it, "train/loss": distributed.all_sum(torch.stack(losses).mean()).item(), "train/lr": lr,
                   "train/grad_norm": grad_norm.item(), "train/skipped_steps": run.skips.total, "time": run.seconds()}
            losses = []
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                row["eval/loss"] = eval_loss()
            run.metrics.append(row)
            if "eval/loss" in row:
                run.save(it, [train_model], [optimizer], tokenizer, rng)
            shown = {"loss": row["train/loss"], "lr": lr}
            if row.get("eval/loss") is not None:
                shown["eval_loss"] = row["eval/loss"]
            print(progress.line(it, seen_tokens, **shown))

    # 4. what SFT reached: eval loss, and on the built-in task the gold score of held-out responses
    summary = {"steps": cfg.max_iters, "eval_loss": eval_loss(), "skipped_steps": run.skips.total,
               "train_seconds": run.seconds(), "checkpoint": run.path, "parameters": model.num_params()}
    if builtin and cfg.n_gold_eval > 0:
        records = task.prompt_records(cfg.n_gold_eval, cfg.eval_split, cfg.seed)
        summary.update(evaluate.sft_gold(train_model, tokenizer, task, records, eval_records, seed=cfg.seed, d=d,
                                         max_new_tokens=cfg.max_new_tokens, device=device, autocast=autocast))
        print(f"held-out gold score: greedy {summary['gold_greedy']:.3f}, sampled (T=1) {summary['gold_sampled']:.3f}, "
              f"untrained model {summary['gold_untrained_greedy']:.3f}, "
              f"the demonstrations themselves {summary['gold_demonstrations']:.3f}")
    summary["total_seconds"] = run.seconds()
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), {"config": asdict(cfg), **summary})
    run.save(cfg.max_iters, [train_model], [], tokenizer, rng, finished=True)
    print(f"done in {runs.format_eta(summary['total_seconds'])}: {run.path}, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    config.main(main, Config, "train_sft.py", "sft")
