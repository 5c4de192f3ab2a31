"""
Step 1 of InstructGPT: supervised fine-tuning on demonstrations.

The loss is next-token cross-entropy on the completion (or the assistant turns) only: the prompt is
given, not learned. On the built-in task the demonstrations come from a noisy demonstrator, so the
SFT policy is good but clearly imperfect, which is what leaves room for the reward model and PPO.

    python train_sft.py                                  # the built-in task, from scratch, a few CPU minutes
    python train_sft.py --data=train.jsonl --eval_data=eval.jsonl --init_from=path/to/gpt2 --tokenizer=path/to/gpt2
    python train_sft.py --help
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
from minirlhf.data import encode_sft, read_sft, sft_batch
from minirlhf.model import GPT, GPTConfig
from minirlhf.sampling import Progress, format_eta, sample_responses
from minirlhf.tokenizer import get_tokenizer


@dataclass
class Config:
    """Supervised fine-tuning (InstructGPT step 1): next-token loss on the demonstrations' completions."""
    out_dir: str = "out/sft"
    """where ckpt.pt, metrics.jsonl and summary.json are written"""
    data: str = "builtin"
    """"builtin" (the built-in task's noisy demonstrations) or comma-separated JSONL files of {"prompt", "completion"} or {"messages"} records"""
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
    demo_error_rate: float = tasks.DEMO_ERROR_RATE
    """share of built-in demonstrations with a content mistake in them"""
    demo_ramble_rate: float = tasks.DEMO_RAMBLE_RATE
    """share of built-in demonstrations with a chatty word tacked on (labelers dislike it)"""
    max_iters: int = 900
    """optimizer steps"""
    batch_size: int = 64
    """sequences per step"""
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
    seed: int = 1337
    """seed of the data order, the initialization and the sampling"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    def __post_init__(self):
        check_at_least_one(self, "max_iters", "batch_size", "log_interval", "eval_interval", "eval_batches",
                           "max_new_tokens")
        for name in ("demo_error_rate", "demo_ramble_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.min_lr < 0:
            raise ValueError("--learning_rate must be > 0 and --min_lr >= 0")


def lr_at(it, cfg):
    """Linear warmup, then cosine decay to min_lr (as nanoGPT)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min((it - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1), 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def main(cfg):
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    # the model and its tokenizer
    if cfg.init_from == "scratch":
        tokenizer = get_tokenizer(cfg.tokenizer or "bytes")
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd))
    elif os.path.isdir(cfg.init_from):
        tokenizer = get_tokenizer(cfg.tokenizer or cfg.init_from)
        model = GPT.from_pretrained(cfg.init_from, vocab_size=tokenizer.vocab_size)  # room for the pad token
    elif os.path.isfile(cfg.init_from):
        model, tokenizer, _ = load_checkpoint(cfg.init_from, get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None)
    else:
        raise ValueError(f"--init_from={cfg.init_from!r}: not 'scratch', a GPT-2 directory or a checkpoint file")
    model.to(device)
    block_size = model.config.block_size
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers, "
          f"{model.config.n_embd} wide, block {block_size}; tokenizer {tokenizer}; device {device}")

    # the data: (ids, loss_mask) per example
    builtin = cfg.data == "builtin"
    if builtin:
        train_records = tasks.sft_records(cfg.n_builtin, "train", cfg.seed, cfg.demo_error_rate, cfg.demo_ramble_rate)
        eval_records = tasks.sft_records(1000, "eval", cfg.seed, cfg.demo_error_rate, cfg.demo_ramble_rate)
    else:
        train_records = [r for path in cfg.data.split(",") for r in read_sft(path)]
        eval_records = None
    gold_demonstrations = (sum(tasks.gold_score(r["prompt"], r["completion"], True) for r in eval_records)
                           / len(eval_records)) if builtin else None
    if cfg.eval_data:
        eval_records = [r for path in cfg.eval_data.split(",") for r in read_sft(path)]
    train = [encode_sft(tokenizer, r, block_size) for r in train_records]
    evals = [encode_sft(tokenizer, r, block_size) for r in eval_records] if eval_records else []
    n_loss_tokens = sum(sum(m) for _, m in train)
    print(f"data: {len(train)} training examples ({n_loss_tokens} loss tokens), {len(evals)} held-out")

    def batch(examples):
        idx, targets = sft_batch([examples[rng.randrange(len(examples))] for _ in range(cfg.batch_size)], tokenizer.pad_id)
        return idx.to(device), targets.to(device)

    def loss_of(idx, targets):
        """Mean negative log-likelihood of the completion tokens (targets of -100 carry no loss)."""
        with autocast:
            logprobs = model(idx, targets=targets)
        return -logprobs.sum() / (targets != -100).sum()

    @torch.no_grad()
    def eval_loss():
        if not evals:
            return None
        model.eval()
        losses = [loss_of(*batch(evals)).item() for _ in range(cfg.eval_batches)]
        model.train()
        return sum(losses) / len(losses)

    # AdamW with weight decay on matrices only (as nanoGPT); Adam eps 1e-5 (the N+ implementation details)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.99), eps=cfg.adam_eps, fused=True)

    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    metrics_file = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "w")
    progress, n_tokens, losses = Progress(cfg.max_iters), 0, []
    model.train()
    for it in range(1, cfg.max_iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it - 1, cfg)
        idx, targets = batch(train)
        loss = loss_of(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        n_tokens += idx.numel()
        losses.append(loss.detach())  # no device sync per step: read at the log interval

        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            row = {"step": it, "train/loss": torch.stack(losses).mean().item(), "train/lr": lr_at(it - 1, cfg),
                   "train/grad_norm": grad_norm.item(), "time": time.time() - t_start}
            losses = []
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                row["eval/loss"] = eval_loss()
                save_checkpoint(ckpt_path, model, tokenizer, cfg, it, metrics=row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            shown = {"loss": row["train/loss"], "lr": row["train/lr"]}
            if row.get("eval/loss") is not None:
                shown["eval_loss"] = row["eval/loss"]
            print(progress.line(it, n_tokens, **shown))
    metrics_file.close()

    # what SFT reached: eval loss, and on the built-in task the gold score of held-out responses
    summary = {"steps": cfg.max_iters, "eval_loss": eval_loss(), "train_seconds": time.time() - t_start,
               "checkpoint": ckpt_path, "parameters": model.num_params()}
    if builtin and cfg.n_gold_eval > 0:
        prompts = [r["prompt"] for r in tasks.prompt_records(cfg.n_gold_eval, "eval", cfg.seed)]
        ids = [tokenizer.encode(p) for p in prompts]
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        untrained = GPT(model.config).to(device)

        def gold(m, temperature):
            responses = sample_responses(m, tokenizer, ids, max_new_tokens=cfg.max_new_tokens,
                                         temperature=temperature, generator=gen)
            return sum(tasks.gold_score(p, r["text"], r["ended"]) for p, r in zip(prompts, responses)) / len(prompts)
        summary.update(gold_greedy=gold(model, 0.0), gold_sampled=gold(model, 1.0),
                       gold_untrained_greedy=gold(untrained, 0.0),
                       gold_demonstrations=gold_demonstrations,
                       n_gold_prompts=len(prompts))
        print(f"held-out gold score: greedy {summary['gold_greedy']:.3f}, sampled (T=1) {summary['gold_sampled']:.3f}, "
              f"untrained model {summary['gold_untrained_greedy']:.3f}, "
              f"the demonstrations themselves {summary['gold_demonstrations']:.3f}")
    summary["total_seconds"] = time.time() - t_start
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump({"config": asdict(cfg), **summary}, f, indent=2)
    print(f"done in {format_eta(summary['total_seconds'])}: {ckpt_path}, {cfg.out_dir}/summary.json")


if __name__ == "__main__":
    run(main, Config, "train_sft.py")
