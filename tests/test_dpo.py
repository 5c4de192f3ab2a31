"""experiments/dpo.py: the DPO loss against a plain implementation over each ranking's pairs, and a tiny run on a
reward model's own comparisons (remade exactly) whose loss falls."""
import itertools
import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_experiments import run, tiny_rm, tiny_sft

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import dpo  # noqa: E402

from minirlhf.model import GPT, GPTConfig  # noqa: E402

V, PAD = 30, 29


def tiny_gpt(seed):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=V, n_layer=1, n_head=2, n_embd=16, attn_impl="torch")).eval()


@st.composite
def ranked_groups(draw):
    groups = []
    for _ in range(draw(st.integers(1, 3))):
        prompt = draw(st.lists(st.integers(0, V - 2), min_size=1, max_size=5))
        k = draw(st.integers(2, 4))
        responses = [draw(st.lists(st.integers(0, V - 2), min_size=1, max_size=6)) for _ in range(k)]
        groups.append((prompt, responses, draw(st.permutations(range(k)))))
    return groups


def plain_logprob(model, prompt, response):
    """log pi(response | prompt) from one unpadded forward pass and a log-softmax."""
    ids = torch.tensor([prompt + response])
    logits = model(ids[:, :-1])[0]
    return sum(F.log_softmax(logits[len(prompt) - 1 + t], -1)[tok].item() for t, tok in enumerate(response))


@settings(max_examples=15, deadline=None)
@given(ranked_groups(), st.sampled_from([0.1, 0.5, 2.0]))
def test_the_loss_is_the_mean_over_each_rankings_pairs_of_plain_dpo(groups, beta):
    policy, ref = tiny_gpt(0), tiny_gpt(1)
    idx, targets, chosen, rejected, weights = dpo.pair_batch(groups, PAD)
    with torch.no_grad():
        logp, ref_logp = (dpo.sequence_logprobs(m, idx, targets) for m in (policy, ref))
        loss, margin = dpo.dpo_loss(logp, ref_logp, chosen, rejected, weights, beta)
    want = 0.0
    for prompt, responses, ranking in groups:  # a ranking best first: every earlier one beats every later one
        pairs = list(itertools.combinations(ranking, 2))
        for w, lose in pairs:
            gain = [plain_logprob(policy, prompt, responses[i]) - plain_logprob(ref, prompt, responses[i])
                    for i in (w, lose)]
            m = beta * (gain[0] - gain[1])
            want += -math.log(1 / (1 + math.exp(-m))) / len(pairs)
    assert loss.item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert len(margin) == sum(len(r) * (len(r) - 1) // 2 for _, r, _ in groups)


def test_the_policy_equal_to_its_reference_scores_log_2():
    groups = [([1, 2], [[3, 4], [5], [6, 7, 8]], [2, 0, 1])]
    model = tiny_gpt(0)
    idx, targets, chosen, rejected, weights = dpo.pair_batch(groups, PAD)
    logp = dpo.sequence_logprobs(model, idx, targets)
    loss, margin = dpo.dpo_loss(logp, logp, chosen, rejected, weights, 0.1)
    assert loss.item() == pytest.approx(math.log(2)) and margin.abs().max() == 0


@pytest.mark.slow
def test_a_tiny_run_on_the_reward_models_comparisons_learns(tmp_path):
    sft = tiny_sft(tmp_path)
    rm = tiny_rm(tmp_path, sft)
    out = tmp_path / "dpo"
    done = run("experiments/dpo.py", f"--out_dir={out}", f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", "--epochs=8",
               "--batch_size=8", "--learning_rate=3e-3", "--warmup_iters=2", "--n_eval=16", "--max_new_tokens=8",
               "--plot=false")
    rm_summary = json.loads((rm.parent / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train_pairs"] == rm_summary["n_train_pairs"]  # the RM's comparisons, each as its pairs
    curve = summary["curve"]
    assert curve[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)  # it starts as its reference
    first, last = [r["train/loss"] for r in curve[1:5]], [r["train/loss"] for r in curve[-4:]]
    assert sum(last) / 4 < 0.8 * sum(first) / 4  # the loss falls
    assert summary["dpo_kl"] > 0 and "win_rate_dpo_sampled" in summary
    assert "DPO on 24 ranked prompts" in done.stdout
    # a reward model whose comparisons cannot be remade (its summary says otherwise) is an error, not other data
    rm_summary["labeler_agreement"] += 0.01
    (rm.parent / "summary.json").write_text(json.dumps(rm_summary))
    again = run("experiments/dpo.py", f"--out_dir={out}2", f"--sft_ckpt={sft}", f"--rm_ckpt={rm}", "--plot=false",
                ok=False)
    assert again.returncode == 2 and "its comparisons could not be remade here" in again.stderr
