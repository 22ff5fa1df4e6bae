"""Hybrid LinUCB (Li et al. 2010, Algorithm 2): a shared linear part plus a per-arm part.

An action of arm a in context x (a bias term first) has features x for the arm's own
coefficients θ_a and z = x ⊗ d_a for the shared coefficients β, where d_a is the arm's
descriptor (operator family one-hot and numeric parameters, see `bandit.policies.descriptors`).
Expected reward zᵀβ + xᵀθ_a. Because β is learned from every arm's rewards, a new arm
scores zᵀβ̂ from its first round: it is informed by the arms that resemble it.

State (λ replaces the paper's identity so the prior matches the disjoint policy's):
A₀ = λI + …, b₀ (shared); per arm A_a = λ_aI + Σxxᵀ, B_a = Σxzᵀ, b_a = Σr·x, with the
per-arm λ_a (`arm_lambda`) equal to λ unless set. The paper's two-step update of A₀ is a
rank-one change, so A₀⁻¹ follows by Sherman–Morrison (see `learn_one`).
β̂ = A₀⁻¹b₀, θ̂_a = A_a⁻¹(b_a − B_a β̂), and the width
s = zᵀA₀⁻¹z − 2zᵀA₀⁻¹B_aᵀA_a⁻¹x + xᵀA_a⁻¹x + xᵀA_a⁻¹B_aA₀⁻¹B_aᵀA_a⁻¹x,
which with w = B_aᵀA_a⁻¹x is (z − w)ᵀA₀⁻¹(z − w) + xᵀA_a⁻¹x — one quadratic form per
block, vectorised over an arm's actions.

Feature names and descriptor components may appear at any time: past rows had them at 0,
so growing every matrix with λ on the new diagonal keeps the statistics exact.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit.policies.descriptors import DESCRIPTOR_KINDS, arm_descriptor
from bandit.errors import BanditError
from bandit.policies.exploration import epsilon_floor, sample
from bandit.files import write_atomically
from bandit.policies.base import Action, ArmSpec, Decision, Policy

FORMAT = "simmerge-hybrid/1"


def _inverse_spd(A: np.ndarray) -> np.ndarray:
    """A⁻¹ of a symmetric positive definite matrix through its Cholesky factor."""
    if A.shape[0] == 0:
        return np.zeros((0, 0))
    L_inv = np.linalg.inv(np.linalg.cholesky(A))
    return L_inv.T @ L_inv


def _grow_square(M: np.ndarray, extra: int, diag: float) -> np.ndarray:
    n = M.shape[0]
    out = np.zeros((n + extra, n + extra))
    out[:n, :n] = M
    out[range(n, n + extra), range(n, n + extra)] = diag
    return out


class _ArmPart:
    """The per-arm statistics A_a, B_a, b_a and the products scoring needs."""

    def __init__(self, A: np.ndarray, B: np.ndarray, b: np.ndarray, n: int = 0):
        self.A, self.B, self.b, self.n = A, B, b, n
        self.A_inv = _inverse_spd(A)
        self.since_refactor = 0
        self._M: np.ndarray | None = None

    @property
    def M(self) -> np.ndarray:
        """A_a⁻¹B_a (d × k), cached until the arm learns or grows."""
        if self._M is None:
            self._M = self.A_inv @ self.B
        return self._M

    def invalidate(self) -> None:
        self._M = None


class HybridLinUCB(Policy):
    name = "hybrid"

    def __init__(
        self, alpha: float = 1.0, lam: float = 1.0, epsilon: float = 0.05,
        descriptor: str = "operator+params", refactor_every: int = 256, arm_lam: float | None = None,
    ):
        super().__init__()
        if not alpha >= 0:
            raise BanditError(f"alpha must be >= 0, got {alpha}")
        if not lam > 0:
            raise BanditError(f"lambda must be > 0, got {lam}")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        if descriptor not in DESCRIPTOR_KINDS:
            raise BanditError(f"descriptor must be one of {', '.join(DESCRIPTOR_KINDS)}, got {descriptor!r}")
        self.alpha, self.lam, self.epsilon = float(alpha), float(lam), float(epsilon)
        # The per-arm ridge λ: larger says "an arm deviates little from what its descriptor
        # predicts", which narrows a rarely pulled arm's width; equal to λ by default so
        # that without descriptors this is exactly disjoint LinUCB.
        self.arm_lam = float(arm_lam) if arm_lam is not None else self.lam
        if not self.arm_lam > 0:
            raise BanditError(f"arm_lambda must be > 0, got {arm_lam}")
        self.descriptor = descriptor
        self.refactor_every = int(refactor_every)
        self.features: list[str] = []  # context schema; x = [1, features...]
        self._fidx: dict[str, int] = {}
        self.desc_names: list[str] = []  # descriptor schema
        self._didx: dict[str, int] = {}
        # z = x[zi] * desc[zj]: pairs appended as names appear, so old coordinates never move
        self.zi = np.zeros(0, dtype=np.intp)
        self.zj = np.zeros(0, dtype=np.intp)
        self.A0 = np.zeros((0, 0))
        self.b0 = np.zeros(0)
        self.A0_inv = np.zeros((0, 0))
        self.beta = np.zeros(0)
        self._shared_updates = 0
        self.parts: dict[str, _ArmPart] = {}
        self.desc: dict[str, np.ndarray] = {}
        self._desc_dicts: dict[str, dict[str, float]] = {}

    # -- dimensions ----------------------------------------------------------------------
    @property
    def d(self) -> int:
        return len(self.features) + 1

    @property
    def k(self) -> int:
        return len(self.zi)

    def _grow_shared(self, extra: int) -> None:
        self.A0 = _grow_square(self.A0, extra, self.lam)
        self.A0_inv = _grow_square(self.A0_inv, extra, 1.0 / self.lam)
        self.b0 = np.concatenate([self.b0, np.zeros(extra)])
        self.beta = np.concatenate([self.beta, np.zeros(extra)])
        for part in self.parts.values():
            part.B = np.hstack([part.B, np.zeros((part.B.shape[0], extra))])
            part.invalidate()

    def _add_features(self, names: Sequence[str]) -> None:
        if not names:
            return
        d_old = self.d
        for name in names:
            self._fidx[name] = len(self.features) + 1
            self.features.append(name)
        extra = len(names)
        for part in self.parts.values():
            part.A = _grow_square(part.A, extra, self.arm_lam)
            part.A_inv = _grow_square(part.A_inv, extra, 1.0 / self.arm_lam)
            part.B = np.vstack([part.B, np.zeros((extra, part.B.shape[1]))])
            part.b = np.concatenate([part.b, np.zeros(extra)])
            part.invalidate()
        m = len(self.desc_names)
        new_i = np.repeat(np.arange(d_old, self.d), m)
        new_j = np.tile(np.arange(m), extra)
        self.zi = np.concatenate([self.zi, new_i]).astype(np.intp)
        self.zj = np.concatenate([self.zj, new_j]).astype(np.intp)
        self._grow_shared(len(new_i))

    def _add_descriptor_names(self, names: Sequence[str]) -> None:
        if not names:
            return
        m_old = len(self.desc_names)
        for name in names:
            self._didx[name] = len(self.desc_names)
            self.desc_names.append(name)
        new_j = np.repeat(np.arange(m_old, len(self.desc_names)), self.d)
        new_i = np.tile(np.arange(self.d), len(names))
        self.zi = np.concatenate([self.zi, new_i]).astype(np.intp)
        self.zj = np.concatenate([self.zj, new_j]).astype(np.intp)
        self._grow_shared(len(new_i))
        for arm, dd in self._desc_dicts.items():
            self.desc[arm] = self._desc_vector(dd)

    def _desc_vector(self, dd: Mapping[str, float]) -> np.ndarray:
        v = np.zeros(len(self.desc_names))
        for name, value in dd.items():
            v[self._didx[name]] = value
        return v

    def _matrix(self, contexts: Sequence[Mapping[str, float]]) -> np.ndarray:
        new = [k for ctx in contexts for k in ctx if k not in self._fidx]
        if new:
            self._add_features(list(dict.fromkeys(new)))
        X = np.zeros((len(contexts), self.d))
        X[:, 0] = 1.0
        for r, ctx in enumerate(contexts):
            for name, value in ctx.items():
                X[r, self._fidx[name]] = value
        return X

    def _z(self, X: np.ndarray, arm: str) -> np.ndarray:
        return X[:, self.zi] * self.desc[arm][self.zj]

    # -- the Policy interface ------------------------------------------------------------
    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        self.check_new_arm(arm, warm_start_from, shrink)
        dd = arm_descriptor(arm, self.descriptor)
        self._add_descriptor_names([k for k in dd if k not in self._didx])
        d, k = self.d, self.k
        if warm_start_from is None:
            part = _ArmPart(self.arm_lam * np.eye(d), np.zeros((d, k)), np.zeros(d))
        else:
            donor = self.parts[warm_start_from]
            # The donor's evidence enters as pseudo-observations with z = 0: its residual
            # after the shared part (b_d − B_dβ̂), shrunk. B stays 0, so the shared
            # statistics A₀, b₀ stay consistent with what the arm really observed.
            eye = self.arm_lam * np.eye(d)
            part = _ArmPart(eye + shrink * (donor.A - eye), np.zeros((d, k)),
                            shrink * (donor.b - donor.B @ self.beta))
        self.parts[arm.name] = part
        self._desc_dicts[arm.name] = dd
        self.desc[arm.name] = self._desc_vector(dd)
        self.specs[arm.name] = arm

    def learn_one(self, arm: str, context: Mapping[str, float], reward: float) -> None:
        part = self.parts.get(arm)
        if part is None:
            raise BanditError(f"unknown arm {arm!r}")
        X = self._matrix([context])
        x = X[0]
        z = self._z(X, arm)[0]
        # With u = A_a⁻¹x, c = 1 + xᵀu and w = B_aᵀu (before the update), the paper's
        # two-step A₀ update (take the arm's old B_aᵀA_a⁻¹B_a out, add zzᵀ and the new one)
        # collapses to the rank-one A₀ += (z − w)(z − w)ᵀ/c, so A₀⁻¹ follows by
        # Sherman–Morrison instead of a k × k inversion per round.
        u = part.A_inv @ x
        c = 1.0 + x @ u
        h = z - part.B.T @ u
        old_shared_b = part.M.T @ part.b
        part.A += np.outer(x, x)
        part.B += np.outer(x, z)
        part.b += reward * x
        part.n += 1
        part.since_refactor += 1
        if part.since_refactor >= self.refactor_every:
            part.A_inv = _inverse_spd(part.A)
            part.since_refactor = 0
        else:
            part.A_inv -= np.outer(u, u) / c
        part.invalidate()
        self.A0 += np.outer(h, h) / c
        self.b0 += reward * z - (part.M.T @ part.b - old_shared_b)
        self._shared_updates += 1
        if self._shared_updates >= self.refactor_every:
            self.A0 = 0.5 * (self.A0 + self.A0.T)
            self.A0_inv = _inverse_spd(self.A0)
            self._shared_updates = 0
        elif self.k:
            Ah = self.A0_inv @ h
            self.A0_inv -= np.outer(Ah, Ah) / (c + h @ Ah)
        self.beta = self.A0_inv @ self.b0

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        means = np.empty(len(actions))
        widths = np.empty(len(actions))
        by_arm: dict[str, list[int]] = {}
        for i, a in enumerate(actions):
            by_arm.setdefault(a.arm, []).append(i)
        for arm in by_arm:
            if arm not in self.parts:
                raise BanditError(f"unknown arm {arm!r}")
        X_all = self._matrix([a.inputs for a in actions])
        for arm, idx in by_arm.items():
            part = self.parts[arm]
            X = X_all[idx]
            Z = self._z(X, arm)
            theta = part.A_inv @ (part.b - part.B @ self.beta)
            means[idx] = Z @ self.beta + X @ theta
            U = Z - X @ part.M
            s = ((U @ self.A0_inv) * U).sum(axis=1) + ((X @ part.A_inv) * X).sum(axis=1)
            widths[idx] = np.sqrt(np.maximum(s, 0.0))
        return means, self.alpha * widths

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        means, bonuses = self.scores(actions)
        pmf = epsilon_floor(means + bonuses, self.epsilon, rng)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=means, bonuses=bonuses)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lambda": self.lam, "arm_lambda": self.arm_lam, "epsilon": self.epsilon,
                "descriptor": self.descriptor}

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra_header: Mapping[str, Any] | None = None) -> None:
        """Every array of the state (inverses included, so a reloaded policy continues bit
        for bit) in one .npz with a JSON header; written to a temporary sibling and renamed."""
        path = Path(path)
        names = list(self.parts)
        header = {
            "format": FORMAT, "params": self.params(), "features": self.features, "desc_names": self.desc_names,
            "shared_updates": self._shared_updates,
            "arms": [{"name": n, "operator": self.specs[n].operator, "params": dict(self.specs[n].params),
                      "n": self.parts[n].n, "since_refactor": self.parts[n].since_refactor} for n in names],
            **dict(extra_header or {}),
        }
        arrays = {"header": np.array(json.dumps(header)), "zi": self.zi, "zj": self.zj, "A0": self.A0,
                  "b0": self.b0, "A0_inv": self.A0_inv, "beta": self.beta}
        for i, n in enumerate(names):
            part = self.parts[n]
            arrays.update({f"A_{i}": part.A, f"A_inv_{i}": part.A_inv, f"B_{i}": part.B, f"b_{i}": part.b})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomically(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["HybridLinUCB", dict[str, Any]]:
        """The policy saved at `path` and the file's header."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                if header.get("format") != FORMAT:
                    raise ValueError("wrong format")
                p = header["params"]
                policy = cls(alpha=p["alpha"], lam=p["lambda"], epsilon=p["epsilon"], descriptor=p["descriptor"],
                             arm_lam=p["arm_lambda"])
                policy.features = list(header["features"])
                policy._fidx = {k: i + 1 for i, k in enumerate(policy.features)}
                policy.desc_names = list(header["desc_names"])
                policy._didx = {k: i for i, k in enumerate(policy.desc_names)}
                policy.zi, policy.zj = z["zi"].astype(np.intp), z["zj"].astype(np.intp)
                policy.A0, policy.b0, policy.A0_inv, policy.beta = z["A0"], z["b0"], z["A0_inv"], z["beta"]
                policy._shared_updates = int(header["shared_updates"])
                for i, a in enumerate(header["arms"]):
                    spec = ArmSpec(a["name"], a["operator"], a["params"])
                    part = _ArmPart(z[f"A_{i}"], z[f"B_{i}"], z[f"b_{i}"], int(a["n"]))
                    part.A_inv = z[f"A_inv_{i}"]
                    part.since_refactor = int(a["since_refactor"])
                    dd = arm_descriptor(spec, policy.descriptor)
                    policy.parts[spec.name] = part
                    policy._desc_dicts[spec.name] = dd
                    policy.desc[spec.name] = policy._desc_vector(dd)
                    policy.specs[spec.name] = spec
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise BanditError(f"{path}: not a simmerge hybrid state ({e})") from None
        return policy, header
