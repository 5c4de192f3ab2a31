"""
Simulated labelers, shared by the built-in tasks: a labeler ranks the K responses to one prompt by
Plackett-Luce sampling on their gold scores. Each task sets the temperature (its labelers' noise) so
that two labelers agree on ~73% of pairs of its reference distribution, as InstructGPT's did
(Ouyang et al. 2022; tasks/reference.py finds it).
"""
import math

TARGET_AGREEMENT = 0.73  # InstructGPT: labelers agreed with each other ~73% of the time


def rank(gold_scores, rng, temperature):
    """
    A labeler's ranking of K responses to one prompt: indices, best first. Plackett-Luce sampling:
    the best is picked with probability proportional to exp(score / temperature), then the next
    among the rest, and so on. temperature=0 gives the sorted order (ties by index).
    """
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
    """
    The share of pairs that two independent labelers order the same way, over all C(K,2) pairs of
    every group of gold scores (one group = the K responses to one prompt): InstructGPT's ~73%, the
    yardstick for a reward model's accuracy on comparisons labeled this way. (A reward model that
    knew the gold scores would do better, gold_agreement: one labeler agrees with the truth more
    often than with another labeler.)
    """
    agree = total = 0
    for scores in score_groups:
        pos1 = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        pos2 = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                agree += (pos1[i] < pos1[j]) == (pos2[i] < pos2[j])
                total += 1
    return agree / total


def gold_agreement(score_groups, rng, temperature):
    """
    The share of pairs one labeler orders as the gold scores do (pairs with equal scores count 1/2):
    the accuracy, against that labeler's rankings, of a reward model that knew the gold scores. It is
    above labeler_agreement, since two noisy labelers agree less often than one agrees with the truth.
    """
    agree = total = 0
    for scores in score_groups:
        pos = {i: r for r, i in enumerate(rank(scores, rng, temperature))}
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if scores[i] == scores[j]:
                    agree += 0.5
                else:
                    agree += (pos[i] < pos[j]) == (scores[i] > scores[j])
                total += 1
    return agree / total
