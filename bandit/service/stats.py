"""Per-arm statistics of one database, at a cost that does not grow with the log.

The statistics are sums over the log (proposals and pulls per arm, each arm's reward sum,
the sum of every event's chosen context), so they are kept as a summary with two cursors:
the last event id and the last reward id it covers. Each call adds only what came after
the cursors and stores the summary back (store/schema.py, version 4). Ids only grow and
rows are never deleted, so a summary is always right for its cursors, whichever process
wrote it and whenever it was cut off: nothing is written on the propose/reward path, and
a lost or missing summary costs one full read of the log.

The sums are exact (integers in units of 2^-1074, the smallest float64 step), so the
result is the same whatever order the log was added up in — incrementally, from scratch,
in several processes — and each mean is the exact mean rounded once.
"""
from __future__ import annotations

import json

from bandit.service.records import ArmStats
from bandit.service.reward import RIDGE, chosen_context

SCALE = 1074  # every finite float64 is an integer multiple of 2^-1074


def exact(x: float) -> int:
    """x as an integer number of 2^-1074 steps (no rounding)."""
    num, den = float(x).as_integer_ratio()  # den is a power of two <= 2^1074
    return num << (SCALE - den.bit_length() + 1)


def exact_mean(total: int, count: int) -> float:
    """total·2^-1074 / count, correctly rounded (Python's int / int is)."""
    return total / (count << SCALE)


class StatsSummary:
    """The sums behind `bandit stats`, up to an event id and a reward id."""

    def __init__(self, events_upto: int = 0, rewards_upto: int = 0, events: int = 0,
                 arms: dict[str, list[int]] | None = None, context: dict[str, int] | None = None):
        self.events_upto = events_upto
        self.rewards_upto = rewards_upto
        self.events = events
        self.arms = arms or {}  # arm -> [proposals, pulls, exact reward sum]
        self.context = context or {}  # feature -> exact sum of the chosen contexts

    @classmethod
    def load(cls, row: dict | None) -> "StatsSummary":
        if row is None:
            return cls()
        body = json.loads(row["summary"])
        return cls(row["events_upto"], row["rewards_upto"], body["events"],
                   {a: [p, n, int(s, 16)] for a, (p, n, s) in body["arms"].items()},
                   {k: int(v, 16) for k, v in body["context"].items()})

    def dumps(self) -> str:
        return json.dumps({"events": self.events,
                           "arms": {a: [p, n, hex(s)] for a, (p, n, s) in self.arms.items()},
                           "context": {k: hex(v) for k, v in self.context.items()}}, separators=(",", ":"))

    def _arm(self, name: str) -> list[int]:
        totals = self.arms.get(name)
        if totals is None:
            totals = self.arms[name] = [0, 0, 0]
        return totals

    def catch_up(self, store) -> bool:
        """Add every event and reward after the cursors; True when there was any."""
        before = (self.events_upto, self.rewards_upto)
        for ev in store.chosen_after(self.events_upto):
            self._arm(ev["arm"])[0] += 1
            for k, v in chosen_context(ev).items():
                self.context[k] = self.context.get(k, 0) + exact(v)
            self.events += 1
            self.events_upto = ev["id"]
        for r in store.rewards_after(self.rewards_upto):
            totals = self._arm(r["arm"])
            totals[1] += 1
            totals[2] += exact(r["value"])
            self.rewards_upto = r["id"]
        return (self.events_upto, self.rewards_upto) != before

    def average_context(self) -> dict[str, float]:
        """The mean chosen context over all proposals (a feature an event lacks counts as 0)."""
        return {k: exact_mean(v, self.events) for k, v in self.context.items()} if self.events else {}


def current_summary(store) -> StatsSummary:
    """The stored summary brought up to the end of the log (one read snapshot), and stored
    back when it moved (unless the write lock is busy: the next call stores it)."""
    with store.reading():
        summary = StatsSummary.load(store.stats_summary())
        moved = summary.catch_up(store)
    if moved:
        store.put_stats_summary(summary.events_upto, summary.rewards_upto, summary.dumps())
    return summary


def arm_stats(store) -> list[ArmStats]:
    """Per arm: proposals, pulls (rewarded), mean reward, posterior mean at the average
    context of all proposals, and share of proposals."""
    from bandit.policies.ridge import Posterior

    summary = current_summary(store)
    avg = summary.average_context()
    out = []
    for arm in store.arms():
        proposals, pulls, reward_sum = summary.arms.get(arm["name"], (0, 0, 0))
        row = store.posterior(RIDGE, arm["name"])
        post_mean = None
        if row is not None:
            post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"])
            post_mean = float(post.mean_and_width([avg])[0][0])
        out.append(ArmStats(arm=arm["name"], operator=arm["operator"], status=arm["status"], proposals=proposals,
                            pulls=pulls, mean_reward=exact_mean(reward_sum, pulls) if pulls else None,
                            posterior_mean=post_mean, share=proposals / summary.events if summary.events else 0.0))
    return out
