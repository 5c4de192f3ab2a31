"""
Step 3 of InstructGPT: PPO against the reward model, with a KL penalty to the SFT policy.

    python train_ppo.py                  # the whole default run: SFT and RM first if missing, PPO, a report
    python train_ppo.py --task=chat      # the same on the built-in dialogue task
    python train_ppo.py --resume         # continue the unfinished run in --out_dir
    torchrun --nproc_per_node=4 train_ppo.py --sft_ckpt=... --rm_ckpt=...   # 4 GPUs (DDP; --fsdp to shard)
    python train_ppo.py --help

Each iteration (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022; "The N+ implementation
details of RLHF with PPO", Huang et al. 2024):
  1. rollout   sample a response to each prompt of a batch from the policy (KV cache, stop at EOS)
  2. score     the reward model on prompt + response; log-probs of the policy and of the frozen SFT
               reference on the response tokens; values from the value model (initialized from the RM)
  3. rewards   -kl_coef * KL(policy || reference) per token, the RM score added at the last token
  4. GAE       advantages and returns; advantages whitened over the batch
  5. update    epochs over shuffled minibatches: clipped surrogate + clipped value loss (+ entropy
               bonus, + PPO-ptx), gradient clipping
  6. log       one line per iteration, and a metrics JSONL
At the end the SFT and PPO policies answer the same held-out prompts, and out/ppo/report.md and
summary.json compare them (on the built-in tasks, by the gold scorer the labelers stand in for).
"""
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from minirlhf import distributed, evaluate, pipeline, ppo, rl, runs
from minirlhf.checkpoint import save_checkpoint
from minirlhf.cli import (
    RunOptions,
    check,
    check_at_least_one,
    check_files,
    print_config,
    run,
    setup_device,
    task_config_defaults,
)
from minirlhf.data import IGNORE_INDEX, left_pad, sft_batch
from minirlhf.report import iteration_line, write_ppo_report
from minirlhf.sampling import format_eta
from minirlhf.scoring import in_parts, response_logprobs, response_values, reward_scores
from minirlhf.tasks import get_task, parse_kind_weights
from minirlhf.tokenizer import get_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config(pipeline.RoundOptions, RunOptions):
    """PPO (InstructGPT step 3): the policy maximizes the reward model's score minus a KL penalty to the SFT policy."""
    out_dir: str = "out/ppo"
    """where ckpt.pt (policy and value model), metrics.jsonl, report.md and summary.json are written"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the finished SFT checkpoint: the initial policy and the frozen reference"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the finished reward model checkpoint: the reward, and the initial value model"""
    train_missing: bool = True
    """with the built-in prompts and the default sft_ckpt / rm_ckpt, train (or finish) those first with
    train_sft.py / train_rm.py"""
    init_from: str = ""
    """a PPO checkpoint to start from (its policy and value model) instead of the SFT policy and the RM"""
    tokenizer: str = ""
    """the tokenizer, when the one the checkpoints recorded has moved (the same vocabulary; empty: theirs)"""
    prompts: str = "builtin"
    """"builtin" or comma-separated JSONL files of {"prompt"} (or chat {"messages"}) records"""
    eval_prompts: str = ""
    """held-out prompts JSONL for the final comparison (with builtin: the held-out split)"""
    prompt_seed: int = -1
    """built-in: seed of the training prompts (-1: seed + 1)"""
    n_eval: int = 500
    """held-out prompts in the final SFT vs PPO comparison"""
    iterations: int = 200
    """PPO iterations (rollout + update)"""
    batch_size: int = 64
    """prompts (and so responses) per rollout, over all ranks"""
    max_new_tokens: int = 24
    """response budget; a response without EOS by then gets eos_penalty_score"""
    temperature: float = 1.0
    """sampling temperature, used in every log-prob too (InstructGPT: 1)"""
    stop_at_eos: bool = True
    """end a response at its EOS; false samples exactly max_new_tokens tokens (a fixed workload, as benchmarks want)"""
    kl_coef: float = 0.1
    """beta of the per-token KL penalty (the N+ details and TRL: 0.05; InstructGPT: 0.02; 0.1 here, where the
    small RM is easier to over-optimize: 0.05 drifted to 2.6 nats and a lower gold win rate)"""
    kl_estimator: str = "k1"
    """per-token KL estimate in the reward: k1 = log(pi/pi_ref), or k3 (unbiased and never negative)"""
    adaptive_kl: bool = False
    """move kl_coef toward kl_target with Ziegler et al.'s proportional controller"""
    kl_target: float = 6.0
    """target KL (nats per response) of the adaptive controller"""
    kl_horizon: int = 10000
    """horizon (responses) of the adaptive controller"""
    eos_penalty_score: float = -1.0
    """score of a response that never emits EOS, instead of the reward model's (the EOS trick)"""
    ppo_epochs: int = 2
    """passes over each rollout batch (the N+ details: 4; 2 here, to afford more rollouts in a CPU budget)"""
    n_minibatches: int = 2
    """minibatches per pass; the minibatch size is batch_size / n_minibatches"""
    micro_batches: int = 1
    """each minibatch goes through forward and backward in up to this many parts of similar prompt lengths,
    whose gradients add up to the minibatch's, and the rollout is scored in as many: the same step, less
    padding (the chat task: 4)"""
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
    """Adam learning rate of the policy, and of the value model unless value_learning_rate is set (0 checks that
    nothing moves: approx_kl and clipfrac stay 0)"""
    value_learning_rate: float = -1.0
    """Adam learning rate of the value model (-1: learning_rate). The value model starts as the reward model,
    whose outputs before the EOS mean nothing: a faster one gives useful advantages sooner (OpenRLHF's critic
    learns 9x faster than its actor)"""
    adam_eps: float = 1e-5
    """Adam epsilon (the N+ implementation details)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    max_bad_steps: int = 10
    """stop with an error after this many skipped updates in a row (non-finite rewards, loss or gradient)"""
    save_interval: int = 20
    """iterations between checkpoints"""
    snapshot_interval: int = 0
    """keep a copy of the policy every this many iterations in out_dir/snapshots/ (0: none), e.g. to study
    how the gold score moves with the KL along a run"""
    kind_weights: str = ""
    """built-in prompts: relative frequencies of the task's kinds, e.g. "add=2,sort=1" (empty: uniform)"""

    def __post_init__(self):
        super().__post_init__()
        check_at_least_one(self, "n_eval", "iterations", "batch_size", "max_new_tokens", "ppo_epochs", "n_minibatches",
                           "micro_batches", "kl_horizon", "max_bad_steps", "save_interval")
        if self.batch_size % self.n_minibatches:
            raise ValueError(f"--batch_size={self.batch_size} is not divisible by --n_minibatches={self.n_minibatches}")
        check(self, "temperature", lambda x: x > 0, "> 0 (PPO needs the policy's probabilities)")
        check(self, "kl_estimator", lambda x: x in ("k1", "k3"), "k1 or k3")
        for name in ("kl_coef", "vf_coef", "ent_coef", "ptx_coef", "learning_rate", "grad_clip"):
            check(self, name, lambda x: x >= 0, ">= 0")
        for name in ("clip_range", "vf_clip_range", "kl_target", "adam_eps"):
            check(self, name, lambda x: x > 0, "> 0")
        check(self, "value_learning_rate", lambda x: x == -1 or x >= 0, ">= 0 (or -1: learning_rate)")
        for name in ("gamma", "lam"):
            check(self, name, lambda x: 0 <= x <= 1, "in [0, 1]")
        if self.prompts != "builtin" and not self.eval_prompts:
            raise ValueError("--eval_prompts is required with JSONL --prompts (held-out prompts for the report)")
        check_files(self, "prompts", "eval_prompts", "ptx_data")
        check(self, "snapshot_interval", lambda x: x >= 0, ">= 0 (0: none)")
        if self.rounds > self.iterations:
            raise ValueError(f"--rounds={self.rounds} needs at least as many --iterations (got {self.iterations})")
        parse_kind_weights(self.kind_weights)  # an error now, not after SFT and RM


def main(cfg):
    d, device = distributed.setup(cfg.device)
    print_config(cfg)
    t_start = time.time()
    device, autocast = setup_device(cfg, device)
    # a finished run in out_dir, or a resume with other options, is an error now, before any SFT or RM stage runs
    resume = runs.start(cfg, d.is_main) if cfg.rounds == 1 else None
    stages = [("sft", "train_sft.py")] + ([("rm", "train_rm.py")] if cfg.rounds == 1 else [])  # rounds train their RMs
    for what, script in stages:
        default = task_config_defaults(cfg.task, "ppo").get(f"{what}_ckpt", getattr(Config, f"{what}_ckpt"))
        pipeline.ensure_stage(cfg, d, what, script, default, HERE)
    if cfg.rounds > 1:
        return pipeline.run_rounds(cfg, d, device, autocast, HERE)
    t_ppo = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)  # prompt order and PPO-ptx batches: the same on every rank
    gen = torch.Generator(device=device).manual_seed(cfg.seed + d.rank)  # each rank samples its own rollouts
    task = get_task(cfg.task)

    # the four models: policy and frozen reference from SFT, reward and value model from the RM
    kernels = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels)
    start_path = os.path.join(cfg.out_dir, "ckpt.pt") if resume else cfg.init_from
    ref_policy, reward_model, policy, value_model, tokenizer = ppo.load_models(
        cfg.sft_ckpt, cfg.rm_ckpt, start_path, get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None, device, kernels)
    # prompts (token ids) for the rollouts, the held-out ones for the report, demonstrations for PPO-ptx
    builtin = cfg.prompts == "builtin"
    train_prompts, eval_prompts, train_ids, ptx = ppo.load_prompts(cfg, task, tokenizer, policy.config.block_size)

    local_batch = distributed.share(cfg.batch_size, d, "batch_size")
    if local_batch % cfg.n_minibatches:
        raise ValueError(f"--batch_size={cfg.batch_size} over {d.world} ranks gives {local_batch} prompts per rank, "
                         f"not divisible by --n_minibatches={cfg.n_minibatches}")
    minibatch_size = local_batch // cfg.n_minibatches
    policy_train = distributed.wrap(policy, d, cfg.fsdp)  # what the update's forward and backward go through
    value_train = distributed.wrap(value_model, d, cfg.fsdp)
    value_lr = cfg.learning_rate if cfg.value_learning_rate < 0 else cfg.value_learning_rate
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr, eps=cfg.adam_eps, fused=not cfg.fsdp)
                  for m, lr in ((policy_train, cfg.learning_rate), (value_train, value_lr))]
    kl_ctl = rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else None
    kl_coef = cfg.kl_coef

    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    state = resume["state"] if resume else {}
    metrics = runs.Metrics(cfg.out_dir, state.get("metrics", []), owned=d.is_main and not cfg.overwrite)
    skips = runs.Skips(cfg.max_bad_steps, "update", state.get("skips"))
    order = list(range(len(train_ids)))
    rng.shuffle(order)
    if resume:
        for m, opt, s in zip((policy_train, value_train), optimizers, state["optimizers"]):
            distributed.load_optimizer_state(m, opt, s, cfg.fsdp)
        runs.set_rng_state(runs.rank_state(state["rng"], d), rng, gen)
        kl_coef = state["kl_coef"]
        if kl_ctl is not None:
            kl_ctl.value = kl_coef
        print(f"resuming {cfg.out_dir} at iteration {resume['step']} of {cfg.iterations}")

    def save(it, finished):
        """Policy and value model in one file: a crash can never pair one iteration's policy with
        another's value model. Every rank calls it (FSDP gathers the shards); rank 0 writes."""
        weights = [distributed.model_state(m, cfg.fsdp) for m in (policy_train, value_train)]
        train_state = None if finished else {
            "optimizers": [distributed.optimizer_state(m, opt, cfg.fsdp)
                           for m, opt in zip((policy_train, value_train), optimizers)],
            "rng": distributed.all_gather_objects(runs.rng_state(rng, gen)), "kl_coef": kl_coef,
            "metrics": metrics.rows, "skips": skips.state()}
        if d.is_main:
            save_checkpoint(ckpt_path, policy, tokenizer, cfg, it, finished=finished, state=train_state,
                            value_model=value_model, weights=weights[0], value_weights=weights[1],
                            total_steps=cfg.iterations)
            metrics.own()

    def ptx_batch():
        """This rank's share of a batch of demonstrations for PPO-ptx, as large as a minibatch."""
        picks = [ptx[rng.randrange(len(ptx))] for _ in range(minibatch_size * d.world)]
        idx, targets = sft_batch(distributed.my_slice(picks, d), tokenizer.pad_id)
        return idx.to(device), targets.to(device)

    def mean(x):
        """The mean over all ranks of a per-rank mean (every rank holds an equal share of the batch)."""
        return distributed.all_sum(torch.as_tensor(x, dtype=torch.float32, device=device)) / d.world

    start_it = resume["step"] + 1 if resume else 1
    for it in range(start_it, cfg.iterations + 1):
        t_it = time.time()
        # 1. rollout: a response per prompt from the current policy, at the sampling temperature
        batch = distributed.my_slice([order[((it - 1) * cfg.batch_size + i) % len(order)]
                                      for i in range(cfg.batch_size)], d)
        prompt_idx, start = left_pad([train_ids[i] for i in batch], tokenizer.pad_id)
        prompt_idx, start = prompt_idx.to(device), start.to(device)
        policy.eval()
        with torch.no_grad(), distributed.full_weights(policy_train), autocast():
            out = policy.generate(prompt_idx, cfg.max_new_tokens, start=start, temperature=cfg.temperature,
                                  eos_id=tokenizer.eos_id if cfg.stop_at_eos else None, pad_id=tokenizer.pad_id,
                                  generator=gen)
        policy.train()
        P = prompt_idx.size(1)
        seq = torch.cat([prompt_idx, out.tokens], 1)  # (B, P + R): left-padded prompt, response, pad after EOS
        mask = out.mask  # (B, R) True on response tokens, EOS included
        targets = out.tokens.masked_fill(~mask, IGNORE_INDEX)
        lengths = mask.sum(1)
        ended = (out.tokens == tokenizer.eos_id).any(1)
        t_rollout = time.time() - t_it

        # 2. score: reward at the EOS token, log-probs of the reference, values. The policy's own
        # log-probs at the sampling temperature came with the samples, from the op and precision the
        # update uses (GPT.generate): no second forward pass, and a first ratio of exactly 1
        old_logprobs = out.logprobs
        with torch.no_grad(), distributed.full_weights(value_train):
            def score(rows, seq, start, P):  # some rows of the batch (in parts of similar prompt lengths)
                return (response_logprobs(ref_policy, seq, start, P, targets[rows], cfg.temperature, autocast),
                        response_values(value_train, seq, start, P, autocast),
                        reward_scores(reward_model, seq, start, P, lengths[rows], autocast))
            ref_logprobs, old_values, rm_scores = in_parts(cfg.micro_batches, seq, start, P, score)
            # the EOS trick: a response that never ended gets a fixed score instead of the RM's
            scores = rl.eos_penalty(rm_scores, ended, cfg.eos_penalty_score) if cfg.stop_at_eos else rm_scores

            # 3. rewards: the per-token KL penalty, and the score at the last token
            kl = rl.kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
            rewards = rl.shaped_rewards(scores, kl, mask, kl_coef)

            # 4. GAE; returns = advantages + values; advantages whitened over the whole batch (all ranks)
            advantages, returns = rl.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = rl.masked_whiten(advantages, mask, reduce=distributed.all_sum)
        t_score = time.time() - t_it - t_rollout

        finite = distributed.all_sum(torch.stack([rewards.isfinite().all(), advantages.isfinite().all()]).all().float())
        stats = first_error = None
        if finite.item() < d.world:  # a rank with non-finite rewards: every rank skips, so they stay in step
            print(f"iteration {it}: non-finite rewards or advantages; skipping this update "
                  f"(the last checkpoint is kept)")
        else:
            # 5. update: epochs over shuffled minibatches of this rank's share (minirlhf/ppo.py)
            rollout = ppo.Rollout(seq, start, P, targets, mask, old_logprobs, old_values, advantages, returns)
            stats, first_error = ppo.update(policy_train, value_train, optimizers, rollout, epochs=cfg.ppo_epochs,
                                            n_minibatches=cfg.n_minibatches, clip_range=cfg.clip_range,
                                            vf_clip_range=cfg.vf_clip_range, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                                            temperature=cfg.temperature, grad_clip=cfg.grad_clip, autocast=autocast,
                                            d=d, ptx_batch=ptx_batch if ptx else None, ptx_coef=cfg.ptx_coef,
                                            micro_batches=cfg.micro_batches)
        t_update = time.time() - t_it - t_rollout - t_score

        # the adaptive controller sees the KL per response of the whole batch (Ziegler et al. 2019)
        mean_kl = mean(kl.sum(1).mean()).item()
        if kl_ctl is not None:
            kl_coef = kl_ctl.update(mean_kl, cfg.batch_size)

        # 6. log: every number is over the whole batch (all ranks)
        row = {"iteration": it,
               "objective/rm_score": mean(rm_scores.mean()).item(), "objective/score": mean(scores.mean()).item(),
               "objective/kl": mean_kl, "objective/kl_coef": kl_coef,
               "objective/rlhf_reward": mean((scores - kl_coef * kl.sum(1)).mean()).item(),
               "val/explained_variance": rl.explained_variance(old_values, returns, mask, distributed.all_sum),
               "charts/response_length": mean(lengths.float().mean()).item(),
               "charts/ended": mean(ended.float().mean()).item(),
               "charts/tokens_per_s": seq.numel() * d.world / (time.time() - t_it),
               "charts/skipped_updates": skips.total + (stats is None),
               "time/rollout": t_rollout, "time/score": t_score, "time/update": t_update,
               "time/iteration": time.time() - t_it}
        if stats:  # and max |log pi - log pi_old| at the first minibatch: fp noise unless rollout and update disagree
            row.update(stats, **{"debug/first_minibatch_logprob_error": first_error.item()})
        if builtin:
            texts = [tokenizer.decode([t for t, m in zip(toks, msk) if m])
                     for toks, msk in zip(out.tokens.tolist(), mask.tolist())]
            row["objective/gold"] = mean(sum(task.gold_score(train_prompts[i], t, e)
                                             for i, t, e in zip(batch, texts, ended.tolist())) / len(batch)).item()
        metrics.append(row)
        eta = (time.time() - t_ppo) / (it - start_it + 1) * (cfg.iterations - it)
        print(iteration_line(row, cfg.iterations, eta), flush=True)
        skips.record(stats is not None, f"iteration {it}")  # after the log line, which shows the skipped update
        if it % cfg.save_interval == 0 or it == cfg.iterations:
            save(it, finished=False)
        if cfg.snapshot_interval and it % cfg.snapshot_interval == 0:
            weights = distributed.model_state(policy_train, cfg.fsdp)
            if d.is_main:
                save_checkpoint(os.path.join(cfg.out_dir, "snapshots", f"iter_{it}.pt"), policy, tokenizer, cfg, it,
                                weights=weights)

    # the report: SFT and PPO answer the same held-out prompts (and, on the built-in tasks, the gold scorer judges)
    result = evaluate.compare({"sft": ref_policy, "ppo": policy_train}, tokenizer, eval_prompts, reference=ref_policy,
                              reward_model=reward_model, task=task, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, eos_penalty_score=cfg.eos_penalty_score,
                              seed=cfg.seed + 3, d=d, device=device, autocast=autocast)
    summary = {**result, "iterations": cfg.iterations, "skipped_updates": skips.total,
               "ppo_seconds": time.time() - t_ppo, "total_seconds": time.time() - t_start,
               "checkpoint": ckpt_path, "config": asdict(cfg)}
    if d.is_main:
        runs.write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        png = evaluate.plot_curves(metrics.rows, os.path.join(cfg.out_dir, "curves.png"))
        report = write_ppo_report(os.path.join(cfg.out_dir, "report.md"), summary, task, png)
        print(report)
    save(cfg.iterations, finished=True)
    print(f"done in {format_eta(time.time() - t_start)} (PPO {format_eta(summary['ppo_seconds'])}): "
          f"{cfg.out_dir}/report.md, {cfg.out_dir}/summary.json")
    distributed.shutdown()


if __name__ == "__main__":
    run(main, Config, "train_ppo.py", task_defaults="ppo")
