"""The gold oracle in the reward model's place (train_ppo.py --reward=gold): the task's gold score over the labelers'
temperature, read from prompt + response tokens exactly as a reward model's score is read."""
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from minirlhf.data import encode_prompt, left_pad
from minirlhf.model import GPT, GPTConfig
from minirlhf.oracle import GoldReward, gold_reward
from minirlhf.scoring import reward_scores
from minirlhf.tasks import dialogue, instruct
from minirlhf.tokenizer import get_tokenizer

tok = get_tokenizer("bytes")
CFG = SimpleNamespace(seed=0, temperature=0.7, max_new_tokens=8)
SORT = {"prompt": "sort 3 1 2\n"}
CHAT = {"messages": [{"role": "user", "content": "upper ojub"}, {"role": "assistant", "content": "OJUB"},
                     {"role": "user", "content": "now reverse"}]}


def ids(text):
    return tok.encode(text)


@pytest.mark.parametrize("task, record, right, wrong", [(instruct, SORT, "1 2 3", "1 3 2"),
                                                        (dialogue, CHAT, "BUJO", "BUOJ")])
def test_a_score_is_gold_over_the_labelers_temperature(task, record, right, wrong):
    oracle = GoldReward(task, tok, [record])
    oracle.bias = 0.25
    prompt, eos, pad = encode_prompt(tok, record), tok.eos_id, tok.pad_id
    for text, ended in ((right, True), (wrong, True), (right, False), (wrong, False)):
        want = task.gold_score(record, text, ended) / task.LABELER_TEMPERATURE - 0.25
        # what follows the first EOS (pads, or anything) is not the response's
        for tail in ([], [pad, pad], [eos] + ids(" no")) if ended else ([],):
            assert oracle.score(prompt, ids(text) + [eos] * ended + tail) == pytest.approx(want)
    assert oracle.score(prompt, ids(right) + [eos]) > oracle.score(prompt, ids(wrong) + [eos])
    assert oracle.score(prompt, ids(right) + [eos]) == pytest.approx(1 / task.LABELER_TEMPERATURE - 0.25)


def test_reward_scores_reads_it_like_a_reward_model():
    """Left-padded prompts of different lengths and responses with pads after EOS, as a PPO rollout has them."""
    records = [SORT, {"prompt": "add 12 30\n"}, {"prompt": "upper abc\n"}]
    oracle = GoldReward(instruct, tok, records)
    responses = [ids("1 2 3") + [tok.eos_id], ids("41") + [tok.eos_id, tok.pad_id, tok.pad_id], ids("ABCD")]
    prompt_idx, start = left_pad([encode_prompt(tok, r) for r in records], tok.pad_id)
    R = max(map(len, responses))
    tokens = torch.tensor([r + [tok.pad_id] * (R - len(r)) for r in responses])
    lengths = torch.tensor([len(ids("1 2 3")) + 1, len(ids("41")) + 1, len(ids("ABCD"))])
    seq = torch.cat([prompt_idx, tokens], 1)
    got = reward_scores(oracle, seq, start, prompt_idx.size(1), lengths, nullcontext)
    want = [instruct.gold_score(SORT, "1 2 3", True), instruct.gold_score(records[1], "41", True),
            instruct.gold_score(records[2], "ABCD", False)]
    assert got.tolist() == pytest.approx([w / instruct.LABELER_TEMPERATURE for w in want])
    assert want[0] == 1.0 and 0 < want[1] < 1 and 0 < want[2] < 1


def test_a_prompt_it_was_not_given_is_an_error():
    oracle = GoldReward(instruct, tok, [SORT])
    with pytest.raises(ValueError, match=r"--reward=gold: no prompt record for 'sort 1 2\\n'"):
        oracle.score(ids("sort 1 2\n"), ids("1 2") + [tok.eos_id])


def test_its_zero_is_the_sft_samples_mean(monkeypatch):
    """As train_rm.py's bias does for a learned reward model: the SFT model's samples on the first n_bias_samples
    prompts score 0 on average (here the sampler's answers are given: right, wrong, unended)."""
    records = [SORT, {"prompt": "add 12 30\n"}, {"prompt": "upper abc\n"}, {"prompt": "reverse abc\n"}]
    answers = [{"ids": ids("1 2 3"), "ended": True}, {"ids": ids("41"), "ended": True},
               {"ids": ids("ABC"), "ended": False}]
    asked, how = [], {}

    def fake_sample(model, tokenizer, prompts, **kw):
        asked.extend(prompts)
        how.update(kw)
        return answers
    monkeypatch.setattr("minirlhf.oracle.sample", fake_sample)
    sft = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64))
    oracle = gold_reward(instruct, tok, records, sft, CFG, nullcontext, n_bias_samples=3)
    assert asked == [encode_prompt(tok, r) for r in records[:3]]  # PPO's samples, as PPO draws them
    assert how["temperature"] == 0.7 and how["max_new_tokens"] == 8
    golds = [instruct.gold_score(r, tok.decode(a["ids"]), a["ended"]) for r, a in zip(records, answers)]
    assert oracle.bias == pytest.approx(sum(golds) / 3 / instruct.LABELER_TEMPERATURE)
    scores = [oracle.score(p, a["ids"] + [tok.eos_id] * a["ended"]) for p, a in zip(asked, answers)]
    assert sum(scores) == pytest.approx(0, abs=1e-9) and len(set(golds)) == 3


def test_prompts_the_gold_scorer_cannot_judge_are_an_error():
    with pytest.raises(ValueError, match="--reward=gold: the instruct task's gold scorer cannot judge these prompts"):
        gold_reward(instruct, tok, [{"prompt": "write a poem\n"}], None, CFG, nullcontext)
