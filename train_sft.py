"""
Step 1 of InstructGPT: supervised fine-tuning on demonstrations.

The loss is next-token cross-entropy on the completion (or the assistant turns) only: the prompt is
given, not learned. On the built-in tasks the demonstrations come from noisy demonstrators, so the
SFT policy is good but clearly imperfect, which is what leaves room for the reward model and PPO.

    python train_sft.py                                  # the built-in instruct task, from scratch, a few CPU minutes
    python train_sft.py --task=chat                      # the built-in dialogue task
    python train_sft.py --data=train.jsonl --eval_data=eval.jsonl --init_from=path/to/gpt2 --tokenizer=path/to/gpt2
    python train_sft.py --resume                         # continue the unfinished run in --out_dir
    torchrun --nproc_per_node=4 train_sft.py             # 4 GPUs (DDP; --fsdp to shard the model)
    python train_sft.py --help
"""
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf import distributed, evaluate, runs
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.cli import RunOptions, check, check_at_least_one, check_files, print_config, run, setup_device
from minirlhf.data import IGNORE_INDEX, encode_sft, micro_batches, read_sft, sft_batch
from minirlhf.model import GPT, GPTConfig
from minirlhf.sampling import Progress, format_eta
from minirlhf.tasks import get_task
from minirlhf.tokenizer import get_tokenizer


@dataclass
class Config(RunOptions):
    """Supervised fine-tuning (InstructGPT step 1): next-token loss on the demonstrations' completions."""
    out_dir: str = "out/sft"
    """where ckpt.pt, metrics.jsonl and summary.json are written"""
    data: str = "builtin"
    """"builtin" (the task's noisy demonstrations) or comma-separated JSONL files of {"prompt", "completion"} or
    {"messages"} records"""
    eval_data: str = ""
    """held-out JSONL for the eval loss; with data=builtin, empty means the built-in held-out split"""
    init_from: str = "scratch"
    """"scratch", a local Hugging Face GPT-2 directory, or a minirlhf checkpoint (.pt)"""
    tokenizer: str = ""
    """"bytes", "gpt2", a GPT-2 directory (vocab.json + merges.txt) or a .tiktoken file. Empty: "bytes" from
    scratch, the checkpoint's own with a checkpoint, the directory's vocab.json + merges.txt with a GPT-2 directory"""
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
    max_iters: int = 900
    """optimizer steps"""
    batch_size: int = 64
    """sequences per step (over all ranks)"""
    micro_batches: int = 1
    """each rank's share of a batch goes through forward and backward in up to this many parts of similar
    lengths, whose gradients add up to the batch's: the same step, less padding (the chat task: 4)"""
    learning_rate: float = 2e-3
    """peak learning rate (AdamW), reached after warmup_iters, then cosine decay to min_lr"""
    min_lr: float = 1e-4
    """learning rate at the end of the cosine decay"""
    warmup_iters: int = 100
    """linear warmup steps"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, LayerNorms and positions)"""
    adam_eps: float = 1e-5
    """Adam epsilon; 1e-5 as in the original RLHF code (the N+ implementation details)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    max_bad_steps: int = 10
    """stop with an error after this many steps in a row with a non-finite loss or gradient (each is skipped)"""
    log_interval: int = 50
    """steps between progress lines"""
    eval_interval: int = 500
    """steps between eval-loss measurements and checkpoints"""
    eval_batches: int = 8
    """batches of held-out data per eval-loss measurement"""
    n_gold_eval: int = 500
    """held-out built-in prompts for the final gold scores (0: skip)"""
    max_new_tokens: int = 24
    """response budget when sampling for the gold scores"""

    def __post_init__(self):
        super().__post_init__()
        check_at_least_one(self, "n_layer", "n_head", "n_embd", "block_size", "n_builtin", "max_iters", "batch_size",
                           "micro_batches", "max_bad_steps", "log_interval", "eval_interval", "eval_batches",
                           "max_new_tokens")
        check(self, "n_gold_eval", lambda x: x >= 0, ">= 0")
        for name in ("demo_error_rate", "demo_ramble_rate"):
            check(self, name, lambda x: x == -1 or 0 <= x <= 1, "in [0, 1] (or -1: the task's default)")
        check(self, "learning_rate", lambda x: x > 0, "> 0")
        check(self, "min_lr", lambda x: 0 <= x <= self.learning_rate, "in [0, learning_rate]")
        check(self, "warmup_iters", lambda x: x >= 0, ">= 0")
        check(self, "weight_decay", lambda x: x >= 0, ">= 0")
        check(self, "adam_eps", lambda x: x > 0, "> 0")
        check(self, "grad_clip", lambda x: x >= 0, ">= 0 (0: off)")
        if self.data == "builtin" and self.eval_data:
            raise ValueError("--eval_data goes with JSONL --data; the built-in data has its own held-out split")
        check_files(self, "data", "eval_data")


def lr_at(it, cfg):
    """Linear warmup, then cosine decay to min_lr (as nanoGPT)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min((it - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1), 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def main(cfg):
    d, device = distributed.setup(cfg.device)
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg, device)
    resume = runs.start(cfg, d.is_main)  # the checkpoint to go on from, or None
    torch.manual_seed(cfg.seed)  # the same initialization on every rank
    rng = random.Random(cfg.seed)  # the data order: the same on every rank, each takes its share of a batch
    task = get_task(cfg.task)

    # the model and its tokenizer
    kernels = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels)
    if resume is not None:
        tokenizer = get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        model, tokenizer, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), tokenizer, **kernels)
    elif cfg.init_from == "scratch":
        tokenizer = get_tokenizer(cfg.tokenizer or "bytes")
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, **kernels))
    elif os.path.isdir(cfg.init_from):
        tokenizer = get_tokenizer(cfg.tokenizer or cfg.init_from)
        model = GPT.from_pretrained(cfg.init_from, vocab_size=tokenizer.vocab_size, **kernels)  # room for the pad token
    elif os.path.isfile(cfg.init_from):
        model, tokenizer, _ = load_checkpoint(cfg.init_from, get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None,
                                              **kernels)
    else:
        raise ValueError(f"--init_from={cfg.init_from!r}: not 'scratch', a GPT-2 directory or a checkpoint file")
    if model.score_head is not None:
        raise ValueError(f"--init_from={cfg.init_from}: a reward/value model (it has a scalar head), "
                         "not a language model")
    model.to(device)
    block_size = model.config.block_size
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers, "
          f"{model.config.n_embd} wide, block {block_size}; tokenizer {tokenizer}; device {device}"
          + (f"; {d.world} ranks ({'FSDP' if cfg.fsdp else 'DDP'})" if d.world > 1 else ""))

    # the data: (ids, loss_mask) per example
    builtin = cfg.data == "builtin"
    if builtin:
        rates = {k: v for k, v in (("error_rate", cfg.demo_error_rate), ("ramble_rate", cfg.demo_ramble_rate))
                 if v >= 0}
        train_records = task.sft_records(cfg.n_builtin, "train", cfg.seed, **rates)
        eval_records = task.sft_records(1000, "eval", cfg.seed, **rates)
    else:
        train_records = [r for path in cfg.data.split(",") for r in read_sft(path)]
        eval_records = [r for path in cfg.eval_data.split(",") for r in read_sft(path)] if cfg.eval_data else []
    train = [encode_sft(tokenizer, r, block_size) for r in train_records]
    evals = [encode_sft(tokenizer, r, block_size) for r in eval_records]
    n_loss_tokens = sum(sum(m) for _, m in train)
    print(f"data: {len(train)} training examples ({n_loss_tokens} loss tokens), {len(evals)} held-out")
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

    # AdamW with weight decay on matrices only (as nanoGPT); Adam eps 1e-5 (the N+ implementation details)
    decay = [p for n, p in train_model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in train_model.named_parameters() if p.dim() < 2 or "wpe" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.99), eps=cfg.adam_eps,
                                  fused=not cfg.fsdp)  # the fused kernel does not take FSDP's sharded tensors

    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    state = resume["state"] if resume else {}
    metrics = runs.Metrics(cfg.out_dir, state.get("metrics", []), owned=d.is_main and not cfg.overwrite)
    skips = runs.Skips(cfg.max_bad_steps, "step", state.get("skips"))
    if resume:
        distributed.load_optimizer_state(train_model, optimizer, state["optimizer"], cfg.fsdp)
        runs.set_rng_state(runs.rank_state(state["rng"], d), rng)
        print(f"resuming {cfg.out_dir} at step {resume['step']} of {cfg.max_iters}")

    def save(step, finished):
        """Every rank calls it (FSDP gathers the shards); rank 0 writes."""
        weights = distributed.model_state(train_model, cfg.fsdp)
        train_state = None if finished else {
            "optimizer": distributed.optimizer_state(train_model, optimizer, cfg.fsdp),
            "rng": distributed.all_gather_objects(runs.rng_state(rng)), "metrics": metrics.rows,
            "skips": skips.state()}
        if d.is_main:
            save_checkpoint(ckpt_path, model, tokenizer, cfg, step, finished=finished, state=train_state,
                            weights=weights, total_steps=cfg.max_iters)
            metrics.own()

    start_it = resume["step"] + 1 if resume else 1
    progress, seen_tokens, losses = Progress(cfg.max_iters, start_it - 1), 0, []
    model.train()
    for it in range(start_it, cfg.max_iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it - 1, cfg)
        micro, n_loss_tokens = batch(train, rng)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for i, (idx, targets) in enumerate(micro):  # the gradients add up; the ranks reduce them after the last
            with distributed.grad_sync(train_model, i == len(micro) - 1):
                part = loss_of(idx, targets, n_loss_tokens)
                part.backward()
            loss += part.detach()
            seen_tokens += idx.numel() * d.world
        stepped, grad_norm = runs.apply_grads(train_model.parameters(), [optimizer], cfg.grad_clip)
        skips.record(stepped, f"step {it}")
        losses.append(loss.detach() / d.world)  # this rank's part of the batch's loss; read at the log interval

        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            row = {"step": it, "train/loss": distributed.all_sum(torch.stack(losses).mean()).item(),
                   "train/lr": lr_at(it - 1, cfg),
                   "train/grad_norm": grad_norm.item(), "train/skipped_steps": skips.total,
                   "time": time.time() - t_start}
            losses = []
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                row["eval/loss"] = eval_loss()
            metrics.append(row)
            if "eval/loss" in row:
                save(it, finished=False)
            shown = {"loss": row["train/loss"], "lr": row["train/lr"]}
            if row.get("eval/loss") is not None:
                shown["eval_loss"] = row["eval/loss"]
            print(progress.line(it, seen_tokens, **shown))

    # what SFT reached: eval loss, and on the built-in task the gold score of held-out responses
    summary = {"steps": cfg.max_iters, "eval_loss": eval_loss(), "skipped_steps": skips.total,
               "train_seconds": time.time() - t_start, "checkpoint": ckpt_path, "parameters": model.num_params()}
    if builtin and cfg.n_gold_eval > 0:
        records = task.prompt_records(cfg.n_gold_eval, "eval", cfg.seed)
        summary.update(evaluate.sft_gold(train_model, tokenizer, task, records, eval_records, seed=cfg.seed, d=d,
                                         max_new_tokens=cfg.max_new_tokens, device=device, autocast=autocast))
        print(f"held-out gold score: greedy {summary['gold_greedy']:.3f}, sampled (T=1) {summary['gold_sampled']:.3f}, "
              f"untrained model {summary['gold_untrained_greedy']:.3f}, "
              f"the demonstrations themselves {summary['gold_demonstrations']:.3f}")
    summary["total_seconds"] = time.time() - t_start
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), {"config": asdict(cfg), **summary})
    save(cfg.max_iters, finished=True)
    print(f"done in {format_eta(summary['total_seconds'])}: {ckpt_path}, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    run(main, Config, "train_sft.py", task_defaults="sft")
