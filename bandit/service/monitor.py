"""What an experiment looks like from its log: one event with its reward's fate, the
events still waiting, and the running mean reward of the live policy against the best
fixed arm and uniform random, both estimated from the log by inverse propensity weighting
(every logged action keeps probability ≥ ε/K, so the estimates are unbiased).
"""
from __future__ import annotations

import json
from typing import Any

from bandit.errors import NotFound
from bandit.inputs import parse_event_id
from store import jobs as job_sql
from store import join_window as sql


def event_view(store, event_id: int | str) -> dict[str, Any]:
    """One event as logged, with its reward, where the reward came from and any expiry."""
    event_id = parse_event_id(event_id)
    ev = store.event(event_id)
    if ev is None:
        raise NotFound(f"no event {event_id}")
    exp = sql.expiry(store, event_id)
    ev["reward_source"] = sql.reward_source(store, event_id)
    ev["expired_at"] = None if exp is None else exp["expired_at"]
    return ev


def recent_events(store, limit: int = 20) -> list[dict[str, Any]]:
    out = []
    for r in sql.recent_events(store, limit):
        pmf, actions = json.loads(r.pop("pmf")), json.loads(r.pop("actions"))
        r["pmf"] = [{"arm": a["arm"], "candidate": a.get("candidate", 0), "p": p} for a, p in zip(actions, pmf)]
        out.append(r)
    return out


def pending(store, limit: int = 50) -> dict[str, Any]:
    return {"count": sql.count_pending(store), "events": sql.pending_events(store, limit), **sql.window_counts(store)}


def reward_curves(store) -> dict[str, Any]:
    """Running means, one point per reward in recording order: the live policy's observed
    reward, and IPS estimates of each fixed arm and of uniform random over the offered
    actions. A fixed arm picks its arm on a uniformly chosen candidate pair."""
    observed: list[float] = []
    fixed_sums: dict[str, float] = {}
    fixed_curves: dict[str, list[float]] = {}
    random_curve: list[float] = []
    total = random_sum = 0.0
    n = 0
    arms_seen: list[str] = []
    for r in store.rewarded_decisions(store.rewarded_event_ids()):
        n += 1
        total += r["value"]
        observed.append(total / n)
        actions, p = r["actions"], r["prob"]
        k = len(actions)
        random_sum += r["value"] * (1.0 / k) / p
        random_curve.append(random_sum / n)
        arms = []
        for a in actions:
            if a["arm"] not in arms:
                arms.append(a["arm"])
        for a in arms:
            if a not in fixed_sums:
                fixed_sums[a] = 0.0
                fixed_curves[a] = [0.0] * (n - 1)
                arms_seen.append(a)
        chosen = actions[r["chosen"]]["arm"]
        candidates = max(1, sum(1 for a in actions if a["arm"] == chosen))
        fixed_sums[chosen] += r["value"] * (1.0 / candidates) / p
        for a in arms_seen:
            fixed_curves[a].append(fixed_sums[a] / n)
    best = max(arms_seen, key=lambda a: fixed_curves[a][-1]) if arms_seen else None
    return {
        "rewards": n,
        "policy": observed,
        "random": random_curve,
        "best_fixed_arm": best,
        "best_fixed": fixed_curves[best] if best else [],
        "fixed_final": {a: fixed_curves[a][-1] for a in arms_seen},
    }


def jobs_summary(store, limit: int = 20) -> dict[str, Any]:
    return {"counts": job_sql.count_by_state(store), "recent": job_sql.jobs(store, limit=limit)}


def health_counts(store) -> dict[str, Any]:
    return {
        "schema_version": store.conn.execute("PRAGMA user_version").fetchone()["user_version"],
        "events": store.count_events(), "rewards": store.count_rewards(),
        "pending_rewards": sql.count_pending(store), "jobs": job_sql.count_by_state(store),
    }
