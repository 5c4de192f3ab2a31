"""TRL baseline for benchmarks/bench_grpo.py: GRPO iterations of TRL's GRPOTrainer on the CPU.

Runs Hugging Face TRL's own GRPOTrainer on the fixed workload that bench_grpo.py times for minirlhf
(`train_ppo.py --advantage=grpo`), so that the two are compared in one run on one machine. Standalone:
it does not import minirlhf, and needs TRL's virtual environment (transformers, accelerate, datasets):

    python3 -m venv /work/trl116-venv
    /work/trl116-venv/bin/pip install torch==2.13.0     # first, so that pip keeps the CPU wheel
    /work/trl116-venv/bin/pip install trl==1.16.0

    /work/trl116-venv/bin/python benchmarks/trl_grpo_baseline.py [--iterations 3] [--threads 2] [--out PATH]

Workload (it must match bench_grpo.py):

* policy and reference: GPT2LMHeadModel, 4 layers, 4 heads, width 256, vocab 512, 256 positions, fp32,
  random init, no dropout (the policy is saved and passed by path, as TRL builds the reference from it);
  reward: GPT2ForSequenceClassification with one label, random init.
* one iteration = one generation of 16 prompts x 4 completions (num_generations=4) = 64 completions of
  exactly 32 sampled tokens (temperature 1, no top-k/top-p; EOS and pad suppressed, so none stops early),
  scoring (old log-probs, reference log-probs, the reward model, group-normalized advantages), then 4
  optimizer steps on minibatches of 16 completions (per_device_train_batch_size=16, steps_per_generation=4,
  gradient accumulation 1, num_iterations=1); beta (KL coefficient) 0.04; TRL's default loss (dapo).
* prompts: 16 random strings of 32 tokens ("t<i> " words), the same ones every iteration.

It runs 1 warm-up iteration plus --iterations timed ones. An iteration is the time between every 4th
on_step_end callback (the first from on_train_begin): generation, scoring, the 4 optimizer steps and what
TRL does around them. The split comes from wrapping the trainer's _generate (generation) and
_generate_and_score_completions (generation + scoring); update = the rest. Every iteration is checked: one
generation of 64 completions of exactly 32 tokens, 4 training forwards of 16 completions, 4 optimizer steps
(a step hook on the torch optimizer). A violated check aborts the run.
"""
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import torch
from trl_common import CPU_ARGS, EOS_ID, PAD_ID, SEED, VOCAB, build_tokenizer, gpt2_config, parse_args, report

N_PROMPTS, GROUP, PROMPT_LEN, RESPONSE_LEN, MINIBATCH, BETA = 16, 4, 32, 32, 16, 0.04
STEPS = N_PROMPTS * GROUP // MINIBATCH  # optimizer steps per iteration: 4


def build_models(model_dir, activation):
    """The policy, saved to model_dir (TRL loads policy and reference from there), and the reward model."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(SEED)
    GPT2LMHeadModel(gpt2_config(activation_function=activation)).float().save_pretrained(model_dir)
    return GPT2ForSequenceClassification(gpt2_config(num_labels=1, activation_function=activation)).float()


def build_dataset():
    """16 prompts of 32 words; the trailing space keeps the completion's first word apart when TRL joins
    prompt and completion text for the reward model."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, VOCAB - 2, (N_PROMPTS, PROMPT_LEN), generator=g)
    return Dataset.from_dict({"prompt": ["".join(f"t{i} " for i in row.tolist()) for row in ids]})


def grpo_config(output_dir, iterations):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=MINIBATCH,
        gradient_accumulation_steps=1,
        steps_per_generation=STEPS,  # one generation of 64 completions feeds 4 optimizer steps
        num_generations=GROUP,
        num_iterations=1,
        max_steps=STEPS * (1 + iterations),
        max_completion_length=RESPONSE_LEN,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=BETA,  # TRL's default is 0 (no reference model); minirlhf's run keeps the KL term
        generation_kwargs={"suppress_tokens": [EOS_ID, PAD_ID]},  # every completion is 32 tokens
        log_completions=False,
        **CPU_ARGS,
    )


class Timer:
    """Timestamps of one GRPOTrainer.train() run, per generation cycle, plus the workload checks."""

    def __init__(self):
        self.iters, self.steps, self.start = [], 0, None
        self._reset()

    def _reset(self):
        self.generate = self.generate_and_score = 0.0
        self.completions = []   # (completions, lengths) per generation
        self.train_rows = []    # completions per training forward
        self.opt_steps = 0

    def step_end(self):
        self.steps += 1
        if self.steps % STEPS:
            return
        now = time.perf_counter()
        checks = {"generations": self.completions, "train_rows": self.train_rows, "optimizer_steps": self.opt_steps}
        expected = {"generations": [(N_PROMPTS * GROUP, {RESPONSE_LEN})], "train_rows": [MINIBATCH] * STEPS,
                    "optimizer_steps": STEPS}
        if checks != expected:
            raise SystemExit(f"workload check failed in iteration {len(self.iters)}: got {checks}, expected {expected}")
        total = now - self.start
        self.iters.append({"total": total, "generate": self.generate,
                           "score": self.generate_and_score - self.generate, "update": total - self.generate_and_score})
        self._reset()
        self.start = now


def instrument(trainer, timer):
    """Wrap the trainer's generation and loss (instance attributes shadow its methods) and hook the optimizer."""
    from transformers import TrainerCallback

    generate, generate_and_score, compute_loss = (trainer._generate, trainer._generate_and_score_completions,
                                                  trainer.compute_loss)

    def timed_generate(prompts):
        t0 = time.perf_counter()
        out = generate(prompts)
        timer.generate += time.perf_counter() - t0
        completion_ids = out[1]
        timer.completions.append((len(completion_ids), {len(c) for c in completion_ids}))
        return out

    def timed_generate_and_score(inputs):
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        timer.generate_and_score += time.perf_counter() - t0
        return out

    def counted_loss(model, inputs, *args, **kwargs):
        timer.train_rows.append(inputs["completion_ids"].shape[0])
        return compute_loss(model, inputs, *args, **kwargs)

    trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_generate_and_score
    trainer.compute_loss = counted_loss

    def count_step(*_):
        timer.opt_steps += 1

    trainer.create_optimizer()  # built here, not in train(), so that its step can be counted
    trainer.optimizer.register_step_post_hook(count_step)

    class IterationTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timer.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            timer.step_end()

    trainer.add_callback(IterationTimer())


def main():
    args = parse_args(__doc__, "trl_grpo_baseline_results.json")
    torch.set_num_threads(args.threads)

    from trl import GRPOTrainer

    tokenizer = build_tokenizer()
    output_dir = tempfile.mkdtemp(prefix="trl_grpo_baseline_")
    try:
        model_dir = os.path.join(output_dir, "policy")
        reward_model = build_models(model_dir, args.activation)
        config = grpo_config(output_dir, args.iterations)
        trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_model, args=config, train_dataset=build_dataset(),
                              processing_class=tokenizer, reward_processing_classes=tokenizer)
        assert trainer.ref_model is not None and config.generation_batch_size == N_PROMPTS * GROUP, \
            (trainer.ref_model, config.generation_batch_size)
        timer = Timer()
        instrument(trainer, timer)
        torch.set_num_threads(args.threads)  # in case anything above changed it
        trainer.train()
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)

    assert len(timer.iters) == 1 + args.iterations, len(timer.iters)
    phases = ["total", "generate", "score", "update"]
    warmup, timed, median, versions = report(
        "GRPOTrainer", timer.iters, phases,
        f"{N_PROMPTS} prompts x {GROUP} completions of {RESPONSE_LEN} tokens, {STEPS} steps of {MINIBATCH}")
    result = {
        "implementation": "trl.GRPOTrainer",
        "versions": {**versions, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "workload": {"prompts": N_PROMPTS, "group_size": GROUP, "prompt_len": PROMPT_LEN,
                     "response_len": RESPONSE_LEN, "minibatch_size": MINIBATCH, "optimizer_steps_per_iteration": STEPS,
                     "beta": BETA, "loss_type": config.loss_type, "scale_rewards": config.scale_rewards,
                     "model": "GPT-2 4 layers, 4 heads, width 256, vocab 512, n_positions 256, fp32"},
        "warmup_iteration_s": warmup["total"],
        "iteration_s": [it["total"] for it in timed],
        "median_iteration_s": median["total"],
        "split_s": {"iterations": [{k: it[k] for k in phases[1:]} for it in timed],
                    "median": {k: median[k] for k in phases[1:]}},
        "checks": "every iteration: 1 generation of 64 completions x 32 tokens, 4 training forwards of 16, "
                  "4 optimizer steps",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
