"""
The GPT of minirlhf, in one file: GPT-2 (learned positions, pre-LayerNorm, GELU MLP, tied embeddings), named as GPT-2
names it so that its weights load by name, plus what RLHF needs:
- left-padded batches (`start[b]` pad tokens on the left of row b) that give exactly the unpadded logits;
- the final hidden states (`hidden_states`), for scalar heads and the fused log-prob kernel;
- an optional scalar head (n_embd -> 1): the same class is the reward model and the value model;
- one forward for everything trained, as DDP and FSDP want; batched sampling with a KV cache (`generate`).
Shapes: B batch, T time, C n_embd, nh heads, hs head size (C // nh), V vocabulary.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F

import kernels.attention
import kernels.logprobs


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence: the number of learned positions
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # off for SFT, RM and PPO ("The N+ implementation details of RLHF with PPO")
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2 has
    layer_norm_epsilon: float = 1e-5
    scalar_head: bool = False  # add an n_embd -> 1 head: a reward or value model
    activation: str = "gelu"  # the MLP's: gelu (exact, as nanoGPT) or gelu_tanh (GPT-2's; slower on CPUs)
    attn_impl: str = "auto"  # auto: the Triton kernel on CUDA, plain PyTorch (SDPA) elsewhere | torch | triton
    logprob_impl: str = "auto"  # the same choice for log-probs from hidden states (token_logprobs)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("attn_impl", ("auto", "torch", "triton")), ("logprob_impl", ("auto", "torch", "triton")),
                              ("activation", ("gelu", "gelu_tanh"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name} must be {', '.join(choices)}, got {getattr(self, name)!r}")


def attention(q, k, v, key_start, impl):
    """q (B, nh, Tq, hs): the last Tq positions of k, v (B, nh, Tk, hs); keys before key_start[b] are left padding."""
    if impl == "triton" or (impl == "auto" and q.is_cuda):
        return kernels.attention.flash_attention(q, k, v, causal=True, key_start=key_start)
    return kernels.attention.attention_sdpa(q, k, v, causal=True, key_start=key_start)


class KVCache:
    """Every layer's keys and values for batched decoding; all rows advance together, so one length serves the batch."""

    def __init__(self, config, batch_size, max_len):
        self.shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = self.v = None  # (L, B, nh, max_len, hs), allocated by the first update
        self.len = 0  # positions filled so far

    def update(self, layer, k, v):
        """Append this step's k, v (B, nh, T, hs) of one layer; return all of them so far."""
        if self.k is None:
            self.k, self.v = k.new_empty(self.shape), v.new_empty(self.shape)  # in q's dtype (bf16 under autocast)
        end = self.len + k.size(2)
        self.k[layer, :, :, self.len:end] = k
        self.v[layer, :, :, self.len:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def repeat_rows(self, n):
        """Each row n times, neighbours (B -> B * n): n samples go on from one prompt's prefill."""
        self.shape = (self.shape[0], self.shape[1] * n, *self.shape[2:])
        if self.k is not None:
            self.k, self.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)

    def keep_rows(self, keep):
        """Only the rows where keep (B,) is True: rows that have stopped sampling leave the batch."""
        self.shape = (self.shape[0], int(keep.sum()), *self.shape[2:])
        if self.k is not None:
            self.k, self.v = self.k[:, keep], self.v[:, keep]


class PromptCache:
    """Every layer's keys and values of a prompt batch as plain tensors that gradients flow through (KVCache's
    preallocated memory is for inference only): a prompt is read once and each of its responses goes on from it."""

    def __init__(self):
        self.k, self.v = {}, {}  # layer -> (B, nh, T, hs)
        self.len = 0

    def update(self, layer, k, v):
        if layer in self.k:
            k, v = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def repeat_rows(self, repeats):
        """Row b repeats[b] times, neighbours (an int, or a (B,) tensor of counts)."""
        for layer in self.k:
            self.k[layer] = self.k[layer].repeat_interleave(repeats, dim=0)
            self.v[layer] = self.v[layer].repeat_interleave(repeats, dim=0)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.impl = config.n_head, config.n_embd, config.attn_impl

    def forward(self, x, key_start=None, cache=None, layer=0, last=None):
        """Attention outputs for the last `last` positions of x (all if None); keys and values come from all."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q[:, -last:] if last else q
        q = q.view(B, q.size(1), self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, Tq, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, Tpast + T, hs)
        # no dropout on the attention weights: the fused kernel never forms them
        y = attention(q, k, v, key_start, self.impl)  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).contiguous().view(B, q.size(2), C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, key_start=None, cache=None, layer=0, last=None):
        x = (x[:, -last:] if last else x) + self.attn(self.ln_1(x), key_start, cache, layer, last)
        return x + self.mlp(self.ln_2(x))


class Generation(NamedTuple):
    tokens: torch.Tensor  # (B, n) sampled tokens; pad after a row's EOS
    mask: torch.Tensor  # (B, n) bool, True on each row's response tokens, its EOS included
    logprobs: torch.Tensor  # (B, n) fp32 log-prob of each token under softmax(logits / temperature); 0 off the mask


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied input and output embeddings, as GPT-2
        self.score_head = nn.Linear(config.n_embd, 1) if config.scalar_head else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if self.score_head is not None:
            self.reset_score_head()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def reset_score_head(self):
        """Reward head init N(0, 1/sqrt(n_embd + 1)) ("The N+ implementation details of RLHF with PPO")."""
        nn.init.normal_(self.score_head.weight, std=1.0 / math.sqrt(self.config.n_embd + 1))
        nn.init.zeros_(self.score_head.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, start=None, cache=None, last=None):
        """Final hidden states (B, T, C), after ln_f, of tokens idx (B, T), for lm_head, score_head or the fused
        log-prob kernel. start (B,): left padding per row; cache: a KVCache or PromptCache of the earlier positions;
        last: only the final `last` positions are wanted (B, last, C): the final block computes only those."""
        B, T = idx.size()
        past = cache.len if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size={self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        if start is not None:
            pos = (pos[None, :] - start[:, None]).clamp(min=0)  # (B, T) count from each row's first real token
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, start, cache, layer, last if layer == self.config.n_layer - 1 else None)
        if cache is not None:
            cache.len += T
        return self.transformer.ln_f(x)

    def forward(self, idx, start=None, *, last=None, targets=None, temperature=1.0, return_entropy=False,
                responses=None, repeats=None):
        """Outputs for tokens idx (B, T) at the final `last` positions (all if None), start as in hidden_states: a
        scalar head's scalars (B, last), fp32; with targets (B, last) their log-probs, fp32 (token_logprobs); else the
        logits (B, last, V). All training passes go through here, since DDP and FSDP hook forward.
        With responses (N, R): idx are left-padded prompts and the right-padded responses[n] go on from prompt b for
        repeats[b] neighbouring rows (an int for all alike); the outputs are the responses' (N, R, ...), each prompt
        read once for its K responses (InstructGPT, section 3.5)."""
        if responses is not None:
            if last is not None:
                raise ValueError("forward: last does not go with responses (the outputs are the responses')")
            cache = PromptCache()
            self.hidden_states(idx, start, cache, last=1)  # the prompts' keys and values, every layer
            repeats = torch.as_tensor(repeats, device=idx.device)
            if repeats.dim() == 0:
                repeats = repeats.expand(idx.size(0))
            if int(repeats.sum()) != responses.size(0):
                raise ValueError(f"forward: repeats sum to {int(repeats.sum())}, but there are "
                                 f"{responses.size(0)} responses")
            cache.repeat_rows(repeats)
            start = start.repeat_interleave(repeats) if start is not None else None
            h = self.hidden_states(responses, start, cache)  # (N, R, C)
        else:
            h = self.hidden_states(idx, start, last=last)
        if self.score_head is not None:
            return self.score_head(h).squeeze(-1).float()
        if targets is not None:
            return self.token_logprobs(h, targets, temperature=temperature, return_entropy=return_entropy)
        return self.lm_head(h)

    def token_logprobs(self, hidden, targets, temperature=1.0, return_entropy=False):
        """log p(targets) under softmax(lm_head(hidden) / temperature), fp32, for hidden (..., C), targets (...); -100
        gives 0 and no gradient; with return_entropy also the entropies. On CUDA the Triton op never forms the (..., V)
        logits. Outside autocast in the weights' dtype, as in generate, else PPO's first ratio is not 1 (verl#2996)."""
        op = kernels.logprobs.linear_token_logprobs if self._triton_logprobs(hidden) else \
            kernels.logprobs.linear_token_logprobs_reference
        weight = self.lm_head.weight
        with torch.autocast(hidden.device.type, enabled=False):
            return op(hidden.to(weight.dtype), weight, targets, temperature=temperature, return_entropy=return_entropy)

    def _triton_logprobs(self, x):
        return self.config.logprob_impl == "triton" or (self.config.logprob_impl == "auto" and x.is_cuda)

    def head_logits(self, h):
        """Logits (B, V) of h (B, C) as token_logprobs forms them; (V, C) @ (C, B) reads lm_head.weight in one sweep."""
        weight = self.lm_head.weight
        with torch.autocast(h.device.type, enabled=False):
            return (weight @ h.to(weight.dtype).T).T

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, *, start=None, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 pad_id=None, use_cache=True, generator=None, on_token=None, num_samples=1, drop_stopped=True):
        """Sample up to max_new_tokens after the left-padded prompts idx (B, T); temperature 0 is greedy. top_k / top_p
        cut the sampling distribution, but the logprobs returned are the tempered, uncut one's: PPO's old log-probs. A
        row stops at eos_id, then emits pad_id; on_token(tokens (B,)) is called after each step. num_samples: samples
        per prompt (neighbouring rows; the prompt read once). drop_stopped: once half the running rows have stopped,
        they leave the batch; every row's draws are still made, so only the time taken changes.
        Returns Generation(tokens, mask, logprobs), each (B * num_samples, n), n <= max_new_tokens."""
        if num_samples < 1:
            raise ValueError(f"generate: num_samples must be at least 1, got {num_samples}")
        B, T = idx.size()
        if T + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} is longer than "
                             f"block_size={self.config.block_size}")
        if eos_id is not None and pad_id is None:
            raise ValueError("generate: eos_id needs a pad_id for the rows that have stopped")
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"generate: bad sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p}")
        cache = KVCache(self.config, B, T + max_new_tokens) if use_cache else None
        logprobs_op = kernels.logprobs.token_logprobs if self._triton_logprobs(idx) else \
            kernels.logprobs.token_logprobs_reference  # the log-softmax that token_logprobs runs
        seq, step_in = idx, idx  # all tokens so far; what the next forward reads
        B_out = B * num_samples
        rows = torch.arange(B_out, device=idx.device)  # the rows of the result still in the batch
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)  # of the rows in the batch
        tokens, masks, logprobs = [], [], []
        for step in range(max_new_tokens):
            if cache is not None:
                h = self.hidden_states(step_in, start, cache, last=1)[:, -1]  # (B, C): only the newest position
            else:
                h = self.hidden_states(seq, start, last=1)[:, -1]
            if step == 0 and num_samples > 1:  # the prompts are read: each row becomes num_samples rows
                h, seq, done = (x.repeat_interleave(num_samples, 0) for x in (h, seq, done))
                start = start.repeat_interleave(num_samples, 0) if start is not None else None
                if cache is not None:
                    cache.repeat_rows(num_samples)
            logits = self.head_logits(h)  # (B, V)
            tok = _sample(logits.float(), temperature, top_k, top_p, generator, rows, B_out)  # (B,)
            lp = logprobs_op(logits, tok, temperature=temperature if temperature > 0 else 1.0)  # (B,) fp32
            if eos_id is not None:
                tok = tok.masked_fill(done, pad_id)
            # this step's tokens, masks and log-probs for every row of the result (pad, False, 0 for the rows gone)
            tokens.append(torch.full((B_out,), pad_id if pad_id is not None else 0, dtype=tok.dtype,
                                     device=tok.device).index_copy(0, rows, tok))
            masks.append(torch.zeros(B_out, dtype=torch.bool, device=tok.device).index_copy(0, rows, ~done))
            logprobs.append(torch.zeros(B_out, dtype=lp.dtype, device=lp.device).index_copy(0, rows,
                                                                                          lp.masked_fill(done, 0.0)))
            if on_token is not None:
                on_token(tokens[-1])
            if eos_id is not None:
                done = done | (tok == eos_id)
            seq = torch.cat([seq, tok[:, None]], dim=1)
            step_in = tok[:, None]
            n_done = int(done.sum())  # one host sync per step, for both tests below
            if n_done == len(done):
                break
            if drop_stopped and 2 * n_done >= len(done):  # half have stopped: on with the others alone
                keep = ~done
                rows, seq, step_in, done = rows[keep], seq[keep], step_in[keep], done[keep]
                start = start[keep] if start is not None else None
                if cache is not None:
                    cache.keep_rows(keep)
        return Generation(torch.stack(tokens, 1), torch.stack(masks, 1), torch.stack(logprobs, 1))


def _sample(logits, temperature, top_k, top_p, generator, rows=None, n_rows=None):
    """One token per row of logits (B, V). The draws are made for all n_rows of the batch (rows: which ones these are),
    so that a row's sample does not depend on which others are still running."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    # an exponential race, argmax probs / q with q ~ Exp(1), draws each token with probability probs exactly
    if rows is None:
        rows, n_rows = torch.arange(len(probs), device=probs.device), len(probs)
    q = torch.empty(n_rows, probs.size(-1), device=probs.device).exponential_(generator=generator)[rows]
    return (probs / q).argmax(-1)
