"""Posteriors recomputed from the source of truth, events + rewards, and checked against the live ones."""
from __future__ import annotations

import math
from typing import Any

from bandit.errors import BanditError
from bandit.policies import ridge
from bandit.service.catalog import current_lambda
from bandit.service.records import RebuildReport
from bandit.service.reward import RIDGE, arm_prior, chosen_context

# Live and recomputed statistics are bit-identical when nothing went wrong; the tolerance
# only forgives a different summation order, relative to the largest entry of A.
TOLERANCE = 1e-12


def recompute_posteriors(store) -> tuple[dict[str, tuple[list[str], Any, Any, int, float]], int]:
    """Every arm's ridge statistics from its prior and the rewards, replayed in the order
    they were recorded (the order the live ones were updated in)."""
    lam_default = current_lambda(store)
    live = {r["arm"]: r for r in store.posteriors(RIDGE)}
    state: dict[str, list] = {}
    for arm in store.arms():
        lam = live[arm["name"]]["lam"] if arm["name"] in live else lam_default
        schema, A, b = arm_prior(store, arm["name"], lam)
        state[arm["name"]] = [schema, A, b, 0, lam]
    n_rewards = 0
    for r in store.rewards_in_order():
        st = state.get(r["arm"])
        if st is None:
            raise BanditError(f"reward for event {r['event_id']} names arm {r['arm']!r}, which is not in the arms table")
        ctx = chosen_context(r)  # the chosen candidate's context plus the action's own features
        st[0], st[1], st[2] = ridge.extend(st[0], st[1], st[2], st[4], ridge.new_names(st[0], ctx))
        ridge.update(st[1], st[2], ridge.vector(st[0], ctx), r["value"])
        st[3] += 1
        n_rewards += 1
    return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in state.items()}, n_rewards


def _difference(row: dict, A, b) -> tuple[float, float]:
    """Largest |live − recomputed| entry, and the scale it is judged against, max(1, largest
    |live A|). Any non-finite live entry is an infinite difference: NaN compares false with
    everything, so it would otherwise pass for a match."""
    live_A, live_b = ridge.load(row["A"]), ridge.load(row["b"])
    if len(live_A) != len(A) or len(live_b) != len(b) or not (ridge.is_finite(live_A) and ridge.is_finite(live_b)):
        return math.inf, 1.0
    diff = max([abs(x - y) for x, y in zip(live_A, A)] + [abs(x - y) for x, y in zip(live_b, b)])
    return diff, max([1.0] + [abs(x) for x in live_A])


def rebuild(store, check: bool = False) -> RebuildReport:
    """Recompute every posterior. With check, compare with the live ones and change
    nothing; without, write the recomputed ones."""
    with store.transaction():
        fresh, n_rewards = recompute_posteriors(store)
        live = {r["arm"]: r for r in store.posteriors(RIDGE)}
        mismatched, max_diff = [], 0.0
        for arm, (schema, A, b, n, lam) in fresh.items():
            row = live.get(arm)
            if row is None or row["schema"] != schema or row["n"] != n:
                mismatched.append(arm)
                continue
            diff, scale = _difference(row, A, b)
            max_diff = max(max_diff, diff)
            if not diff <= TOLERANCE * scale:
                mismatched.append(arm)
        mismatched += [arm for arm in live if arm not in fresh]
        if not check:
            store.delete_posteriors(RIDGE)
            for arm, (schema, A, b, n, lam) in fresh.items():
                version = live[arm]["version"] + 1 if arm in live else 1
                store.put_posterior(RIDGE, arm, schema, lam, ridge.dump(A), ridge.dump(b), n, version)
    return RebuildReport(len(fresh), n_rewards, max_diff, sorted(mismatched), not check)
