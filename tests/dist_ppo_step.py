"""
One PPO update on a fixed rollout, for tests/test_distributed.py: run by `python` (one process with
the whole batch) and by `torchrun --nproc_per_node=2` (each rank with half of it, DDP or --fsdp, in
two micro-batches of similar prompt lengths).
Every rank builds the same models and the same whole rollout, keeps its rows, whitens the advantages
over all ranks, and takes the step through minirlhf/ppo.py, as train_ppo.py does. Rank 0 saves the
updated weights, the statistics and the whitened advantages of all rows to the path in argv[1].
"""
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from minirlhf import distributed, ppo
from minirlhf.model import GPT, GPTConfig
from minirlhf.rl import explained_variance, gae, masked_whiten, shaped_rewards
from minirlhf.scoring import response_logprobs, response_values

B, P, R, V = 8, 5, 6, 40


def main():
    """In a function, so the models, optimizers and FSDP state are freed when it returns, while the
    interpreter is whole: Gloo objects left to the interpreter's exit can abort the process."""
    fsdp = "--fsdp" in sys.argv
    d, device, _ = distributed.setup(SimpleNamespace(device="cpu", dtype="fp32", threads=0), show_config=False)
    torch.manual_seed(0)
    config = dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, attn_impl="torch", logprob_impl="torch")
    policy, value_model = GPT(GPTConfig(**config)), GPT(GPTConfig(**config, scalar_head=True))

    # the whole rollout, alike on every rank: left-padded prompts, responses of different lengths
    g = torch.Generator().manual_seed(1)
    start = torch.randint(0, P - 1, (B,), generator=g)
    lengths = torch.tensor([6, 5, 6, 4, 1, 2, 1, 3])  # the ranks' halves hold different numbers of tokens
    seq = torch.randint(0, V - 1, (B, P + R), generator=g)
    seq[:, :P][torch.arange(P)[None, :] < start[:, None]] = V - 1  # pad on the left of each prompt
    mask = torch.arange(R)[None, :] < lengths[:, None]
    targets = seq[:, P:].masked_fill(~mask, -100)
    scores = torch.randn(B, generator=g)

    # this rank's rows, scored as train_ppo.py scores them; whitening and explained variance over all ranks
    rows = torch.arange(B).chunk(d.world)[d.rank]
    seq, start, targets, mask, scores = seq[rows], start[rows], targets[rows], mask[rows], scores[rows]
    with torch.no_grad():
        old_logprobs = response_logprobs(policy, seq, start, P, targets, 1.0, nullcontext)
        old_values = response_values(value_model, seq, start, P, nullcontext)
        kl = (old_logprobs - 0.9 * old_logprobs) * mask  # a made-up reference: a non-zero KL to penalize
        rewards = shaped_rewards(scores, kl, mask, 0.1)
        advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask, reduce=distributed.all_sum)
        ev = explained_variance(old_values, returns, mask, distributed.all_sum)

    policy_train, value_train = distributed.wrap(policy, d, fsdp), distributed.wrap(value_model, d, fsdp)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-5) for m in (policy_train, value_train)]
    rollout = ppo.Rollout(seq, start, P, targets, mask, old_logprobs, old_values, advantages, returns)
    settings = SimpleNamespace(ppo_epochs=1, n_minibatches=1, clip_range=0.2, vf_clip_range=0.2, vf_coef=0.1,
                               ent_coef=0.01, temperature=1.0, grad_clip=1.0, ptx_coef=0.0, loss_agg="token",
                               micro_batches=2 if d.world > 1 else 1)  # the ranks in parts of similar lengths
    stats, first_error = ppo.update(policy_train, value_train, optimizers, rollout, settings, autocast=nullcontext, d=d)
    weights = [distributed.model_state(m) for m in (policy_train, value_train)]
    all_advantages = torch.cat(distributed.all_gather_objects(advantages))
    if d.is_main:
        torch.save({"policy": weights[0], "value": weights[1], "stats": stats, "first_error": first_error.item(),
                    "advantages": all_advantages, "explained_variance": ev}, sys.argv[1])
    distributed.shutdown()


if __name__ == "__main__":
    main()
