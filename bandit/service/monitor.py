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
from store import monitor as monitor_sql


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
    for r in monitor_sql.recent_events(store, limit):
        pmf, actions = json.loads(r.pop("pmf")), json.loads(r.pop("actions"))
        r["pmf"] = [{"arm": a["arm"], "candidate": a.get("candidate", 0), "p": p} for a, p in zip(actions, pmf)]
        out.append(r)
    return out


def pending(store, limit: int = 50) -> dict[str, Any]:
    count = sql.count_pending(store)
    # Listing the newest open events walks back from the newest one; with none open that
    # would be the whole log.
    return {"count": count, "events": sql.pending_events(store, limit) if count else [], **sql.window_counts(store)}


MIN_PULLS_FOR_BEST = 3  # an arm seen once or twice with a lucky reward is no "best fixed arm"


class RewardCurves:
    """Running means, one point per reward in recording order: the live policy's observed
    reward, and self-normalised IPS estimates (Σ w·r / Σ w, w = π(chosen)/p(chosen)) of each
    fixed arm and of uniform random over the offered actions. A fixed arm picks its arm on a
    uniformly chosen candidate pair. SNIPS rather than IPS: with ε/K floors of 0.006 a plain
    IPS curve jumps by 1/p at each exploratory pull and makes a poor arm look best.

    Kept up to date incrementally: `update(store)` reads only the rewards recorded since the
    last call, so a dashboard refreshing every few seconds costs what is new, not the log."""

    def __init__(self):
        self.last_reward_id = 0
        self.n = 0
        self.total = 0.0
        self.observed: list[float] = []
        self.random_num = self.random_den = 0.0
        self.random_curve: list[float] = []
        self.num: dict[str, float] = {}
        self.den: dict[str, float] = {}
        self.pulls: dict[str, int] = {}
        self.fixed_curves: dict[str, list[float | None]] = {}

    def update(self, store) -> dict[str, Any]:
        for r in store.rewarded_decisions_after(self.last_reward_id):
            self._learn(r)
            self.last_reward_id = r["reward_id"]
        return self.view()

    def _learn(self, r: dict) -> None:
        self.n += 1
        value, actions, p = r["value"], r["actions"], r["prob"]
        self.total += value
        self.observed.append(self.total / self.n)
        w = (1.0 / len(actions)) / p
        self.random_num += w * value
        self.random_den += w
        self.random_curve.append(self.random_num / self.random_den)
        chosen = actions[r["chosen"]]["arm"]
        for a in actions:
            if a["arm"] not in self.fixed_curves:
                self.fixed_curves[a["arm"]] = [None] * (self.n - 1)
                self.num[a["arm"]] = self.den[a["arm"]] = 0.0
                self.pulls[a["arm"]] = 0
        w = (1.0 / sum(1 for a in actions if a["arm"] == chosen)) / p
        self.num[chosen] += w * value
        self.den[chosen] += w
        self.pulls[chosen] += 1
        for a, curve in self.fixed_curves.items():
            curve.append(self.num[a] / self.den[a] if self.den[a] > 0 else None)

    def view(self) -> dict[str, Any]:
        final = {a: self.num[a] / self.den[a] for a in self.fixed_curves if self.den[a] > 0}
        eligible = [a for a in final if self.pulls[a] >= MIN_PULLS_FOR_BEST] or list(final)
        best = max(eligible, key=lambda a: final[a]) if eligible else None
        return {
            "rewards": self.n,
            "policy": self.observed,
            "random": self.random_curve,
            "best_fixed_arm": best,
            "best_fixed": self.fixed_curves[best] if best else [],
            "fixed_final": final,
            "fixed_pulls": dict(self.pulls),
        }


def reward_curves(store) -> dict[str, Any]:
    """The curves of the whole log, computed afresh (see RewardCurves)."""
    return RewardCurves().update(store)


class ArmShares:
    """Each arm's share of the proposals in `bins` consecutive, equal slices of the log.

    Kept up to date like RewardCurves: `update(store)` reads only the events after the last
    one seen and keeps, per arm, the positions in the log of the events that chose it, so a
    slice's count is two binary searches whatever the log's length."""

    def __init__(self, bins: int = 20):
        self.bins = bins
        self.last_event_id = 0
        self.n = 0
        self.positions: dict[str, list[int]] = {}  # arm -> positions of its events, ascending

    def update(self, store) -> dict[str, Any]:
        for r in monitor_sql.chosen_arms_after(store, self.last_event_id):
            self.positions.setdefault(r["arm"], []).append(self.n)
            self.n += 1
            self.last_event_id = r["id"]
        return self.view()

    def view(self) -> dict[str, Any]:
        from bisect import bisect_left

        if not self.n:
            return {"bins": 0, "edges": [], "shares": {}}
        bins = min(self.bins, self.n)
        edges = [round(i * self.n / bins) for i in range(bins + 1)]
        shares = {arm: [(bisect_left(pos, edges[k + 1]) - bisect_left(pos, edges[k])) / (edges[k + 1] - edges[k])
                        for k in range(bins)]
                  for arm, pos in self.positions.items()}
        return {"bins": bins, "edges": edges, "shares": shares}


def share_over_time(store, bins: int = 20) -> dict[str, Any]:
    """The shares of the whole log, computed afresh (see ArmShares)."""
    return ArmShares(bins).update(store)


def jobs_summary(store, limit: int = 20) -> dict[str, Any]:
    return {"counts": job_sql.count_by_state(store), "recent": job_sql.jobs(store, limit=limit)}


def health_counts(store) -> dict[str, Any]:
    return {
        "schema_version": store.conn.execute("PRAGMA user_version").fetchone()["user_version"],
        "events": store.count_events(), "rewards": store.count_rewards(),
        "pending_rewards": sql.count_pending(store), "jobs": job_sql.count_by_state(store),
    }
