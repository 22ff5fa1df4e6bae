"""Disjoint LinUCB (Li et al. 2010) with an ε exploration floor.

Per arm a ridge posterior (A = λI + Σxxᵀ, b = Σr·x, θ = A⁻¹b); an action scores
θᵀx + α·√(xᵀA⁻¹x); the best score gets 1 − ε of the probability and every action ε/K.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.policies.exploration import epsilon_floor, sample
from bandit.policies.base import Action, ArmSpec, Decision, Policy
from bandit.policies.ridge import Posterior


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
        self.check_new_arm(arm, warm_start_from, shrink)
        if warm_start_from is None:
            post = Posterior.prior(self.lam, refactor_every=self.refactor_every)
        else:
            post = self.posteriors[warm_start_from].shrunk_copy(shrink)
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
        """Posterior mean and width √(xᵀA⁻¹x) of every action."""
        means = np.empty(len(actions))
        widths = np.empty(len(actions))
        # Group the arms by schema (usually all share one, names in order of first
        # appearance): each group scores all its arms × distinct contexts in one batch.
        contexts: list[Mapping[str, float]] = []
        ctx_index: dict[int, int] = {}
        groups: dict[tuple[str, ...], list[str]] = {}
        seen: set[str] = set()
        for a in actions:
            if id(a.inputs) not in ctx_index:
                ctx_index[id(a.inputs)] = len(contexts)
                contexts.append(a.inputs)
            if a.arm in seen:
                continue
            post = self.posteriors.get(a.arm)
            if post is None:
                raise BanditError(f"unknown arm {a.arm!r}")
            groups.setdefault(tuple(post.schema), []).append(a.arm)
            seen.add(a.arm)
        table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for arms in groups.values():
            posts = [self.posteriors[arm] for arm in arms]
            X, unseen = posts[0].vectors(contexts)  # (C, d)
            thetas = np.stack([p.theta for p in posts])  # (K, d)
            A_invs = np.stack([p.A_inv for p in posts])  # (K, d, d)
            m = thetas @ X.T  # (K, C)
            lams = np.array([p.lam for p in posts])
            var = np.einsum("cd,kde,ce->kc", X, A_invs, X) + unseen[None, :] / lams[:, None]
            w = np.sqrt(np.maximum(var, 0.0))
            for k, arm in enumerate(arms):
                table[arm] = (m[k], w[k])
        for i, a in enumerate(actions):
            m, w = table[a.arm]
            c = ctx_index[id(a.inputs)]
            means[i], widths[i] = m[c], w[c]
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
