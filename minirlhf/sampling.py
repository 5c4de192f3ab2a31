"""
Sampling responses to text prompts in batches, and what the scripts measure on them.
"""
import time

import torch

from minirlhf.data import left_pad


@torch.no_grad()
def sample_responses(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, batch_size=256,
                     generator=None):
    """Responses of model to prompt token lists, batch_size at a time with the KV cache.
    Returns a list of dicts: ids (response tokens, EOS excluded), text, ended (stopped at EOS)."""
    device = model.lm_head.weight.device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        idx, start = left_pad(prompts[i:i + batch_size], tokenizer.pad_id)
        gen = model.generate(idx.to(device), max_new_tokens, start=start.to(device), temperature=temperature,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, generator=generator)
        for tokens, mask in zip(gen.tokens.tolist(), gen.mask.tolist()):
            ids = [t for t, m in zip(tokens, mask) if m]
            ended = bool(ids) and ids[-1] == tokenizer.eos_id
            ids = ids[:-1] if ended else ids
            out.append({"ids": ids, "text": tokenizer.decode(ids), "ended": ended})
    model.train(was_training)
    return out


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One readable line per interval: step, the metrics given, throughput and ETA."""

    def __init__(self, total, start=0):
        """total steps; start: steps done before this process began (a resumed run)."""
        self.total, self.start, self.t0, self.last_t, self.last_n = total, start, time.time(), time.time(), 0

    def line(self, step, n_items, unit="tok", **metrics):
        """n_items: items (tokens, pairs...) processed since the start, for the throughput."""
        now = time.time()
        rate = (n_items - self.last_n) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_n = now, n_items
        eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
        parts = [f"step {step:>{len(str(self.total))}}/{self.total}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        parts += [f"{rate:,.0f} {unit}/s", f"eta {format_eta(eta)}"]
        return " | ".join(parts)
