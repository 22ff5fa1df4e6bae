"""Exploration on top of a reward model: how scores become action probabilities."""
from __future__ import annotations

import numpy as np


def argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Index of the best score; exact ties are broken uniformly by the seeded generator."""
    scores = np.asarray(scores, dtype=np.float64)
    best = np.flatnonzero(scores == scores.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def epsilon_floor(scores: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """(1 − ε) on the best action plus ε/K on every action, so no action's probability
    ever reaches zero and every logged decision can be evaluated offline."""
    k = len(scores)
    if k == 0:
        raise ValueError("no actions to choose from")
    pmf = np.full(k, epsilon / k)
    pmf[argmax_random_ties(scores, rng)] += 1.0 - epsilon
    return pmf


def sample(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one index from pmf (inverse CDF on one uniform draw, robust to rounding)."""
    u = rng.random()
    c = np.cumsum(pmf)
    return int(min(np.searchsorted(c, u * c[-1], side="right"), len(pmf) - 1))
