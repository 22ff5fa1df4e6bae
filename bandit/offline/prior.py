"""A prior fitted on an outcome table, shrunk so that it can only help a little or not at all.

SimMerge's offline predictor, made safe: a full per-arm ridge fitted on one table and used on
another regime closes −0.3 to −2.4 of the gap (issue #10), because its context weights do
not transfer. What does transfer, when anything does, is which operators are good on average.
So the prior is intercept-only: arm k is expected at `level + offset_k`, where `level` is the
table's mean reward and `offset_k` arm k's mean relative to it, and it enters a policy as
`strength` pseudo-observations of that reward per arm at the all-zero context (for a ridge
arm: A[0,0] += m, b[0] += m·(level + offset_k) — the bias coordinate only).

The level is the target's own: a table from another regime may score on another scale, and a
prior level above the live rewards would make every prior arm look better than the tried
ones. With `centre="live"` (the default) the prior is applied once the target has as many
rewards as arms, around their mean — replay does so, and `bandit fit` does so when the
database has that many rewards already (before that it uses the table's mean; measured on
two synthetic regimes, the table's level cost linucb and lints up to 0.18 of gap closure
where the live level cost nothing measurable).

Its weight is learned from live rewards the Bayesian way: after n live rewards of an arm the
prior counts m / (m + n) of its intercept. The strength m is chosen by empirical Bayes on the
table itself, treating its tasks as draws of "another regime": an arm's offset varies
between tasks with variance τ² (beyond what sampling noise explains); a prior N(offset, τ²) on
a new task's arm mean is worth m = σ²/τ² rewards, σ² being one reward's variance around its arm's mean over the whole
table (what one live reward tells about that mean). Tables whose tasks disagree about the
operators get a weak prior;
a table with one task cannot tell, and gets `SINGLE_TASK_STRENGTH`. `max_strength` caps m.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bandit.errors import BanditError

SINGLE_TASK_STRENGTH = 1.0  # pseudo-rewards per arm when a table cannot estimate τ²
# A prior never counts for more than this many rewards per arm. Measured on two synthetic
# regimes (benchmarks/prior_transfer.py): at 4–8 the prior of another regime cost lints up
# to 0.1 of gap closure in a single pass; at 2 no policy was worse within the 95 % interval.
MAX_STRENGTH = 2.0


@dataclass(frozen=True)
class Prior:
    source: str  # where it was fitted (a path, or a description)
    digest: str  # sha256 prefix of the fitted numbers, to recognise the same prior
    level: float  # the table's mean reward
    offsets: dict[str, float]  # per arm: mean reward − level
    strength: float  # pseudo-rewards per arm
    tau2: float | None  # between-task variance of the offsets (None: one task)
    sigma2: float  # variance of one reward around its arm's mean over the table
    centre: str = "table"  # "table": level is the table's mean; "live": the target's mean, once known

    def pseudo_reward(self, arm: str) -> float:
        return self.level + self.offsets[arm]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Prior":
        return cls(str(d["source"]), str(d["digest"]), float(d["level"]),
                   {str(k): float(v) for k, v in d["offsets"].items()}, float(d["strength"]),
                   None if d.get("tau2") is None else float(d["tau2"]), float(d["sigma2"]),
                   str(d.get("centre", "table")))


def centred_on(prior: Prior, level: float) -> Prior:
    """The same offsets around another level (the target's own mean reward)."""
    from dataclasses import replace

    return replace(prior, level=float(level))


def _digest(level: float, offsets: Mapping[str, float], strength: float) -> str:
    blob = json.dumps([level, sorted(offsets.items()), strength]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fit_prior(table, source: str = "", strength: float | None = None,
              max_strength: float = MAX_STRENGTH, centre: str = "live") -> Prior:
    """The intercept-only prior of an `OutcomeTable` (every row, every arm counts once).
    `strength` overrides the empirical-Bayes choice (0 switches the prior off)."""
    R = np.asarray(table.R, dtype=np.float64)
    if R.size == 0:
        raise BanditError("cannot fit a prior on an empty table")
    level = float(R.mean())
    offsets = {a: float(R[:, j].mean() - level) for j, a in enumerate(table.arms)}
    tasks = sorted(set(table.tasks))
    task_rows = {t: np.array([i for i, x in enumerate(table.tasks) if x == t]) for t in tasks}
    # σ²: one reward around its arm's mean over the whole table — how much one live reward,
    # from whichever request, tells about the arm's mean (pooled over arms)
    dof = R.shape[0] * R.shape[1] - R.shape[1]
    sigma2 = float(((R - R.mean(axis=0)) ** 2).sum() / dof) if dof > 0 else float(R.var())
    tau2 = None
    if len(tasks) >= 2:
        per_task = np.array([R[rows].mean(axis=0) - R[rows].mean() for rows in task_rows.values()])  # tasks × arms
        between = float(per_task.var(axis=0, ddof=1).mean())
        noise = float(np.mean([sigma2 / len(rows) for rows in task_rows.values()]))
        tau2 = max(between - noise, 0.0)
    if strength is None:
        if tau2 is None:
            strength = SINGLE_TASK_STRENGTH
        else:
            strength = max_strength if tau2 <= sigma2 / max_strength else sigma2 / tau2
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
        raise BanditError(f"prior strength must be a finite number >= 0, got {strength!r}")
    strength = float(min(strength, max_strength))
    if centre not in ("table", "live"):
        raise BanditError(f"prior centre must be 'table' or 'live', got {centre!r}")
    return Prior(source, _digest(level, offsets, strength), level, offsets, strength, tau2, sigma2, centre)


def prior_from_outcomes(path, strength: float | None = None) -> Prior:
    from bandit.offline.outcomes import read_outcomes

    return fit_prior(read_outcomes(path), str(path), strength)


def below_best(offsets: Mapping[str, float]) -> dict[str, float]:
    """The offsets measured from the table's best arm (all ≤ 0), for a policy whose
    intercepts are relative to the mean reward it has earned (pooled): a policy that learns
    earns about the best arm's reward, so the table's mean over all arms — the `level` — sits
    below that centre by the best arm's offset, and offsets around it would lift every
    weak arm by as much (measured: that cost 1.4 of a small gap over ×10 recurrence on a
    table from another regime)."""
    top = max(offsets.values(), default=0.0)
    return {a: v - top for a, v in offsets.items()}


def ridge_prior_terms(prior: Prior, arm: str) -> tuple[float, float]:
    """What the prior adds to a ridge arm's bias coordinate: (to A[0,0], to b[0])."""
    m = prior.strength
    return m, m * prior.pseudo_reward(arm)


def apply_prior(policy, prior: Prior, arms: Iterable[str]) -> list[str]:
    """Give the prior to `arms` of a fresh policy; returns the arms it reached (arms the
    table has no column for start as they would without a prior).

    Ridge arms get the exact pseudo-counts on their bias coordinate; a policy with its own
    intercept prior (pooled, whose intercepts are relative to the live mean) gets the offsets
    there, added to the arms it had; other policies learn round(strength) pseudo-rewards per
    arm at the empty context through `learn_one`."""
    from bandit.policies.linucb import RidgeArms

    reached = [a for a in arms if a in prior.offsets]
    if prior.strength <= 0:
        return []
    if hasattr(policy, "set_intercept_prior"):
        offsets = dict(policy.intercept_prior)
        best = below_best(prior.offsets)
        offsets.update({a: best[a] for a in reached})
        policy.set_intercept_prior(offsets, prior.strength)
    elif isinstance(policy, RidgeArms):
        for arm in reached:
            post = policy.posteriors[arm]
            dA, db = ridge_prior_terms(prior, arm)
            post.A[0, 0] += dA
            post.b[0] += db
            post.refactor()
    else:
        for arm in reached:
            for _ in range(int(round(prior.strength))):
                policy.learn_one(arm, {}, prior.pseudo_reward(arm))
    return reached
