"""Linear Thompson sampling (Agrawal & Goyal 2013) on the per-arm ridge posteriors.

Each arm's coefficients are drawn θ̃ ~ N(θ̂, v²A⁻¹) (θ̃ = θ̂ + v·Cz with CCᵀ = A⁻¹ from
a Cholesky factorisation, z standard normal) and the action with the best θ̃ᵀx wins. The
probability of each action under that rule has no closed form, so it is estimated from
`draws` seeded Monte Carlo draws; mixing in an ε floor keeps every action's logged
probability ≥ ε/K, and the action is then sampled from that same logged pmf, so the log
states exactly the distribution the choice came from and stays evaluable offline.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.exploration import sample
from bandit.linucb import RidgeArms
from bandit.policy import Action, Decision


class LinTS(RidgeArms):
    name = "lints"

    def __init__(self, v: float = 0.2, lam: float = 1.0, epsilon: float = 0.05, draws: int = 1000,
                 refactor_every: int = 256):
        super().__init__(lam=lam, epsilon=epsilon, refactor_every=refactor_every)
        if not v >= 0:
            raise BanditError(f"v must be >= 0, got {v}")
        if int(draws) < 1000:
            raise BanditError(f"draws must be at least 1000 so the logged pmf is usable, got {draws}")
        self.v = float(v)
        self.draws = int(draws)

    def params(self) -> dict[str, Any]:
        return {"v": self.v, "lambda": self.lam, "epsilon": self.epsilon, "draws": self.draws}

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means, widths = super().scores(actions)
        return means, self.v * widths  # the sampling spread, logged as the "bonus"

    def sampled_scores(self, actions: Sequence[Action], rng: np.random.Generator) -> np.ndarray:
        """`draws` × len(actions) scores, one row per joint draw of every arm's θ̃."""
        out = np.empty((self.draws, len(actions)))
        by_arm: dict[str, list[int]] = {}
        for i, a in enumerate(actions):
            by_arm.setdefault(a.arm, []).append(i)
        for arm, idx in by_arm.items():
            post = self.posteriors.get(arm)
            if post is None:
                raise BanditError(f"unknown arm {arm!r}")
            X, unseen = post.vectors([actions[i].context for i in idx])
            C = np.linalg.cholesky(post.A_inv)
            theta = post.theta + self.v * rng.standard_normal((self.draws, post.d)) @ C.T
            S = theta @ X.T
            if unseen.any():
                # features the arm never saw: θ̃ is N(0, v²/λ) there, independent of the rest
                S += self.v * rng.standard_normal((self.draws, 1)) * np.sqrt(unseen / self.lam)
            out[:, idx] = S
        return out

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        means, bonuses = self.scores(actions)
        S = self.sampled_scores(actions, rng)
        wins = np.bincount(np.argmax(S, axis=1), minlength=len(actions))
        k = len(actions)
        pmf = (1.0 - self.epsilon) * wins / self.draws + self.epsilon / k
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)
