"""A reward model that needs little data: shared action-feature coefficients, per-arm
intercepts and strongly shrunk per-arm context weights, all centred and scaled.

    reward ≈ c + b_arm + βᵀ(g − ḡ) + w_armᵀ z,     z = (x − μ) / σ

x is the request's context, g the action's own features (trial-merge signals), c the mean
reward so far, ḡ the mean action features of the rewarded actions, μ and σ the mean and
standard deviation of the rewarded contexts. The parameters (b_arm, w_arm for every arm, β)
are one ridge regression with prior precisions λ_b (light) on the intercepts, λ_w (strong)
on the context weights and λ_β on β, whose prior mean β₀ ranks actions by the trial signal
before any reward: the signal estimates the share of each expert's skill the merge keeps,
so 1 on the averaged agreement (`anchor`) is its natural calibration; rewards correct it.

Every reward updates only raw sums, per arm: S = Σ u uᵀ and t = Σ r u for u = [1, x, g],
in float64 and in arrival order, so `rebuild` reproduces them bit for bit from the log. The
centring and scaling are linear in u (u starts with 1), so the centred, scaled statistics
are M S Mᵀ and M (t − c·s) at decision time, exact for the current c, μ, σ, ḡ.

Exploration: UCB, mean + α·σ_r·√(vᵀ A⁻¹ v) with σ_r the standard deviation of the rewards
so far (so α is free of the reward's scale), or Thompson sampling from N(θ̂, σ_r² A⁻¹); the
best action gets 1 − ε and every action ε/K, so logs stay evaluable.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError
from bandit.policies.exploration import epsilon_floor, sample
from bandit.policies.base import Action, ArmSpec, Decision, Policy

DEFAULT_ANCHOR = "trial_exact"


class PooledRidge(Policy):
    name = "pooled"

    def __init__(self, alpha: float = 1.0, lam_intercept: float = 1.0, lam_context: float = 10.0,
                 lam_action: float = 1.0, anchor: str | None = DEFAULT_ANCHOR, anchor_prior: float = 1.0,
                 epsilon: float = 0.05, exploration: str = "ucb"):
        super().__init__()
        for name, v in (("lam_intercept", lam_intercept), ("lam_context", lam_context), ("lam_action", lam_action)):
            if not v > 0:
                raise BanditError(f"{name} must be > 0, got {v}")
        if not alpha >= 0:
            raise BanditError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        if exploration not in ("ucb", "ts"):
            raise BanditError(f"exploration must be ucb or ts, got {exploration!r}")
        self.alpha = float(alpha)
        self.lam_intercept, self.lam_context, self.lam_action = float(lam_intercept), float(lam_context), float(lam_action)
        self.anchor = anchor
        self.anchor_prior = float(anchor_prior)
        self.epsilon = float(epsilon)
        self.exploration = exploration
        self.context_names: list[str] = []
        self.action_names: list[str] = []
        self.S: dict[str, np.ndarray] = {}   # per arm: Σ u uᵀ, u = [1, x, g]
        self.t: dict[str, np.ndarray] = {}   # per arm: Σ r u
        self.reward_sum = 0.0
        self.reward_sq = 0.0
        self._solved = None

    # -- arms and schema ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return 1 + len(self.context_names) + len(self.action_names)

    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        """A new arm starts at the mean reward (its intercept and weights at the prior); a
        warm start copies a donor's sums scaled by `shrink` (its data counted at that weight)."""
        self.check_new_arm(arm, warm_start_from, shrink)
        d = self.dim
        if warm_start_from is None:
            self.S[arm.name], self.t[arm.name] = np.zeros((d, d)), np.zeros(d)
        else:
            self.S[arm.name] = self.S[warm_start_from] * shrink
            self.t[arm.name] = self.t[warm_start_from] * shrink
        self.specs[arm.name] = arm
        self._solved = None

    def _extend(self, context: Mapping[str, float], features: Mapping[str, float]) -> None:
        """New feature names join the schema; past observations had them at 0."""
        new_x = [k for k in context if k not in set(self.context_names)]
        new_g = [k for k in features if k not in set(self.action_names)]
        if not new_x and not new_g:
            return
        old_x, old_g = len(self.context_names), len(self.action_names)
        # new index of every old coordinate: [1, x_old..., (new x), g_old..., (new g)]
        keep = [0] + [1 + i for i in range(old_x)] + [1 + old_x + len(new_x) + i for i in range(old_g)]
        self.context_names += new_x
        self.action_names += new_g
        d = self.dim
        for arm in self.S:
            S, t = np.zeros((d, d)), np.zeros(d)
            S[np.ix_(keep, keep)] = self.S[arm]
            t[keep] = self.t[arm]
            self.S[arm], self.t[arm] = S, t
        self._solved = None

    def _u(self, context: Mapping[str, float], features: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0] + [float(context.get(k, 0.0)) for k in self.context_names]
                        + [float(features.get(k, 0.0)) for k in self.action_names])

    # -- learning ----------------------------------------------------------------------------
    def learn_one(self, arm: str, context: Mapping[str, float], reward: float,
                  features: Mapping[str, float] | None = None) -> None:
        if arm not in self.S:
            raise BanditError(f"unknown arm {arm!r}")
        if not math.isfinite(reward):
            raise BanditError(f"reward must be a finite number, got {reward!r}")
        features = features or {}
        self._extend(context, features)
        u = self._u(context, features)
        self.S[arm] += np.outer(u, u)
        self.t[arm] += reward * u
        self.reward_sum += reward
        self.reward_sq += reward * reward
        self._solved = None

    def learn_decision(self, actions: Sequence[Action], chosen: int, reward: float, prob: float) -> None:
        a = actions[chosen]
        self.learn_one(a.arm, a.context, reward, getattr(a, "features", None))

    # -- the centred, scaled ridge -------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(round(sum(S[0, 0] for S in self.S.values())))

    def _transform(self) -> tuple[np.ndarray, float]:
        """M (u ↦ [1, z, g − ḡ]) and c, from the sums over every rewarded observation."""
        d, nx = self.dim, len(self.context_names)
        total = sum(self.S.values()) if self.S else np.zeros((d, d))
        n = total[0, 0]
        M = np.eye(d)
        if n <= 0:
            return M, 0.0
        mean = total[0] / n
        var = np.diag(total)[1:1 + nx] / n - mean[1:1 + nx] ** 2
        sd = np.where(var > 1e-12, np.sqrt(np.maximum(var, 0.0)), 1.0)
        M[1:1 + nx, 0] = -mean[1:1 + nx] / sd
        M[1:1 + nx, 1:1 + nx] = np.diag(1.0 / sd)
        M[1 + nx:, 0] = -mean[1 + nx:]
        return M, self.reward_sum / n

    def _solve(self):
        if self._solved is not None:
            return self._solved
        arms = list(self.specs)
        d, nx, ng = self.dim, len(self.context_names), len(self.action_names)
        per = 1 + nx
        P = len(arms) * per + ng
        A = np.zeros((P, P))
        b = np.zeros(P)
        M, c = self._transform()
        for k, arm in enumerate(arms):
            S = M @ self.S[arm] @ M.T
            t = M @ (self.t[arm] - c * self.S[arm][0])
            idx = np.r_[k * per: (k + 1) * per, len(arms) * per: P]
            A[np.ix_(idx, idx)] += S
            b[idx] += t
        prior = np.empty(P)
        for k in range(len(arms)):
            prior[k * per] = self.lam_intercept
            prior[k * per + 1: (k + 1) * per] = self.lam_context
        prior[len(arms) * per:] = self.lam_action
        A[np.diag_indices(P)] += prior
        beta0 = np.zeros(ng)
        if self.anchor is not None and self.anchor in self.action_names:
            beta0[self.action_names.index(self.anchor)] = self.anchor_prior
        b[len(arms) * per:] += self.lam_action * beta0
        L = np.linalg.cholesky(A)
        theta = np.linalg.solve(L.T, np.linalg.solve(L, b))
        n = self.n
        var_r = self.reward_sq / n - (self.reward_sum / n) ** 2 if n >= 2 else 0.0
        # Before two rewards there is no scale to read: 0.1 stands in, wide for rewards in [0, 1].
        sigma = math.sqrt(var_r) if n >= 2 and var_r > 0 else 0.1
        self._solved = (arms, per, M, c, L, theta, sigma)
        return self._solved

    def coefficients(self) -> dict[str, Any]:
        """The fitted model in named form: c, β by action feature, b and w per arm."""
        arms, per, M, c, L, theta, sigma = self._solve()
        nb = len(arms) * per
        return {
            "c": c,
            "beta": dict(zip(self.action_names, theta[nb:].tolist())),
            "intercepts": {arm: float(theta[k * per]) for k, arm in enumerate(arms)},
            "context_weights": {arm: dict(zip(self.context_names, theta[k * per + 1:(k + 1) * per].tolist()))
                                for k, arm in enumerate(arms)},
        }

    def _scorer(self, actions: Sequence[Action]) -> "PooledRidge":
        """Self, or — when the actions carry names no reward has shown yet — a copy whose
        schema includes them (at their prior), so the stored state stays a function of the
        rewards alone and the anchor ranks actions from the first request."""
        x_names, g_names = set(self.context_names), set(self.action_names)
        if all(set(a.context) <= x_names and set(a.features or {}) <= g_names for a in actions):
            return self
        import copy

        other = copy.copy(self)
        other.context_names, other.action_names = list(self.context_names), list(self.action_names)
        other.S, other.t = dict(self.S), dict(self.t)
        other._solved = None
        for a in actions:
            other._extend(a.context, a.features or {})
        return other

    def _design(self, actions: Sequence[Action]) -> tuple[np.ndarray, float, np.ndarray]:
        arms, per, M, c, L, theta, sigma = self._solve()
        pos = {arm: k for k, arm in enumerate(arms)}
        nb = len(arms) * per
        X = np.zeros((len(actions), len(theta)))
        for i, a in enumerate(actions):
            if a.arm not in pos:
                raise BanditError(f"unknown arm {a.arm!r}")
            v = M @ self._u(a.context, getattr(a, "features", None) or {})
            k = pos[a.arm]
            X[i, k * per:(k + 1) * per] = v[:per]
            X[i, nb:] = v[per:]
        return X, c, theta

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        """(c + predicted centred reward, α·σ_r·√(vᵀA⁻¹v)) per action."""
        scorer = self._scorer(actions)
        if scorer is not self:
            return scorer.scores(actions)
        X, c, theta = self._design(actions)
        L, sigma = self._solved[4], self._solved[6]
        means = c + X @ theta
        half = np.linalg.solve(L, X.T)  # L⁻¹ vᵀ: its squared norm is vᵀ A⁻¹ v
        widths = np.sqrt(np.maximum((half * half).sum(axis=0), 0.0))
        return means, self.alpha * sigma * widths

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        scorer = self._scorer(actions)
        if scorer is not self:
            return scorer.decide(actions, rng)
        if self.exploration == "ts":
            X, c, theta = self._design(actions)
            L, sigma = self._solved[4], self._solved[6]
            draw = theta + sigma * np.linalg.solve(L.T, rng.standard_normal(len(theta)))
            means = c + X @ theta
            sampled = c + X @ draw
            pmf = epsilon_floor(sampled, self.epsilon, rng)
            return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=sampled - means)
        means, bonuses = self.scores(actions)
        pmf = epsilon_floor(means + bonuses, self.epsilon, rng)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lambda_intercept": self.lam_intercept, "lambda_context": self.lam_context,
                "lambda_action": self.lam_action, "anchor": self.anchor, "anchor_prior": self.anchor_prior,
                "epsilon": self.epsilon, "exploration": self.exploration}

    # -- derived state, for storage and rebuild checks ------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"context_names": list(self.context_names), "action_names": list(self.action_names),
                "S": {a: s.copy() for a, s in self.S.items()}, "t": {a: v.copy() for a, v in self.t.items()},
                "reward_sum": self.reward_sum, "reward_sq": self.reward_sq}
