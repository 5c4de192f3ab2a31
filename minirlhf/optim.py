"""The optimizer's side of the training scripts: AdamW's parameter groups, the learning-rate schedule,
and a step that clips the gradient and skips itself when the gradient is not finite."""
import math

import torch

from minirlhf import distributed


def adamw(model, learning_rate, weight_decay, eps, fsdp):
    """AdamW with weight decay on matrices only, not on biases, LayerNorms and positions (as nanoGPT)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate, betas=(0.9, 0.99), eps=eps,
                             fused=not fsdp)  # the fused kernel does not take FSDP's sharded tensors


def lr_at(it, learning_rate, min_lr, warmup, total):
    """Linear warmup to learning_rate over `warmup` steps, then cosine decay to min_lr at step `total` (as nanoGPT)."""
    if it < warmup:
        return learning_rate * (it + 1) / warmup
    progress = min((it - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def step(params, optimizers, grad_clip):
    """Clip the global gradient norm to grad_clip (0: off) and step every optimizer, unless the norm is non-finite:
    then skip (one device sync buys that guard; every rank decides alike). Returns (stepped, grad_norm)."""
    grad_norm = distributed.local(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf")))
    if not torch.isfinite(grad_norm):
        return False, grad_norm
    for opt in optimizers:
        opt.step()
    return True, grad_norm
