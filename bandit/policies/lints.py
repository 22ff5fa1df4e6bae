"""Linear Thompson sampling (Agrawal & Goyal 2013) on the per-arm ridge posteriors.

Each arm's coefficients are drawn θ̃ ~ N(θ̂, v²A⁻¹) and the action with the best θ̃ᵀx
wins. The scores θ̃ᵀx are drawn directly, through the Cholesky factor of their (block-
diagonal) covariance: the same distribution at a fraction of the normals. The
probability of each action under that rule has no closed form, so it is estimated from
`draws` seeded Monte Carlo draws; mixing in an ε floor keeps every action's logged
probability ≥ ε/K, and the action is then sampled from that same logged pmf, so the log
states exactly the distribution the choice came from and stays evaluable offline.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.policies.exploration import sample
from bandit.policies.linucb import RidgeArms
from bandit.policies.base import Action, Decision


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

    def moments(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance (over v²) of the sampled scores of all actions.

        Under θ̃_a ~ N(θ̂_a, v²A_a⁻¹) an arm's actions X score Xθ̃_a ~ N(Xθ̂_a, v²XA_a⁻¹Xᵀ),
        independently across arms: a block-diagonal covariance over the actions.
        """
        n = len(actions)
        means = np.empty(n)
        cov = np.zeros((n, n))
        by_arm: dict[str, list[int]] = {}
        for i, a in enumerate(actions):
            by_arm.setdefault(a.arm, []).append(i)
        for arm, idx in by_arm.items():
            post = self.posteriors.get(arm)
            if post is None:
                raise BanditError(f"unknown arm {arm!r}")
            contexts = [actions[i].inputs for i in idx]
            X, _ = post.vectors(contexts)
            means[idx] = X @ post.theta
            cov[np.ix_(idx, idx)] = X @ post.A_inv @ X.T + self._unseen_gram(post.schema, contexts)
        return means, cov

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means, cov = self.moments(actions)
        return means, self.v * np.sqrt(np.maximum(np.diag(cov), 0.0))  # the sampling spread, logged as the "bonus"

    def sampled_scores(self, actions: Sequence[Action], rng: np.random.Generator) -> np.ndarray:
        """`draws` × len(actions) Thompson scores: each row the scores under one joint draw
        of every arm's θ̃. Drawn directly in score space through the Cholesky factor of
        their covariance — the same distribution as drawing θ̃ = θ̂ + v·Cz (CCᵀ = A⁻¹) and
        scoring with it, at one normal per action instead of d per arm."""
        return self._draw(*self.moments(actions), rng)

    def _draw(self, means: np.ndarray, cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        L = np.linalg.cholesky(cov + 1e-12 * np.eye(len(means)))  # jitter: cov may be singular
        return means + self.v * rng.standard_normal((self.draws, len(means))) @ L.T

    def _unseen_gram(self, schema: Sequence[str], contexts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Covariance (over v²) that features the arm never saw add to its scores: their
        coefficients are still at the prior N(0, 1/λ), shared by all the arm's actions."""
        known = set(schema)
        U = [{k: float(v) for k, v in c.items() if k not in known} for c in contexts]
        G = np.zeros((len(U), len(U)))
        for i, ui in enumerate(U):
            for j, uj in enumerate(U[: i + 1]):
                G[i, j] = G[j, i] = sum(v * uj.get(k, 0.0) for k, v in ui.items()) / self.lam
        return G

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        means, cov = self.moments(actions)
        bonuses = self.v * np.sqrt(np.maximum(np.diag(cov), 0.0))
        S = self._draw(means, cov, rng)
        wins = np.bincount(np.argmax(S, axis=1), minlength=len(actions))
        k = len(actions)
        pmf = (1.0 - self.epsilon) * wins / self.draws + self.epsilon / k
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)
