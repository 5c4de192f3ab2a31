"""Properties of the built-in task: gold scorer, splits, demonstrator, simulated labelers."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirlhf.tasks import instruct as tasks
from minirlhf.tasks import labelers, reference
from minirlhf.tasks.instruct import KINDS, LABELER_TEMPERATURE, answer, demonstrate, gold_score, make_prompt

seeds = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(KINDS)


def prompt_of(seed, kind):
    return make_prompt(random.Random(seed), kind)


@pytest.mark.parametrize("prompt, right", [
    ("sort 7 2 9 4\n", "2 4 7 9"), ("sort 2 1 8 1\n", "1 1 2 8"), ("sort 10 9 -3\n", "-3 9 10"),
    ("reverse bajewu\n", "uwejab"), ("reverse rob\n", "bor"),
    ("upper genad pulat\n", "GENAD PULAT"), ("upper ki\n", "KI"),
    ("add 37 5\n", "42"), ("add 96 8\n", "104"), ("add 37 45\n", "82"), ("add -5 3\n", "-2"),
    ("count u in pupolu\n", "2"), ("count z in lukic\n", "0"), ("count a in banana\n", "3"),
    ("add 37 45", "82"),  # the separator is optional for scoring
])
def test_answers_are_recomputed_from_the_prompt(prompt, right):
    assert answer(prompt) == right
    assert gold_score(prompt, right, ended=True) == 1.0


@given(seeds, kinds)
def test_exact_answer_scores_one_and_formats_are_short(seed, kind):
    p = prompt_of(seed, kind)
    assert p.endswith(tasks.SEP) and tasks.parse(p)[0] == kind
    assert gold_score(p, answer(p), ended=True) == 1.0
    # the budget a tiny model on a CPU can afford
    assert len(p.encode()) <= 20 and len(answer(p).encode()) <= 11


@given(seeds, kinds, st.text(max_size=30))
def test_score_in_unit_interval_and_one_only_for_the_exact_answer(seed, kind, response):
    p = prompt_of(seed, kind)
    for ended in (True, False):
        s = gold_score(p, response, ended)
        assert 0.0 <= s <= 1.0
        if response != answer(p) or not ended:
            assert s < 1.0


@given(seeds, kinds)
def test_near_answer_scores_between_wrong_and_exact(seed, kind):
    p = prompt_of(seed, kind)
    near = demonstrate(p, random.Random(seed), error_rate=1.0, ramble_rate=0.0)  # exactly one mistake
    wrong = "#" * len(answer(p))  # no number, no letter, nothing in common
    assert gold_score(p, wrong, True) < gold_score(p, near, True) < gold_score(p, answer(p), True)


@given(seeds, kinds)
def test_flawed_replies_each_score_below_the_right_one(seed, kind):
    p = prompt_of(seed, kind)
    right, flawed = tasks.flawed_replies({"prompt": p}, random.Random(seed))
    assert right == answer(p) and "chatty word" in flawed and flawed["chatty word"].startswith(right)
    # every mistake the demonstrators make of this kind that changes the answer, by name
    names = {m.__name__.lstrip("_").replace("_", " ") for m in tasks._MISTAKES[kind]}
    assert set(flawed) - {"chatty word"} <= names and len(flawed) >= 2
    for reply in flawed.values():
        assert reply != right and gold_score(p, reply, True) < 1.0


@given(seeds, kinds, st.sampled_from(tasks.RAMBLE))
def test_rambling_and_missing_eos_score_below_the_exact_ended_answer(seed, kind, ramble):
    p = prompt_of(seed, kind)
    right = answer(p)
    exact = gold_score(p, right, True)
    assert 0.0 < gold_score(p, right + ramble, True) < exact
    assert 0.0 < gold_score(p, right, False) < exact
    near = demonstrate(p, random.Random(seed), error_rate=1.0)
    assert gold_score(p, near, False) < gold_score(p, near, True)


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 50), st.integers(1, 50))
def test_add_credit_falls_with_distance(a, b, d, more):
    p = f"add {a} {b}\n"
    near, far = a + b + d, a + b + d + more
    assert gold_score(p, str(near), True) > gold_score(p, str(far), True) > 0.0


@pytest.mark.parametrize("prompt", [
    "hello\n", "sort\n", "sort a b\n", "add 1\n", "add one two\n", "count ab in x\n", "reverse two words\n",
    "Sort 3 1\n", "User: sort 3 1\nAssistant: ", "", "upper \n",
])
def test_foreign_prompt_is_a_value_error(prompt):
    with pytest.raises(ValueError, match="not a built-in task prompt"):
        gold_score(prompt, "1", True)
    with pytest.raises(ValueError):
        demonstrate(prompt, random.Random(0))


def test_splits_are_disjoint_and_sized():
    drawn = {split: set(tasks.make_prompts(3000, split, random.Random(i))) for i, split in enumerate(tasks.SPLITS)}
    assert all(drawn.values())
    for a in tasks.SPLITS:  # another seed each: disjoint anyway
        assert all(tasks.split_of(p) == a for p in drawn[a])
        assert all(not drawn[a] & drawn[b] for b in tasks.SPLITS if b != a)
    rng = random.Random(4)
    splits = [tasks.split_of(make_prompt(rng)) for _ in range(8000)]
    assert abs(splits.count("eval") / 8000 - tasks.EVAL_PERCENT / 100) < 0.02
    assert abs(splits.count("dev") / 8000 - tasks.DEV_PERCENT / 100) < 0.015
    for split in ("dev", "eval"):
        for r in tasks.sft_records(200, split, seed=5) + tasks.prompt_records(200, split, seed=5):
            assert tasks.split_of(r["prompt"]) == split
    with pytest.raises(ValueError):
        tasks.make_prompts(1, "test", random.Random(0))


def test_records_are_deterministic_in_the_seed():
    assert tasks.sft_records(50, "train", seed=7) == tasks.sft_records(50, "train", seed=7)
    assert tasks.sft_records(50, "train", seed=7) != tasks.sft_records(50, "train", seed=8)


@pytest.mark.parametrize("error_rate, ramble_rate", [
    (0.0, 0.0), (tasks.DEMO_ERROR_RATE, tasks.DEMO_RAMBLE_RATE), (0.7, 0.0), (0.0, 0.5), (1.0, 0.0), (0.2, 1.0)])
def test_demonstrator_rates_match_the_settings(error_rate, ramble_rate):
    rng = random.Random(0)
    prompts = tasks.make_prompts(3000, "train", rng)
    demos = [(p, demonstrate(p, rng, error_rate, ramble_rate)) for p in prompts]
    wrong = sum(gold_score(p, d, True) < 1.0 for p, d in demos) / len(demos)
    expected = 1 - (1 - error_rate) * (1 - ramble_rate)
    assert abs(wrong - expected) < 0.035  # 3.5 sd of a binomial share over 3000 draws at p=0.5 is 0.032
    # the habit, on its own: the answer is followed by a chatty word exactly in the rambling share
    rambling = sum(d != answer(p) and any(d.endswith(r) for r in tasks.RAMBLE) for p, d in demos) / len(demos)
    if error_rate == 0.0:
        assert abs(rambling - ramble_rate) < 0.035


def test_labelers_agree_about_73_percent_on_the_reference_distribution():
    groups = reference.reference_groups(tasks, 4000, seed=1)  # another seed than the calibration's
    agreement = labelers.labeler_agreement(groups, random.Random(0), LABELER_TEMPERATURE)
    assert abs(agreement - labelers.TARGET_AGREEMENT) < 0.03
    # agreement falls with labeler noise: from 1 with noiseless labelers towards 1/2 with random ones
    a_noisy = labelers.labeler_agreement(groups[:1000], random.Random(0), temperature=100.0)
    assert a_noisy < labelers.labeler_agreement(groups[:1000], random.Random(0), LABELER_TEMPERATURE) < 1.0
    # one labeler agrees with the truth more often than with another labeler: the RM's real ceiling
    assert (labelers.gold_agreement(groups, random.Random(0), LABELER_TEMPERATURE)
            > labelers.labeler_agreement(groups, random.Random(0), LABELER_TEMPERATURE))
    distinct = [g for g in groups if len(set(g)) == len(g)]
    assert labelers.labeler_agreement(distinct, random.Random(0), temperature=0) == 1.0


@given(st.lists(st.floats(0, 1), min_size=1, max_size=9), st.floats(0, 2), seeds)
def test_rank_is_a_permutation(scores, temperature, seed):
    order = labelers.rank(scores, random.Random(seed), temperature)
    assert sorted(order) == list(range(len(scores)))


@given(st.lists(st.integers(0, 100), min_size=1, max_size=9, unique=True), seeds)
def test_noiseless_labeler_sorts_by_score(points, seed):
    scores = [x / 100 for x in points]
    best_first = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert labelers.rank(scores, random.Random(seed), temperature=0) == best_first
    # the limit, not just the special case: gaps of 0.01 at temperature 1e-4 swap with probability e^-100
    assert labelers.rank(scores, random.Random(seed), temperature=1e-4) == best_first


def test_labeler_prefers_better_responses():
    rng = random.Random(0)
    firsts = [labelers.rank([0.2, 0.9, 0.5, 0.0], rng, LABELER_TEMPERATURE)[0] for _ in range(2000)]
    assert firsts.count(1) / len(firsts) > 0.8  # best picked first far more often than 1/4


def test_comparison_records_rank_demonstrations():
    for r in reference.comparison_records(tasks, 100, "train", seed=0, k=5):
        assert len(r["responses"]) == 5 and sorted(r["ranking"]) == list(range(5))
        assert tasks.split_of(r["prompt"]) == "train"


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="error_rate"):
        demonstrate("add 1 2\n", random.Random(0), error_rate=1.5)
    with pytest.raises(ValueError, match="ramble_rate"):
        demonstrate("add 1 2\n", random.Random(0), ramble_rate=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        labelers.rank([0.1, 0.2], random.Random(0), temperature=-1.0)
    with pytest.raises(ValueError, match="k >= 2"):
        reference.comparison_records(tasks, 1, "train", k=1)
    with pytest.raises(ValueError, match="unknown task kind"):
        make_prompt(random.Random(0), "divide")
