"""
A built-in task's reference distribution: K distinct demonstrations per prompt at the rates of a small
SFT model's samples (the task's REFERENCE_RATES), ranked by a simulated labeler. The labelers'
temperature is calibrated on it (`python -m minirlhf.tasks --calibrate`: two labelers agree on ~73%
of pairs, as InstructGPT's did), and the exported built-in comparisons are drawn from it.
"""
import math
import random

from minirlhf.tasks.labelers import TARGET_AGREEMENT, labeler_agreement, rank


def demonstrations(task, record, rng, k, rates):
    """k distinct demonstrations for a prompt record (a repeated one is drawn again: two identical
    responses teach nothing)."""
    out = []
    for _ in range(100 * k):
        r = task.demonstrate(record.get("prompt", record), rng, **rates)
        if r not in out:
            out.append(r)
            if len(out) == k:
                return out
    raise ValueError(f"could not draw k={k} distinct responses to {str(record)[:60]!r} at these rates")


def comparison_records(task, n, split, seed=0, k=None, temperature=None, **rates):
    """n records of `split`, the prompt record with {"responses": [k texts], "ranking": [indices, best first]}:
    demonstrations at the REFERENCE_RATES (or the given ones) ranked by one simulated labeler at the task's
    LABELER_TEMPERATURE (or temperature)."""
    k = task.REFERENCE_K if k is None else k
    if k < 2:
        raise ValueError(f"a comparison needs k >= 2 responses, got k={k}")
    temperature = task.LABELER_TEMPERATURE if temperature is None else temperature
    rates = {**task.REFERENCE_RATES, **rates}
    rng = random.Random(f"comparisons:{seed}")
    out = []
    for record in task.prompt_records(n, split, f"comparisons:{seed}"):
        responses = demonstrations(task, record, rng, k, rates)
        ranking = rank([task.gold_score(record, r, True) for r in responses], rng, temperature)
        out.append({**record, "responses": responses, "ranking": ranking})
    return out


def reference_groups(task, n, seed=0, k=None, **rates):
    """The gold scores of k demonstrations (at the REFERENCE_RATES, or the given ones) to each of n
    training prompts, repeats allowed: what the labelers are calibrated on."""
    k = task.REFERENCE_K if k is None else k
    rates = {**task.REFERENCE_RATES, **rates}
    rng = random.Random(f"reference:{seed}")
    return [[task.gold_score(record, task.demonstrate(record.get("prompt", record), rng, **rates), True)
             for _ in range(k)] for record in task.prompt_records(n, "train", f"reference:{seed}")]


def calibrate_temperature(groups, target=TARGET_AGREEMENT, seed=0, iters=30):
    """The labeler temperature at which two labelers agree on `target` of the pairs of `groups`
    (lists of gold scores, one per prompt), by bisection."""
    lo, hi = 1e-3, 10.0  # agreement falls as the temperature rises
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        # the same random numbers at every temperature, so the measured curve is monotone
        if labeler_agreement(groups, random.Random(seed), mid) > target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)
