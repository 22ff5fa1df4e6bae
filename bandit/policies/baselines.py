"""Baseline policies for replay: ε-greedy on ridge estimates, uniform random, one fixed arm."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.policies.exploration import epsilon_floor, sample
from bandit.policies.linucb import RidgeArms
from bandit.policies.base import Action, ArmSpec, Decision, Policy


class EpsilonGreedy(RidgeArms):
    """The best ridge estimate with probability 1 − ε, any action with ε/K."""

    name = "egreedy"

    def __init__(self, epsilon: float = 0.1, lam: float = 1.0, refactor_every: int = 256):
        super().__init__(lam=lam, epsilon=epsilon, refactor_every=refactor_every)

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "lambda": self.lam}

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means, _ = super().scores(actions)
        return means, np.zeros(len(actions))

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        means, bonuses = self.scores(actions)
        pmf = epsilon_floor(means, self.epsilon, rng)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)


class _Stateless(Policy):
    """Policies that learn nothing: arms are only remembered so they can be listed."""

    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        self.check_new_arm(arm, warm_start_from, shrink)
        self.specs[arm.name] = arm

    def learn_one(self, arm: str, context: Mapping[str, float], reward: float) -> None:
        if arm not in self.specs:
            raise BanditError(f"unknown arm {arm!r}")

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(actions)), np.zeros(len(actions))


class UniformRandom(_Stateless):
    name = "random"

    def params(self) -> dict[str, Any]:
        return {}

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        if not actions:
            raise BanditError("no actions to choose from")
        pmf = np.full(len(actions), 1.0 / len(actions))
        means, bonuses = self.scores(actions)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)


class FixedArm(_Stateless):
    """Always the same arm (uniformly over its candidate pairs), with an optional ε floor.

    Its default ε is 0: as a replay baseline it should reproduce the fixed arm exactly.
    While the arm is not offered (it joins later in a scenario) it chooses uniformly.
    """

    name = "fixed"

    def __init__(self, arm: str, epsilon: float = 0.0):
        super().__init__()
        if not arm:
            raise BanditError("fixed needs an arm: fixed:ARM")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        self.arm = str(arm)
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, Any]:
        return {"arm": self.arm, "epsilon": self.epsilon}

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        k = len(actions)
        if k == 0:
            raise BanditError("no actions to choose from")
        mine = [i for i, a in enumerate(actions) if a.arm == self.arm]
        if not mine:
            pmf = np.full(k, 1.0 / k)
        else:
            pmf = np.full(k, self.epsilon / k)
            pmf[mine] += (1.0 - self.epsilon) / len(mine)
        means, bonuses = self.scores(actions)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)
