"""
The gold scorer in the reward model's place (`train_ppo.py --reward=gold`): an oracle run, which shows how much of
what PPO could reach a learned reward model holds back. The built-in labelers rank responses with weights
exp(gold / T) (tasks/labelers.py), so the reward that a perfect reward model would learn from their comparisons is
gold / T up to a constant; as train_rm.py does for a learned one, the constant makes the SFT model's samples score 0
on average. PPO, its KL penalty and its value model (still from --rm_ckpt) are otherwise unchanged; the report
says which reward PPO had, and its best-of-n ceiling is then ranked by gold.
"""
import torch

from minirlhf.data import encode_prompt
from minirlhf.sampling import sample
from minirlhf.tasks import scorable


class GoldReward(torch.nn.Module):
    """Called as a reward model is, on prompt + response tokens; every position of a row holds its response's score
    (the text before the first EOS), so reading it at the EOS, as PPO and best-of-n do, gives that score."""

    def __init__(self, task, tokenizer, records):
        super().__init__()
        self.task, self.tokenizer, self.bias = task, tokenizer, 0.0
        self.records = {tuple(encode_prompt(tokenizer, r)): r for r in records}  # prompt tokens -> its record
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # where callers look for the device

    def score(self, prompt_ids, response_ids):
        """gold / T - bias of one response (token ids, pads and anything after its first EOS ignored)."""
        record = self.records.get(tuple(prompt_ids))
        if record is None:
            raise ValueError(f"--reward=gold: no prompt record for {self.tokenizer.decode(prompt_ids)[:60]!r}")
        ended = self.tokenizer.eos_id in response_ids
        text = self.tokenizer.decode(response_ids[:response_ids.index(self.tokenizer.eos_id)] if ended else
                                     response_ids)  # decode drops pads
        return self.task.gold_score(record, text, ended) / self.task.LABELER_TEMPERATURE - self.bias

    def forward(self, idx, start, *, last):
        P = idx.size(1) - last
        scores = [self.score(row[s:P], row[P:]) for row, s in zip(idx.tolist(), start.tolist())]
        return torch.tensor(scores, dtype=torch.float32, device=idx.device)[:, None].expand(-1, last)


def gold_reward(task, tokenizer, records, sft, cfg, autocast, n_bias_samples=512):
    """The oracle for PPO on these prompt records (the training and the report's), its bias set on SFT samples of the
    first n_bias_samples (as PPO samples: cfg.temperature, cfg.max_new_tokens). A ValueError if the task's gold scorer
    cannot judge them (user prompts of another task)."""
    if not scorable(task, records):
        raise ValueError(f"--reward=gold: the {task.NAME} task's gold scorer cannot judge these prompts (use "
                         "--reward=rm)")
    oracle = GoldReward(task, tokenizer, records)
    prompts = [encode_prompt(tokenizer, r) for r in records[:n_bias_samples]]
    generator = torch.Generator(sft.lm_head.weight.device).manual_seed(cfg.seed + 5)
    samples = sample(sft, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     generator=generator, autocast=autocast)
    scores = [oracle.score(p, s["ids"] + [tokenizer.eos_id] * s["ended"]) for p, s in zip(prompts, samples)]
    oracle.bias = sum(scores) / len(scores)
    return oracle
