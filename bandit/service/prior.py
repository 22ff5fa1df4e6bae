"""`bandit fit`: load a prior fitted on an outcome table into the live ridge posteriors.

The prior (see `bandit.offline.prior`) is written where rebuild reads an arm's starting
statistics — the arm's `prior_A`/`prior_b` — and added to its live posterior in the same
transaction, so `bandit rebuild` recomputes exactly what the live service holds. The fitted
numbers and what was added to each arm are recorded in the `outcome_prior` setting, which is
what `--clear` takes back out. Arms the table has no column for are left as they were; an
arm added later starts from the prior when the table has its column (`give_new_arm`).

The level: the live mean reward when the database holds at least as many rewards as arms
(fit after a first round of rewards, and the prior speaks the target's scale), else the
table's mean.

Policies that keep one ridge posterior per arm (linucb, lints, egreedy) use it live. pooled
(the default) reads the setting at decision time and puts the table's offsets on its per-arm
intercepts, which are relative to the live mean reward already (so the level does not matter
to it); hybrid and vw learn from the log alone and do not see it.
"""
from __future__ import annotations

from typing import Any

from bandit.errors import BanditError
from bandit.policies import ridge
from bandit.service.reward import RIDGE, arm_prior

SETTING = "outcome_prior"


def _shift(store, arm: str, lam: float, dA: float, db: float) -> None:
    """Add (dA, db) to the bias coordinate of the arm's starting statistics and its live posterior."""
    schema, A, b = arm_prior(store, arm, lam)
    A[0] += dA
    b[0] += db
    store.set_arm_prior_stats(arm, schema, ridge.dump(A), ridge.dump(b))
    row = store.posterior(RIDGE, arm)
    if row is not None:
        LA, Lb = ridge.load(row["A"]), ridge.load(row["b"])
        LA[0] += dA
        Lb[0] += db
        store.put_posterior(RIDGE, arm, row["schema"], row["lam"], ridge.dump(LA), ridge.dump(Lb), row["n"],
                            row["version"] + 1)


def _lam(store, arm: str, default: float) -> float:
    row = store.posterior(RIDGE, arm)
    return row["lam"] if row is not None else default


def current_prior(store) -> dict[str, Any] | None:
    return store.get_setting(SETTING)


def clear_prior(store, default_lam: float) -> dict[str, Any] | None:
    """Take the loaded prior back out; returns what was loaded (None: nothing was)."""
    with store.transaction():
        loaded = store.get_setting(SETTING)
        if loaded is None:
            return None
        for arm, (dA, db) in loaded["applied"].items():
            if store.arm(arm) is not None:
                _shift(store, arm, _lam(store, arm, default_lam), -dA, -db)
        store.set_setting(SETTING, None)
    return loaded


def load_prior(store, prior, default_lam: float, replace: bool = False) -> dict[str, Any]:
    """Write `prior` (a `bandit.offline.prior.Prior`) into every arm it has a column for."""
    with store.transaction():
        loaded = store.get_setting(SETTING)
        if loaded is not None:
            if not replace:
                raise BanditError(f"a prior is loaded already (from {loaded['prior']['source']}); "
                                  "give --replace to swap it, or `bandit fit --clear` first")
            for arm, (dA, db) in loaded["applied"].items():
                if store.arm(arm) is not None:
                    _shift(store, arm, _lam(store, arm, default_lam), -dA, -db)
        arms = {a["name"] for a in store.arms()}
        stats = store.arm_stats()
        pulls = sum(r["pulls"] or 0 for r in stats)
        if prior.centre == "live" and pulls >= len(arms) and pulls > 0:
            from bandit.offline.prior import centred_on

            # the live mean reward: the target's own scale (see bandit.offline.prior)
            prior = centred_on(prior, sum((r["mean_reward"] or 0.0) * (r["pulls"] or 0) for r in stats) / pulls)
        applied: dict[str, list[float]] = {}
        if prior.strength > 0:
            for arm in sorted(arms & set(prior.offsets)):
                dA, db = prior.strength, prior.strength * prior.pseudo_reward(arm)
                _shift(store, arm, _lam(store, arm, default_lam), dA, db)
                applied[arm] = [dA, db]
        record = {"prior": prior.to_dict(), "applied": applied,
                  "arms_without_column": sorted(arms - set(prior.offsets)),
                  "columns_without_arm": sorted(set(prior.offsets) - arms)}
        store.set_setting(SETTING, record)
    return record


def give_new_arm(store, arm: str, lam: float) -> bool:
    """An arm added after `bandit fit` starts from the loaded prior too, when the table had
    its column (a warm-started arm has its donor's statistics instead). Call inside the
    transaction that inserts the arm. Returns whether it got the prior."""
    loaded = store.get_setting(SETTING)
    if loaded is None or arm in loaded["applied"]:
        return False
    prior = loaded["prior"]
    if arm not in prior["offsets"] or prior["strength"] <= 0:
        return False
    dA = prior["strength"]
    db = dA * (prior["level"] + prior["offsets"][arm])
    _shift(store, arm, lam, dA, db)
    loaded["applied"][arm] = [dA, db]
    loaded["arms_without_column"] = [a for a in loaded["arms_without_column"] if a != arm]
    store.set_setting(SETTING, loaded)
    return True
