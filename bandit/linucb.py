"""Disjoint LinUCB (Li et al. 2010) with an ε exploration floor.

Per arm a ridge posterior (A = λI + Σxxᵀ, b = Σr·x, θ = A⁻¹b); an action scores
θᵀx + α·√(xᵀA⁻¹x); the best score gets 1 − ε of the probability and every action ε/K.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.exploration import epsilon_floor, sample
from bandit.policy import Action, ArmSpec, Decision, Policy
from bandit.posterior import Posterior


class RidgeArms(Policy):
    """Shared machinery of the policies that keep one ridge posterior per arm."""

    def __init__(self, lam: float = 1.0, epsilon: float = 0.05, refactor_every: int = 256):
        super().__init__()
        if not lam > 0:
            raise BanditError(f"lambda must be > 0, got {lam}")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        self.lam = float(lam)
        self.epsilon = float(epsilon)
        self.refactor_every = int(refactor_every)
        self.posteriors: dict[str, Posterior] = {}

    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        if arm.name in self.posteriors:
            raise BanditError(f"arm {arm.name!r} exists already")
        if warm_start_from is None:
            post = Posterior.prior(self.lam, refactor_every=self.refactor_every)
        else:
            donor = self.posteriors.get(warm_start_from)
            if donor is None:
                raise BanditError(f"cannot warm-start from unknown arm {warm_start_from!r}")
            if not 0 <= shrink <= 1:
                raise BanditError(f"shrink must be in [0, 1], got {shrink}")
            post = donor.shrunk_copy(shrink)
        self.posteriors[arm.name] = post
        self.specs[arm.name] = arm

    def set_posterior(self, arm: ArmSpec, posterior: Posterior) -> None:
        self.posteriors[arm.name] = posterior
        self.specs[arm.name] = arm

    def learn_one(self, arm: str, context: Mapping[str, float], reward: float) -> None:
        post = self.posteriors.get(arm)
        if post is None:
            raise BanditError(f"unknown arm {arm!r}")
        post.learn(context, reward)

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means = np.empty(len(actions))
        widths = np.empty(len(actions))
        by_arm: dict[str, list[int]] = {}
        for i, a in enumerate(actions):
            by_arm.setdefault(a.arm, []).append(i)
        for arm, idx in by_arm.items():
            post = self.posteriors.get(arm)
            if post is None:
                raise BanditError(f"unknown arm {arm!r}")
            m, w = post.mean_and_width([actions[i].context for i in idx])
            means[idx] = m
            widths[idx] = w
        return means, widths


class LinUCB(RidgeArms):
    name = "linucb"

    def __init__(self, alpha: float = 1.0, lam: float = 1.0, epsilon: float = 0.05, refactor_every: int = 256):
        super().__init__(lam=lam, epsilon=epsilon, refactor_every=refactor_every)
        if not alpha >= 0:
            raise BanditError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lambda": self.lam, "epsilon": self.epsilon}

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means, widths = super().scores(actions)
        return means, self.alpha * widths

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        means, bonuses = self.scores(actions)
        pmf = epsilon_floor(means + bonuses, self.epsilon, rng)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)
