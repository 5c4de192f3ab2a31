"""
Step 3 of InstructGPT: PPO against the reward model, with a KL penalty to the SFT policy.

    python train_ppo.py                  # the whole default run: SFT and RM first if missing, PPO, a report
    python train_ppo.py --task=chat      # the same on the built-in dialogue task
    python train_ppo.py --resume         # continue the unfinished run in --out_dir
    torchrun --nproc_per_node=4 train_ppo.py --sft_ckpt=... --rm_ckpt=...   # 4 GPUs (DDP; --fsdp to shard)

Each iteration (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022; "The N+ implementation
details of RLHF with PPO", Huang et al. 2024):
  1. rollout   sample group_size responses to each prompt of a batch from the policy (KV cache, stop at EOS)
  2. score     the reward model on prompt + response; log-probs of the frozen SFT reference on the
               response tokens; with GAE, values from the value model (initialized from the RM)
  3. rewards   -kl_coef * KL(policy || reference at ref_temperature) per token; the RM score at the last token
  4. advantage RLOO: a response's reward less the mean of the other responses to its prompt (Ahmadian et al.
               2024; the default), or GAE with the value model, whitened over the batch (InstructGPT; chat's)
  5. update    epochs over shuffled minibatches: clipped surrogate (+ clipped value loss with GAE, + entropy
               bonus, + PPO-ptx), gradient clipping (minirlhf/ppo.py)
  6. log       one line per iteration, and a metrics JSONL
At the end the SFT and PPO policies answer the same held-out prompts, and out/ppo/report.md and
summary.json compare them (on the built-in tasks, by the gold scorer the labelers stand in for).
"""
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf import config, data, distributed, evaluate, ppo, rl, runs
from minirlhf.checkpoint import load_ppo_models
from minirlhf.config import at_least_one, check, check_files
from minirlhf.report import plot_curves, write_ppo_report
from minirlhf.scoring import in_parts, response_logprobs, response_values, reward_scores
from minirlhf.tasks import get_task, scorable

LOG_LINE = {"rm": "objective/rm_score", "gold": "objective/gold", "kl": "objective/kl", "ent": "policy/entropy",
            "pg": "losses/pg_loss", "vf": "losses/vf_loss", "clip": "policy/clipfrac", "len": "charts/response_length"}


@dataclass
class Config(config.Options):
    """PPO (InstructGPT step 3): the policy maximizes the reward model's score minus a KL penalty to the SFT policy."""
    out_dir: str = "out/ppo"
    """where ckpt.pt (policy and value model), metrics.jsonl, report.md and summary.json are written"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the finished SFT checkpoint: the initial policy and the frozen reference"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the finished reward model checkpoint: the reward, and the initial value model"""
    reward: str = "rm"
    """rm, or gold: the built-in task's gold scorer in the RM's place (an oracle: what the RM holds back; oracle.py)"""
    train_missing: bool = True
    """with the built-in prompts, train (or finish) a missing SFT or RM checkpoint at its default path first"""
    init_from: str = ""
    """a PPO checkpoint to start from (its policy and value model) instead of the SFT policy and the RM"""
    tokenizer: str = ""
    """the tokenizer, when the one the checkpoints recorded has moved (the same vocabulary; empty: theirs)"""
    prompts: str = "builtin"
    """"builtin" or comma-separated JSONL files of {"prompt"} (or chat {"messages"}) records"""
    eval_prompts: str = ""
    """held-out prompts JSONL for the final comparison (with builtin: the held-out split)"""
    n_eval: int = 500
    """held-out prompts in the final SFT vs PPO comparison"""
    ceiling_prompts: int = 200
    """of those, the ones best-of-n from SFT by the reward model answers in the report (the RM's ceiling; 0: none)"""
    iterations: int = 400
    """PPO iterations (rollout + update)"""
    batch_size: int = 64
    """prompts (and so responses) per rollout, over all ranks"""
    temperature: float = 1.0
    """sampling temperature, used in every log-prob too (InstructGPT: 1)"""
    ref_temperature: float = 0.3
    """the SFT reference's temperature in the KL penalty (and logged KL): below 1, a pull to its likeliest answers"""
    stop_at_eos: bool = True
    """end a response at its EOS; false samples exactly max_new_tokens tokens (a fixed workload, as benchmarks want)"""
    eos_penalty_score: float = -1.0
    """score of a response that never emits EOS, instead of the reward model's (the EOS trick)"""
    kl_coef: float = 0.2
    """beta of the per-token KL penalty (InstructGPT: 0.02; the N+ details: 0.05; a small RM over-optimizes sooner)"""
    kl_estimator: str = "k1"
    """per-token KL estimate in the reward: k1 = log(pi/pi_ref), or k3 (unbiased and never negative)"""
    kl_in: str = "reward"
    """where the KL to the reference goes: reward (a per-token penalty, InstructGPT) or loss (a k3 term, as GRPO)"""
    advantage: str = "rloo"
    """critic-free: rloo (leave-one-out) or grpo (group mean and std); or gae, with a value model (InstructGPT)"""
    group_size: int = 4
    """responses sampled per prompt (batch_size counts responses); grpo and rloo compare them: at least 2"""
    loss_agg: str = "token"
    """the loss as a mean over a minibatch's tokens (token), or over its responses of their tokens' means (sequence)"""
    adaptive_kl: bool = False
    """move kl_coef toward kl_target with Ziegler et al.'s proportional controller"""
    kl_target: float = 6.0
    """target KL (nats per response) of the adaptive controller"""
    kl_horizon: int = 10000
    """horizon (responses) of the adaptive controller"""
    ppo_epochs: int = 2
    """passes over each rollout batch (the N+ details: 4)"""
    n_minibatches: int = 2
    """minibatches per pass; the minibatch size is batch_size / n_minibatches"""
    micro_batches: int = 1
    """score the rollout, and run each minibatch, in up to this many parts of similar prompt lengths (less padding)"""
    gamma: float = 1.0
    """discount (InstructGPT: 1)"""
    lam: float = 0.95
    """GAE lambda (the N+ details: 0.95)"""
    clip_range: float = 0.2
    """PPO ratio clip"""
    vf_clip_range: float = 0.2
    """value clip, around the rollout's values"""
    vf_coef: float = 0.1
    """weight of the value loss (the N+ details: 0.1)"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (0: off)"""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the SFT loss mixed into the objective (InstructGPT's fix for the alignment tax; 0: off)"""
    ptx_data: str = "builtin"
    """demonstrations for PPO-ptx: "builtin" or SFT JSONL files"""
    learning_rate: float = 5e-5
    """Adam learning rate of the policy (and of the value model, by default); at 0 approx_kl and clipfrac stay 0"""
    value_learning_rate: float = -1.0
    """the value model's (-1: learning_rate); faster: it starts as the RM, whose outputs before the EOS mean nothing"""
    save_interval: int = 20
    """iterations between checkpoints"""
    snapshot_interval: int = 0
    """keep a copy of the policy every this many iterations in out_dir/snapshots/ (0: none)"""

    def __post_init__(self):
        super().__post_init__()
        at_least_one(self, "n_eval", "iterations", "batch_size", "ppo_epochs", "n_minibatches", "micro_batches",
                     "kl_horizon", "save_interval", "group_size")
        check(self, "temperature", lambda x: x > 0, "> 0 (PPO needs the policy's probabilities)")
        for name, ok in (("kl_estimator", ("k1", "k3")), ("kl_in", ("reward", "loss")), ("reward", ("rm", "gold")),
                         ("advantage", ("gae", "grpo", "rloo")), ("loss_agg", ("token", "sequence"))):
            check(self, name, lambda x: x in ok, " or ".join(ok))
        check(self, "group_size", lambda x: x >= 2 or self.advantage == "gae",
              f"at least 2 with --advantage={self.advantage} (it compares the responses to one prompt)")
        check(self, ("n_minibatches", "group_size"), lambda x: self.batch_size % x == 0,
              f"a divisor of --batch_size={self.batch_size}")
        check(self, ("kl_coef", "vf_coef", "ent_coef", "ptx_coef", "learning_rate"), lambda x: x >= 0, ">= 0")
        check(self, ("clip_range", "vf_clip_range", "kl_target", "ref_temperature"), lambda x: x > 0, "> 0")
        check(self, "value_learning_rate", lambda x: x == -1 or x >= 0, ">= 0 (or -1: learning_rate)")
        check(self, ("gamma", "lam"), lambda x: 0 <= x <= 1, "in [0, 1]")
        if self.prompts != "builtin" and not self.eval_prompts:
            raise ValueError("--eval_prompts is required with JSONL --prompts (held-out prompts for the report)")
        check_files(self, "prompts", "eval_prompts", "ptx_data")
        check(self, ("snapshot_interval", "ceiling_prompts"), lambda x: x >= 0, ">= 0 (0: none)")


def main(cfg):
    d, device, autocast = distributed.setup(cfg)
    t_start = time.time()
    run = runs.Run(cfg, d, cfg.iterations, unit="update")  # a finished or mismatched out_dir: an error before all else
    # the default pipeline: train (or finish) the SFT and reward models at their default paths first if missing
    runs.ensure_stages(cfg, config.presets(Config, cfg.task, "ppo"), cfg.train_missing and cfg.prompts == "builtin"
                       and d.world == 1)
    run.t0 = time.time()  # the run's own time: after the stages trained for it
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # prompt order and PPO-ptx batches: the same on every rank
    gen = torch.Generator(device=device).manual_seed(cfg.seed + d.rank)  # each rank samples its own rollouts
    task = get_task(cfg.task)

    # the four models: the policy and its frozen reference from SFT, the value model and the frozen RM (InstructGPT)
    critic = cfg.advantage == "gae"  # grpo and rloo have no value model: none is loaded, trained or saved
    policy, value_model, ref_policy, reward_model, tokenizer = load_ppo_models(cfg, run.path if run.ckpt else None,
                                                                               critic, device)
    print(f"advantages: {cfg.advantage}" + ("" if critic else f", {cfg.group_size} per prompt, no value model"))

    # prompts (token ids) for the rollouts; the report's, checked now; demonstrations for PPO-ptx
    block_size, n_prompts = policy.config.block_size, cfg.batch_size // cfg.group_size
    if block_size - cfg.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt, block_size={block_size}")
    if cfg.prompts == "builtin":
        train_prompts = task.prompt_records(cfg.iterations * n_prompts, "train", cfg.seed + 1)
        eval_prompts = task.prompt_records(cfg.n_eval, cfg.eval_split, cfg.seed + 2)
    else:  # the user's JSONL files, checked record by record
        from minirlhf.jsonl import read_prompts
        train_prompts, eval_prompts = read_prompts(cfg.prompts), read_prompts(cfg.eval_prompts)[:cfg.n_eval]
    gold = scorable(task, train_prompts)  # the task's prompts, built-in or from a file: the gold scorer judges
    run.info["data_format"] = data.format_of(train_prompts)
    train_ids = [data.encode_prompt(tokenizer, r, block_size - cfg.max_new_tokens) for r in train_prompts]
    for r in eval_prompts:  # a report prompt too long is an error now, not after training
        data.encode_prompt(tokenizer, r, block_size - cfg.max_new_tokens)
    if cfg.reward == "gold":  # the oracle in the RM's place, its 0 set on SFT samples as train_rm.py sets the RM's
        from minirlhf.oracle import gold_reward
        reward_model = gold_reward(task, tokenizer, train_prompts + eval_prompts, ref_policy, cfg, autocast)
    ptx_batch = ppo.ptx_sampler(cfg, task, tokenizer, block_size, rng, d, device)  # PPO-ptx's demonstrations

    distributed.share(cfg.batch_size // cfg.n_minibatches, d, "batch_size / n_minibatches")  # each rank's minibatch
    distributed.share(n_prompts, d, "batch_size / group_size")  # each rank's prompts
    policy_train = distributed.wrap(policy, d, cfg.fsdp)  # what the update's forward and backward go through
    value_train = distributed.wrap(value_model, d, cfg.fsdp) if critic else None
    trained = [m for m in (policy_train, value_train) if m is not None]  # what optimizers and checkpoints hold
    lrs = (cfg.learning_rate, cfg.learning_rate if cfg.value_learning_rate < 0 else cfg.value_learning_rate)
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr, eps=cfg.adam_eps, fused=not cfg.fsdp)
                  for m, lr in zip(trained, lrs)]
    order = list(range(len(train_ids)))
    rng.shuffle(order)
    kl_coef = run.restore(trained, optimizers, rng, gen).get("kl_coef", cfg.kl_coef)
    kl_ctl = rl.AdaptiveKLController(kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else None

    def mean(x):  # over all ranks, of a per-rank mean (every rank holds an equal share of the batch)
        return distributed.all_sum(torch.as_tensor(x, dtype=torch.float32, device=device)).item() / d.world

    progress, seen_tokens = runs.Progress(cfg.iterations, run.step, label="iter"), 0
    for it in range(run.step + 1, cfg.iterations + 1):
        t_it = time.time()
        # 1. rollout: a response per prompt from the current policy, at the sampling temperature (GPT.generate,
        # not sampling.sample: the update needs the tokens and their log-probs as tensors)
        batch = distributed.my_slice([order[((it - 1) * n_prompts + i) % len(order)] for i in range(n_prompts)], d)
        prompt_idx, start = (x.to(device) for x in data.left_pad([train_ids[i] for i in batch], tokenizer.pad_id))
        policy.eval()
        with torch.no_grad(), distributed.full_weights(policy_train), autocast():
            out = policy.generate(prompt_idx, cfg.max_new_tokens, start=start, temperature=cfg.temperature,
                                  eos_id=tokenizer.eos_id if cfg.stop_at_eos else None, pad_id=tokenizer.pad_id,
                                  generator=gen, num_samples=cfg.group_size)  # a prompt's responses: neighbouring rows
        policy.train()
        prompt_idx, start = prompt_idx.repeat_interleave(cfg.group_size, 0), start.repeat_interleave(cfg.group_size)
        P = prompt_idx.size(1)
        seq = torch.cat([prompt_idx, out.tokens], 1)  # (B, P + R): left-padded prompt, response, pad after EOS
        mask = out.mask  # (B, R) True on response tokens, EOS included
        targets = out.tokens.masked_fill(~mask, data.IGNORE_INDEX)
        lengths = mask.sum(1)
        ended = (out.tokens == tokenizer.eos_id).any(1)
        t_rollout = time.time() - t_it

        # 2. score: reward at the EOS token, log-probs of the reference, values. The policy's own
        # log-probs at the sampling temperature came with the samples, from the op and precision the
        # update uses (GPT.generate): no second forward pass, and a first ratio of exactly 1
        old_logprobs = out.logprobs
        with torch.no_grad(), distributed.full_weights(value_train):
            def score(rows, seq, start, P):  # some rows of the batch (in parts of similar prompt lengths)
                return (response_logprobs(ref_policy, seq, start, P, targets[rows], cfg.ref_temperature, autocast),
                        response_values(value_train, seq, start, P, autocast) if critic else seq[:, :0],
                        reward_scores(reward_model, seq, start, P, lengths[rows], autocast))
            ref_logprobs, old_values, rm_scores = in_parts(cfg.micro_batches, seq, start, P, score)
            # the EOS trick: a response that never ended gets a fixed score instead of the RM's
            scores = rl.eos_penalty(rm_scores, ended, cfg.eos_penalty_score) if cfg.stop_at_eos else rm_scores

            # 3. rewards: the per-token KL penalty, and the score at the last token
            kl = rl.kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
            rewards = rl.shaped_rewards(scores, kl, mask, kl_coef if cfg.kl_in == "reward" else 0.0)

            # 4. GAE; returns = advantages + values; advantages whitened over the whole batch (all ranks). Or
            # critic-free: each response's whole reward against its group's, the advantage of all its tokens
            if critic:
                advantages, returns = rl.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                advantages = rl.masked_whiten(advantages, mask, reduce=distributed.all_sum)
            else:
                advantages = rl.group_advantages(rewards.sum(1), cfg.group_size, cfg.advantage)[:, None] * mask
                returns = old_values = None
        t_score = time.time() - t_it - t_rollout

        finite = distributed.all_sum(torch.stack([rewards.isfinite().all(), advantages.isfinite().all()]).all().float())
        stats = first_error = None
        if finite.item() < d.world:  # a rank with non-finite rewards: every rank skips, so they stay in step
            print(f"iteration {it}: non-finite rewards or advantages; skipping this update (the last checkpoint stays)")
        else:
            # 5. update: epochs over shuffled minibatches of this rank's share
            rollout = ppo.Rollout(seq, start, P, targets, mask, old_logprobs, old_values, advantages, returns,
                                  ref_logprobs)
            stats, first_error = ppo.update(policy_train, value_train, optimizers, rollout, cfg, autocast=autocast, d=d,
                                            ptx_batch=ptx_batch, kl_coef=kl_coef if cfg.kl_in == "loss" else 0.0)
        t_update = time.time() - t_it - t_rollout - t_score

        # the adaptive controller sees the KL per response of the whole batch (Ziegler et al. 2019)
        mean_kl = mean(kl.sum(1).mean())
        if kl_ctl is not None:
            kl_coef = kl_ctl.update(mean_kl, cfg.batch_size)

        # 6. log: every number is over the whole batch (all ranks)
        row = {"iteration": it, "objective/rm_score": mean(rm_scores.mean()), "objective/score": mean(scores.mean()),
               "objective/kl": mean_kl, "objective/kl_coef": kl_coef,
               "objective/rlhf_reward": mean((scores - kl_coef * kl.sum(1)).mean()),
               **({"val/explained_variance": rl.explained_variance(old_values, returns, mask, distributed.all_sum)}
                  if critic else {}),
               "charts/response_length": mean(lengths.float().mean()), "charts/ended": mean(ended.float().mean()),
               "charts/tokens_per_s": seq.numel() * d.world / (time.time() - t_it),
               "charts/skipped_updates": run.skips.total + (stats is None),
               "time/rollout": t_rollout, "time/score": t_score, "time/update": t_update,
               "time/iteration": time.time() - t_it}
        if stats:  # and max |log pi - log pi_old| at the first minibatch: fp noise unless rollout and update disagree
            row.update(stats, **{"debug/first_minibatch_logprob_error": first_error.item()})
        if gold:  # the gold scorer on the batch's responses (each a prefix of out.tokens, its EOS included)
            texts = [tokenizer.decode(t[:n]) for t, n in zip(out.tokens.tolist(), lengths.tolist())]
            golds = map(task.gold_score, [train_prompts[i] for i in batch for _ in range(cfg.group_size)], texts,
                         ended.tolist())
            row["objective/gold"] = mean(sum(golds) / len(texts))  # a mean over responses: group_size per prompt
        run.metrics.append(row)
        seen_tokens += seq.numel() * d.world
        print(progress.line(it, seen_tokens, **{k: row[v] for k, v in LOG_LINE.items() if v in row}), flush=True)
        run.skips.record(stats is not None, f"iteration {it}")  # after the log line, which shows the skipped update
        if it % cfg.save_interval == 0 or it == cfg.iterations:
            run.save(it, trained, optimizers, tokenizer, rng, gen, kl_coef=kl_coef)
        if cfg.snapshot_interval and it % cfg.snapshot_interval == 0:
            run.snapshot(it, policy_train, tokenizer)  # a copy of the policy in out_dir/snapshots/

    # the report: SFT and PPO answer the same held-out prompts (and, on the built-in tasks, the gold scorer judges)
    result = evaluate.compare({"sft": ref_policy, "ppo": policy_train}, tokenizer, eval_prompts, cfg, d=d, task=task,
                              reference=ref_policy, reward_model=reward_model, seed=cfg.seed + 3, autocast=autocast)
    if gold and cfg.ceiling_prompts:  # best-of-n from SFT by the same reward model: what PPO could reach
        result["ceiling"] = evaluate.ceiling(ref_policy, reward_model, tokenizer, eval_prompts[:cfg.ceiling_prompts],
                                             task, cfg, seed=cfg.seed + 4, autocast=autocast)
    summary = {**result, "iterations": cfg.iterations, "skipped_updates": run.skips.total, "ppo_seconds": run.seconds(),
               "total_seconds": time.time() - t_start, "checkpoint": run.path, "config": asdict(cfg)}
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        png = plot_curves(run.metrics.rows, os.path.join(cfg.out_dir, "curves.png"))
        print(write_ppo_report(os.path.join(cfg.out_dir, "report.md"), summary, task, png))
    run.save(cfg.iterations, trained, optimizers, tokenizer, rng, finished=True)
    print(f"done in {runs.format_eta(time.time() - t_start)} (PPO {runs.format_eta(summary['ppo_seconds'])}): "
          f"{cfg.out_dir}/report.md, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    config.main(main, Config, "train_ppo.py", "ppo")
