"""TRL baseline for benchmarks/bench_ppo.py: one PPO iteration of TRL 1.12's PPOTrainer on the CPU.

This script runs Hugging Face TRL's own PPOTrainer (``trl.experimental.ppo`` in TRL 1.12) on the
same fixed workload that bench_ppo.py times for minirlhf, so the two can be compared in one run on
one machine. It is standalone: it does not import minirlhf, and it needs its own virtual
environment (TRL pulls in transformers/accelerate/datasets, which minirlhf does not depend on).

Install (outside the repository; torch first, so that pip takes the local CPU wheel instead of
resolving a bare ``torch`` requirement to the multi-GB CUDA build)::

    python3 -m venv /work/trl-venv
    /work/trl-venv/bin/pip install torch==2.13.0
    /work/trl-venv/bin/pip install trl==1.12.0     # brings transformers, accelerate, datasets

    # check that torch was left alone:
    /work/trl-venv/bin/pip list | grep -E '^(torch|trl|transformers|accelerate) '

Run::

    /work/trl-venv/bin/python benchmarks/trl_baseline.py [--iterations 3] [--threads 2] [--out PATH]

Workload (fixed; it must match bench_ppo.py):

* policy, reference, reward and value models: GPT-2, 4 layers, 4 heads, width 256, vocab 512,
  n_positions 256, fp32, random init, dropout 0 everywhere. Policy and reference are
  ``GPT2LMHeadModel`` (the reference is a copy of the policy); reward and value are
  ``GPT2ForSequenceClassification`` with ``num_labels=1`` (the value model is a copy of the reward
  model).
* 64 random prompts of 32 tokens each, token ids in [0, 510), no padding. The tokenizer is built
  locally (no Hub access): a WordLevel vocabulary of 512 tokens, eos id 510, pad id 511.
* one iteration = one rollout of the 64 prompts with exactly 32 sampled tokens each (temperature
  1.0, no top-k/top-p, no stopping at eos, the pad id never sampled), scoring (reference log-probs, values, rewards,
  GAE),
  then 4 PPO epochs x 4 minibatches of 16 = 16 optimizer steps.
* CPU only, ``torch.set_num_threads(--threads)`` (2 by default).

It runs 1 warm-up iteration plus ``--iterations`` timed ones (TRL's ``total_episodes`` = 64 x
(1 + iterations)) and reports each timed iteration's wall time and their median. An iteration is
measured between consecutive ``on_step_end`` callbacks (the first from ``on_train_begin``), so it
covers everything TRL does per update: rollout, scoring, the 16 optimizer steps, its metrics
logging and its per-update cleanup (``gc.collect``). The split is measured by wrapping functions
that PPOTrainer.train looks up in its module at call time:

* ``generate``: the ``batch_generation`` call (sampling the 32 tokens for all 64 prompts);
* ``score``: from the end of generation to the first gradient-enabled ``forward`` call (log-probs
  of the samples, reference/value/reward forward passes, rewards, GAE and whitening);
* ``update``: from that first training ``forward`` to ``on_step_end`` (16 forward/backward/optimizer
  steps plus TRL's metrics logging);
* ``other``: the rest (loading the batch, and the previous update's trailing cleanup).

The four add up to the iteration's time. The same wrappers check the workload on every iteration:
one generation call of 64 prompts, responses of exactly 32 tokens with no pad token among them,
16 training forwards of 16 rows each, and 16 real optimizer steps (counted with a step hook on the
underlying torch optimizer, so an update skipped by accelerate's gradient accumulation would not
count). A violated check aborts the run.
"""

import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import torch
from trl_common import CPU_ARGS, PAD_ID, SEED, VOCAB, build_tokenizer, gpt2_config, parse_args, report

N_PROMPTS = 64
PROMPT_LEN = 32
RESPONSE_LEN = 32
MINIBATCH = 16
NUM_MINI_BATCHES = N_PROMPTS // MINIBATCH  # 4
PPO_EPOCHS = 4


def build_models(activation):
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    config = lambda **kw: gpt2_config(activation_function=activation, **kw)  # noqa: E731
    torch.manual_seed(SEED)
    policy = GPT2LMHeadModel(config()).float()
    ref_policy = copy.deepcopy(policy)
    reward_model = GPT2ForSequenceClassification(config(num_labels=1)).float()
    value_model = copy.deepcopy(reward_model)
    # Responses must be exactly 32 real tokens. TRL stops nothing when stop_token/stop_token_id are
    # None (it sets the policy's generation_config.eos_token_id to None), but it treats any pad
    # token inside a response as the end of that response (masks, sequence lengths, reward
    # position). A random policy samples the pad id about once per 512 tokens, so pad is suppressed
    # at sampling, as minirlhf's sampler does (pad logit = -inf). transformers fills the
    # GenerationConfig that TRL builds in train() from model.generation_config for fields TRL
    # leaves unset, which is how this reaches generation. Checked on every iteration below.
    # (Side effect, no cost in time: TRL takes the rollout log-probs from generate's processed
    # scores, which then exclude pad, so its first-epoch PPO ratio is ~1 - 1/512, not exactly 1.)
    policy.generation_config.suppress_tokens = [PAD_ID]
    return policy, ref_policy, reward_model, value_model


def build_dataset():
    from datasets import Dataset

    g = torch.Generator().manual_seed(SEED)
    prompts = torch.randint(0, VOCAB - 2, (N_PROMPTS, PROMPT_LEN), generator=g)
    return Dataset.from_dict({"input_ids": prompts.tolist()})


def ppo_config(output_dir, iterations):
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=output_dir,
        # TRL's batch arithmetic (ppo_trainer.py): rollout size = local_batch_size =
        # per_device_train_batch_size * gradient_accumulation_steps (x world size 1), minibatch =
        # local_batch_size / num_mini_batches, and each minibatch is cut into micro-batches of
        # per_device_train_batch_size. So 64 prompts per rollout in 4 minibatches of 16 with one
        # optimizer step per minibatch is per_device_train_batch_size=64, accumulation 1,
        # num_mini_batches=4 (one micro-batch of 16 per minibatch). per_device_train_batch_size=16
        # with accumulation 4 would also roll out 64, but accelerate would then step the optimizer
        # only every 4th minibatch (4 steps per iteration instead of 16).
        per_device_train_batch_size=N_PROMPTS,
        gradient_accumulation_steps=1,
        num_mini_batches=NUM_MINI_BATCHES,
        num_ppo_epochs=PPO_EPOCHS,
        local_rollout_forward_batch_size=N_PROMPTS,  # score all 64 in one forward per model
        # one warm-up + timed iterations; the dataset (64 prompts) is one rollout batch
        total_episodes=N_PROMPTS * (1 + iterations),
        response_length=RESPONSE_LEN,
        temperature=1.0,           # TRL's default is 0.7
        stop_token=None,           # no stopping at eos: every response is 32 tokens
        stop_token_id=None,
        missing_eos_penalty=None,
        # kl_coef, kl_estimator, cliprange, vf_coef, gamma, lam, whiten_rewards: TRL defaults
        num_sample_generations=0,  # no sample-generation evals during training
        **CPU_ARGS,
    )


class Timer:
    """Timestamps for one PPOTrainer.train() run, per update, plus the workload checks."""

    def __init__(self):
        self.iter_start = None
        self.iters = []  # dicts: total, generate, score, update, other
        self._reset()

    def _reset(self):
        self.gen_calls = []       # (prompts, response_len, pad tokens in responses)
        self.gen_time = 0.0
        self.gen_end = None
        self.update_start = None
        self.train_forwards = []  # rows per gradient-enabled forward
        self.opt_steps = 0

    def begin(self):
        self.iter_start = time.perf_counter()

    def end(self):
        now = time.perf_counter()
        total = now - self.iter_start
        gen_start = self.gen_end - self.gen_time
        rec = {
            "total": total,
            "generate": self.gen_time,
            "score": self.update_start - self.gen_end,
            "update": now - self.update_start,
            "other": gen_start - self.iter_start,
        }
        checks = {
            "generation_calls": self.gen_calls,
            "train_forward_rows": self.train_forwards,
            "optimizer_steps": self.opt_steps,
        }
        expected = {
            "generation_calls": [(N_PROMPTS, RESPONSE_LEN, 0)],
            "train_forward_rows": [MINIBATCH] * (PPO_EPOCHS * NUM_MINI_BATCHES),
            "optimizer_steps": PPO_EPOCHS * NUM_MINI_BATCHES,
        }
        if checks != expected:
            raise SystemExit(f"workload check failed in iteration {len(self.iters)}: got {checks}, "
                             f"expected {expected}")
        self.iters.append(rec)
        self._reset()
        self.iter_start = now


def instrument(trainer, timer):
    """Wrap the functions PPOTrainer.train calls (module globals) and hook the optimizer."""
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from transformers import TrainerCallback

    orig_batch_generation = ppo_mod.batch_generation
    orig_forward = ppo_mod.forward

    def batch_generation(model, queries, *args, **kwargs):
        t0 = time.perf_counter()
        query_responses, logits = orig_batch_generation(model, queries, *args, **kwargs)
        t1 = time.perf_counter()
        responses = query_responses[:, queries.shape[1]:]
        timer.gen_calls.append((queries.shape[0], responses.shape[1], int((responses == PAD_ID).sum())))
        timer.gen_time += t1 - t0
        timer.gen_end = t1
        return query_responses, logits

    def forward(model, query_responses, pad_token_id):
        if torch.is_grad_enabled():  # the PPO update's policy+value forward (rollout runs under no_grad)
            if timer.update_start is None:
                timer.update_start = time.perf_counter()
            timer.train_forwards.append(query_responses.shape[0])
        return orig_forward(model, query_responses, pad_token_id)

    ppo_mod.batch_generation = batch_generation
    ppo_mod.forward = forward

    def count_step(*_):
        timer.opt_steps += 1

    # trainer.optimizer is accelerate's AcceleratedOptimizer; its .optimizer is the torch one,
    # whose step() runs only when accelerate actually applies an update.
    trainer.optimizer.optimizer.register_step_post_hook(count_step)

    class IterationTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end()

    trainer.add_callback(IterationTimer())


def main():
    args = parse_args(__doc__, "trl_baseline_results.json")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # PPOTrainer lives in trl.experimental in 1.12

    from trl.experimental.ppo import PPOTrainer

    tokenizer = build_tokenizer()
    policy, ref_policy, reward_model, value_model = build_models(args.activation)
    dataset = build_dataset()
    output_dir = tempfile.mkdtemp(prefix="trl_baseline_")
    try:
        config = ppo_config(output_dir, args.iterations)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                             reward_model=reward_model, train_dataset=dataset, value_model=value_model)
        # Guard against TRL's batch arithmetic disagreeing with the workload.
        assert (config.batch_size, config.mini_batch_size, config.num_total_batches) == \
            (N_PROMPTS, MINIBATCH, 1 + args.iterations), \
            (config.batch_size, config.mini_batch_size, config.num_total_batches)
        timer = Timer()
        instrument(trainer, timer)
        torch.set_num_threads(args.threads)  # in case anything above changed it
        trainer.train()
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)

    assert len(timer.iters) == 1 + args.iterations, len(timer.iters)
    phases = ["total", "generate", "score", "update", "other"]
    warmup, timed, median, versions = report(
        "PPOTrainer", timer.iters, phases, f"{N_PROMPTS} prompts x {PROMPT_LEN} tokens, {RESPONSE_LEN} new tokens, "
        f"{PPO_EPOCHS} epochs x {NUM_MINI_BATCHES} minibatches of {MINIBATCH}")

    result = {
        "implementation": "trl.experimental.ppo.PPOTrainer",
        "versions": {**versions, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "workload": {"prompts": N_PROMPTS, "prompt_len": PROMPT_LEN, "response_len": RESPONSE_LEN,
                     "ppo_epochs": PPO_EPOCHS, "mini_batches": NUM_MINI_BATCHES, "minibatch_size": MINIBATCH,
                     "optimizer_steps_per_iteration": PPO_EPOCHS * NUM_MINI_BATCHES,
                     "model": "GPT-2 4 layers, 4 heads, width 256, vocab 512, n_positions 256, fp32",
                     "pad_suppressed_in_sampling": True,
                     "temperature": config.temperature, "kl_coef": config.kl_coef,
                     "optimizer": getattr(config.optim, "value", str(config.optim)),
                     "learning_rate": config.learning_rate},
        "warmup_iteration_s": warmup["total"],
        "iteration_s": [it["total"] for it in timed],
        "median_iteration_s": median["total"],
        "split_s": {"iterations": [{k: it[k] for k in phases[1:]} for it in timed],
                    "median": {k: median[k] for k in phases[1:]},
                    "warmup": {k: warmup[k] for k in phases[1:]}},
        "checks": "every iteration: 1 generation of 64 prompts x 32 new tokens with no pad token, "
                  "16 training forwards of 16 rows, 16 optimizer steps",
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
