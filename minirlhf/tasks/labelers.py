"""
Simulated labelers for the built-in tasks: Plackett-Luce rankings of K responses on their gold scores, at a temperature
(the noise) each task sets so two labelers agree on ~73% of pairs (InstructGPT, Ouyang et al. 2022; tasks/reference.py).
"""
import math
from itertools import combinations

TARGET_AGREEMENT = 0.73  # InstructGPT: labelers agreed with each other ~73% of the time


def rank(gold_scores, rng, temperature):
    """A labeler's ranking of K responses (indices, best first) by Plackett-Luce: the best drawn with weights
    exp(score / temperature), then the next from the rest, and so on. temperature=0 sorts (ties by index)."""
    if temperature < 0:
        raise ValueError(f"labeler temperature must be >= 0, got {temperature}")
    scores = [float(s) for s in gold_scores]
    left = list(range(len(scores)))
    if temperature == 0:
        return sorted(left, key=lambda i: -scores[i])
    order = []
    while left:
        top = max(scores[i] for i in left)  # subtract the max: exp never overflows, one weight is 1
        weights = [math.exp((scores[i] - top) / temperature) for i in left]
        u = rng.random() * sum(weights)
        j = 0
        while j < len(left) - 1 and u >= weights[j]:
            u -= weights[j]
            j += 1
        order.append(left.pop(j))
    return order


def labeler_agreement(score_groups, rng, temperature):
    """The share of pairs two independent labelers order alike, over all pairs of every group of gold scores (the K
    responses to one prompt): InstructGPT's ~73%, the yardstick for a reward model's accuracy on such comparisons."""
    agree = total = 0
    for scores in score_groups:
        pos1 = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        pos2 = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        for i, j in combinations(range(len(scores)), 2):
            agree += (pos1[i] < pos1[j]) == (pos2[i] < pos2[j])
            total += 1
    return agree / total


def gold_agreement(score_groups, rng, temperature):
    """The share of pairs one labeler orders as the gold scores do (equal scores count 1/2): the accuracy of a reward
    model that knew the gold scores. It beats labeler_agreement: a labeler agrees with the truth more often than
    with another labeler."""
    agree = total = 0
    for scores in score_groups:
        pos = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        for i, j in combinations(range(len(scores)), 2):
            agree += 0.5 if scores[i] == scores[j] else (pos[i] < pos[j]) == (scores[i] > scores[j])
            total += 1
    return agree / total
