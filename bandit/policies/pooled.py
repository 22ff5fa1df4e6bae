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

Exploration: UCB, mean + α·σ·√(vᵀ A⁻¹ v) with σ the residual standard deviation of the fit
(shrunk towards the rewards' spread; so α is free of the reward's scale), or Thompson
sampling from N(θ̂, σ² A⁻¹); the
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
SNAPSHOT_FORMAT = "simmerge-pooled-2"  # 2: epsilon_min
# Before two rewards there is no scale to read: 0.1 stands in, wide for rewards in [0, 1].
NOISE_FALLBACK = 0.1
NOISE_PRIOR_WEIGHT = 2.0


class PooledRidge(Policy):
    name = "pooled"

    def __init__(self, alpha: float = 1.0, lam_intercept: float = 1.0, lam_context: float = 10.0,
                 lam_action: float = 1.0, anchor: str | None = DEFAULT_ANCHOR, anchor_prior: float = 1.0,
                 epsilon: float = 0.05, exploration: str = "ucb", epsilon_min: float = 0.01):
        super().__init__()
        for name, v in (("lam_intercept", lam_intercept), ("lam_context", lam_context), ("lam_action", lam_action)):
            if not v > 0:
                raise BanditError(f"{name} must be > 0, got {v}")
        if not alpha >= 0:
            raise BanditError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        if not 0 <= epsilon_min <= 1:
            raise BanditError(f"epsilon_min must be in [0, 1], got {epsilon_min}")
        if exploration not in ("ucb", "ts"):
            raise BanditError(f"exploration must be ucb or ts, got {exploration!r}")
        self.alpha = float(alpha)
        self.lam_intercept, self.lam_context, self.lam_action = float(lam_intercept), float(lam_context), float(lam_action)
        self.anchor = anchor
        self.anchor_prior = float(anchor_prior)
        self.epsilon = float(epsilon)
        self.epsilon_min = float(epsilon_min)
        self.exploration = exploration
        self.context_names: list[str] = []
        self.action_names: list[str] = []
        self.S: dict[str, np.ndarray] = {}   # per arm: Σ u uᵀ, u = [1, x, g]
        self.t: dict[str, np.ndarray] = {}   # per arm: Σ r u
        self.reward_sum = 0.0
        self.reward_sq = 0.0
        # A prior from an outcome table (`bandit fit`) on the arms' intercepts: arm → offset,
        # N(offset, σ²/strength) on top of the λ_b prior, one strength for all. Not learned
        # state: it is set from the database's setting, so the sums stay a function of the log.
        self.intercept_prior: dict[str, float] = {}
        self.intercept_prior_strength = 0.0
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

    def _u(self, context: Mapping[str, float], features: Mapping[str, float],
           fill: np.ndarray | None = None) -> np.ndarray:
        """[1, x, g]. An action feature the action lacks (a proposal made without trial merges
        in a log that has them) is not a signal of 0: it takes the mean of the rewarded
        actions' values so far (`fill`, computed here when not given), so it moves neither
        the prediction nor β."""
        if fill is None and any(k not in features for k in self.action_names):
            fill = self._action_means()
        return np.array([1.0] + [float(context.get(k, 0.0)) for k in self.context_names]
                        + [float(features[k]) if k in features else float(fill[j])
                           for j, k in enumerate(self.action_names)])

    def _action_means(self) -> np.ndarray:
        """ḡ: the mean action features of every rewarded action (0 before any)."""
        nx = len(self.context_names)
        if not self.S:
            return np.zeros(len(self.action_names))
        total_first_row = sum(S[0] for S in self.S.values())
        n = total_first_row[0]
        return total_first_row[1 + nx:] / n if n > 0 else np.zeros(len(self.action_names))

    # the intercepts are relative to the live mean reward, so a prior's offsets need no re-centring
    self_centred = True

    def set_intercept_prior(self, offsets: Mapping[str, float], strength: float) -> None:
        """Expect arm k's intercept (its reward above the running mean) at offsets[k], worth
        `strength` rewards; arms not in `offsets` keep only the λ_b prior. Replaces any
        earlier prior."""
        if not (math.isfinite(strength) and strength >= 0):
            raise BanditError(f"prior strength must be a finite number >= 0, got {strength!r}")
        for arm, v in offsets.items():
            if not math.isfinite(float(v)):
                raise BanditError(f"prior offset of {arm!r} must be finite, got {v!r}")
        self.intercept_prior = {str(a): float(v) for a, v in offsets.items()} if strength > 0 else {}
        self.intercept_prior_strength = float(strength) if strength > 0 else 0.0
        self._solved = None

    def prior_strength(self) -> float:
        """What the intercept prior is worth now: the table's strength m, lowered when the
        live rewards disagree with it. The table chose m = σ²/τ² by empirical Bayes over its
        own tasks (τ²: how much an arm's offset moves between tasks); the live database is one
        more task. The prior waits until ≥ 3 of its arms have rewards — until the live data
        can test it: used from the first request, a table from another regime cost up to 0.1
        of the gap in a single pass on the synthetic regimes — and then τ² is estimated again
        from how far their live means sit from the prior's offsets (up to a common shift,
        since the offsets are relative), less what sampling noise explains, and m becomes
        min(m, σ²/τ̂²). A prior from another regime thus fades as the evidence against it
        grows, instead of costing a few pulls per arm for ever."""
        if not self.intercept_prior:
            return 0.0
        m = self.intercept_prior_strength
        n_k = {a: self.S[a][0, 0] for a in self.intercept_prior if a in self.S and self.S[a][0, 0] > 0}
        if len(n_k) < 3:
            return 0.0
        n = sum(S[0, 0] for S in self.S.values())
        pulled = [S[0, 0] for S in self.S.values() if S[0, 0] > 0]
        # σ²: one reward around its arm's mean, from the raw sums (Σr² − Σ_k (Σ_k r)²/n_k)
        within = self.reward_sq - sum(self.t[a][0] ** 2 / self.S[a][0, 0] for a in self.S if self.S[a][0, 0] > 0)
        if n - len(pulled) < 1:
            return m
        sigma2 = max(within, 0.0) / (n - len(pulled))
        d = np.array([self.t[a][0] / k - self.intercept_prior[a] for a, k in n_k.items()])
        noise = float(np.mean([sigma2 / k for k in n_k.values()]))
        tau2 = float(((d - d.mean()) ** 2).sum() / (len(d) - 1)) - noise
        if tau2 <= 0:
            return m
        return min(m, sigma2 / tau2)

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

    def _solve(self) -> "_Fit":
        """The posterior of the joint ridge, by blocks: each arm's (b, w) block couples only
        to β, so A⁻¹ comes from one small Cholesky per arm and one for the Schur complement
        of β (the same numbers as one big solve, at a fraction of the cost)."""
        if self._solved is not None:
            return self._solved
        arms = list(self.specs)
        nx, ng = len(self.context_names), len(self.action_names)
        per = 1 + nx
        M, c = self._transform()
        prior_arm = np.full(per, self.lam_context)
        prior_arm[0] = self.lam_intercept
        beta0 = np.zeros(ng)
        if self.anchor is not None and self.anchor in self.action_names:
            beta0[self.action_names.index(self.anchor)] = self.anchor_prior
        G = np.eye(ng) * self.lam_action
        g = self.lam_action * beta0
        strength = self.prior_strength()
        blocks, data = [], []
        for arm in arms:
            S = M @ self.S[arm] @ M.T
            t = M @ (self.t[arm] - c * self.S[arm][0])
            data.append((S, t))
            D = S[:per, :per] + np.diag(prior_arm)
            rhs = t[:per].copy()
            if arm in self.intercept_prior:
                D[0, 0] += strength
                rhs[0] += strength * self.intercept_prior[arm]
            C = S[:per, per:]
            G += S[per:, per:]
            g += t[per:]
            L = np.linalg.cholesky(D)
            DiC = _chol_solve(L, C)            # D⁻¹ C
            Dib = _chol_solve(L, rhs)          # D⁻¹ b
            G -= C.T @ DiC
            g -= C.T @ Dib
            blocks.append((L, C, DiC, Dib))
        Ls = np.linalg.cholesky(G) if ng else np.zeros((0, 0))
        beta = _chol_solve(Ls, g) if ng else np.zeros(0)
        thetas = [Dib - DiC @ beta for (_, _, DiC, Dib) in blocks]
        sigma = self._noise_scale(c, data, thetas, beta)
        self._solved = _Fit(arms, per, M, c, blocks, Ls, beta, thetas, sigma)
        return self._solved

    def _noise_scale(self, c: float, data, thetas, beta) -> float:
        """σ for the posterior covariance σ²A⁻¹: the residual standard deviation of the fit,
        shrunk towards the rewards' own spread by NOISE_PRIOR_WEIGHT pseudo-observations (so
        one early lucky fit cannot stop exploration). Residuals, not raw rewards: what the
        trial signal already explains is no longer uncertain."""
        n = self.n
        if n == 0:
            return NOISE_FALLBACK
        spread = max(self.reward_sq - n * c * c, 0.0)  # Σ (r − c)²
        rss = spread
        for (S, t), theta in zip(data, thetas):
            full = np.concatenate([theta, beta])
            rss += -2.0 * full @ t + full @ S @ full
        rss = max(rss, 0.0)
        prior_var = spread / n if n >= 2 and spread > 0 else NOISE_FALLBACK ** 2
        return math.sqrt((NOISE_PRIOR_WEIGHT * prior_var + rss) / (NOISE_PRIOR_WEIGHT + n))

    def coefficients(self) -> dict[str, Any]:
        """The fitted model in named form: c, β by action feature, b and w per arm."""
        fit = self._solve()
        return {
            "c": fit.c,
            "beta": dict(zip(self.action_names, fit.beta.tolist())),
            "intercepts": {arm: float(fit.thetas[k][0]) for k, arm in enumerate(fit.arms)},
            "context_weights": {arm: dict(zip(self.context_names, fit.thetas[k][1:].tolist()))
                                for k, arm in enumerate(fit.arms)},
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

    def _vectors(self, actions: Sequence[Action]) -> tuple["_Fit", list[int], np.ndarray]:
        """The fit, each action's arm index and its centred, scaled vector [1, z, g − ḡ]."""
        fit = self._solve()
        pos = {arm: k for k, arm in enumerate(fit.arms)}
        ks = []
        for a in actions:
            if a.arm not in pos:
                raise BanditError(f"unknown arm {a.arm!r}")
            ks.append(pos[a.arm])
        fill = self._action_means()  # once per decision, not once per action
        U = np.array([self._u(a.context, a.features or {}, fill) for a in actions])
        return fit, ks, U @ fit.M.T

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        """(c + predicted centred reward, α·σ_r·√(vᵀA⁻¹v)) per action."""
        scorer = self._scorer(actions)
        if scorer is not self:
            return scorer.scores(actions)
        fit, ks, V = self._vectors(actions)
        per = fit.per
        means = np.empty(len(actions))
        var = np.empty(len(actions))
        for i, k in enumerate(ks):
            x, h = V[i, :per], V[i, per:]
            L, C, DiC, _ = fit.blocks[k]
            means[i] = fit.c + x @ fit.thetas[k] + h @ fit.beta
            # [x, h]ᵀ A⁻¹ [x, h] by blocks: xᵀD⁻¹x + (h − CᵀD⁻¹x)ᵀ S⁻¹ (h − CᵀD⁻¹x)
            y = np.linalg.solve(L, x)
            r = h - DiC.T @ x
            q = np.linalg.solve(fit.Ls, r) if len(r) else r
            var[i] = y @ y + q @ q
        return means, self.alpha * fit.sigma * np.sqrt(np.maximum(var, 0.0))

    def floor(self) -> float:
        """ε_n = max(ε_min, ε·√(K / (K + n))): the exploration floor after n rewards, K arms
        (never above ε: `epsilon=0` switches the floor off whatever `epsilon_min` says)."""
        k = max(len(self.specs), 1)
        return max(min(self.epsilon_min, self.epsilon), self.epsilon * math.sqrt(k / (k + self.n)))

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        scorer = self._scorer(actions)
        if scorer is not self:
            return scorer.decide(actions, rng)
        if self.exploration == "ts":
            # One draw from N(θ̂, σ²A⁻¹): β from its marginal, then each arm's block given β.
            fit, ks, V = self._vectors(actions)
            per = fit.per
            beta = fit.beta + fit.sigma * _tri_solve_t(fit.Ls, rng.standard_normal(len(fit.beta)))
            drawn = [fit.blocks[k][3] - fit.blocks[k][2] @ beta
                     + fit.sigma * _tri_solve_t(fit.blocks[k][0], rng.standard_normal(per))
                     for k in range(len(fit.arms))]
            means = np.array([fit.c + V[i, :per] @ fit.thetas[k] + V[i, per:] @ fit.beta for i, k in enumerate(ks)])
            sampled = np.array([fit.c + V[i, :per] @ drawn[k] + V[i, per:] @ beta for i, k in enumerate(ks)])
            pmf = epsilon_floor(sampled, self.floor(), rng)
            return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=sampled - means)
        means, bonuses = self.scores(actions)
        pmf = epsilon_floor(means + bonuses, self.floor(), rng)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lambda_intercept": self.lam_intercept, "lambda_context": self.lam_context,
                "lambda_action": self.lam_action, "anchor": self.anchor, "anchor_prior": self.anchor_prior,
                "epsilon": self.epsilon, "epsilon_min": self.epsilon_min, "exploration": self.exploration}

    # -- derived state, for storage and rebuild checks ------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"context_names": list(self.context_names), "action_names": list(self.action_names),
                "S": {a: s.copy() for a, s in self.S.items()}, "t": {a: v.copy() for a, v in self.t.items()},
                "reward_sum": self.reward_sum, "reward_sq": self.reward_sq}

    # -- snapshot: a new process loads the sums instead of relearning the whole log ----------------
    def save(self, path, extra_header: Mapping[str, Any] | None = None) -> None:
        """The sums (float64, exact) in one .npz with a JSON header, written atomically."""
        import io
        import json

        from bandit.files import write_atomically

        names = list(self.specs)
        header = {"format": SNAPSHOT_FORMAT, "params": self.params(), "context_names": self.context_names,
                  "action_names": self.action_names, "reward_sum": self.reward_sum, "reward_sq": self.reward_sq,
                  "arms": [{"name": n, "operator": self.specs[n].operator, "params": dict(self.specs[n].params)}
                           for n in names],
                  **dict(extra_header or {})}
        arrays = {"header": np.array(json.dumps(header))}
        for i, n in enumerate(names):
            arrays[f"S_{i}"], arrays[f"t_{i}"] = self.S[n], self.t[n]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomically(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> tuple["PooledRidge", dict[str, Any]]:
        """The policy saved at `path` and the file's header."""
        import json

        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if header.get("format") != SNAPSHOT_FORMAT:
                raise ValueError("wrong format")
            p = header["params"]
            policy = cls(alpha=p["alpha"], lam_intercept=p["lambda_intercept"], lam_context=p["lambda_context"],
                         lam_action=p["lambda_action"], anchor=p["anchor"], anchor_prior=p["anchor_prior"],
                         epsilon=p["epsilon"], exploration=p["exploration"],
                         epsilon_min=p["epsilon_min"])
            policy.context_names = list(header["context_names"])
            policy.action_names = list(header["action_names"])
            policy.reward_sum, policy.reward_sq = float(header["reward_sum"]), float(header["reward_sq"])
            for i, a in enumerate(header["arms"]):
                policy.specs[a["name"]] = ArmSpec(a["name"], a["operator"], a["params"])
                policy.S[a["name"]] = np.array(z[f"S_{i}"], dtype=np.float64)
                policy.t[a["name"]] = np.array(z[f"t_{i}"], dtype=np.float64)
        return policy, header


class _Fit:
    """The solved posterior: transform, centring, per-arm blocks, β and its Schur factor."""

    __slots__ = ("arms", "per", "M", "c", "blocks", "Ls", "beta", "thetas", "sigma")

    def __init__(self, arms, per, M, c, blocks, Ls, beta, thetas, sigma):
        self.arms, self.per, self.M, self.c = arms, per, M, c
        self.blocks, self.Ls, self.beta, self.thetas, self.sigma = blocks, Ls, beta, thetas, sigma


def _chol_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A⁻¹ b for A = L Lᵀ."""
    return np.linalg.solve(L.T, np.linalg.solve(L, b))


def _tri_solve_t(L: np.ndarray, z: np.ndarray) -> np.ndarray:
    """L⁻ᵀ z: with z standard normal, a draw with covariance (L Lᵀ)⁻¹."""
    return np.linalg.solve(L.T, z) if len(z) else z
