"""The decision log: events as the self-contained records off-policy evaluation needs.

`bandit export --format jsonl` writes one JSON object per line, in event-id order:

    {"event_id": 12,                      # the event's id in the database
     "time": 1763900000.5,                # when it was proposed (Unix seconds)
     "task": "summarise",
     "policy": "linucb", "policy_params": {"alpha": 1.0, "lambda": 1.0, "epsilon": 0.05},
     "candidates": [["a", "b"], ["b", "a"]] or null,   # ordered model pairs offered
     "contexts": [{"kin_cos": 0.8, ...}, ...],         # one feature dict per candidate
     "actions": [{"arm": "ties", "candidate": 0, "p": 0.81}, ...],  # all offered, with p
                                         # (and "features": {...} when the action had its own,
                                         #  e.g. trial-merge signals)
     "chosen": 0,                         # index into actions
     "arm": "ties",                       # the chosen action's arm
     "probability": 0.81,                 # = actions[chosen].p
     "reward": 0.62 or null,              # null while no reward was reported
     "reward_source": "client",           # "client": reported by a user; "default": the
                                          # server's reward join window ran out and applied
                                          # its configured default; null without a reward
     "expired_at": null}                  # Unix seconds when the reward window closed with
                                          # no default configured (the event never gets a
                                          # reward); null otherwise

Offline, default rewards can be kept (they are what the live policy learned) or dropped
(they are not measured outcomes): `bandit replay --logged ... --default-rewards drop`.
Expired events carry no reward, so estimators skip them like any unrewarded event; the
report counts both. Logs written before these two fields read as client rewards.

The same file can be read back (`read_decision_log`) and evaluated with
`bandit replay --logged FILE`, so logs can be evaluated away from the database.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from bandit.errors import BanditError
from bandit.files import jsonl_objects, read_text

FORMATS = ("jsonl",)


@dataclass
class LoggedDecision:
    event_id: int
    task: str
    contexts: list[dict[str, float]]
    actions: list[dict[str, Any]]  # {"arm", "candidate"[, "features"]}
    pmf: list[float]
    chosen: int
    reward: float | None
    policy: str | None = None
    reward_source: str | None = None  # "client" or "default" (the join window's); None: no reward
    expired: bool = False  # the reward window closed with no reward

    @property
    def prob(self) -> float:
        return self.pmf[self.chosen]

    def context_of(self, i: int) -> dict[str, float]:
        return self.contexts[int(self.actions[i].get("candidate", 0))]


def event_record(ev: dict) -> dict[str, Any]:
    """One database event (as `Store.events()` yields it) in the decision-log layout."""
    actions = [{"arm": a["arm"], "candidate": int(a.get("candidate", 0)), "p": float(p),
                **({"features": dict(a["features"])} if a.get("features") else {})}
               for a, p in zip(ev["actions"], ev["pmf"])]
    return {
        "event_id": ev["id"], "time": ev["created_at"], "task": ev["task"], "policy": ev["policy"],
        "policy_params": ev["policy_params"], "candidates": ev["candidates"], "contexts": ev["contexts"],
        "actions": actions, "chosen": ev["chosen"], "arm": ev["arm"], "probability": float(ev["prob"]),
        "reward": ev["reward"],
        "reward_source": (ev.get("reward_source") or "client") if ev["reward"] is not None else None,
        "expired_at": ev.get("expired_at"),
    }


def export_events(events: Iterable[dict], out: IO[str], fmt: str = "jsonl") -> int:
    """Write events to `out` in the decision-log layout; returns how many."""
    if fmt not in FORMATS:
        raise BanditError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    n = 0
    for ev in events:
        out.write(json.dumps(event_record(ev)) + "\n")
        n += 1
    return n


def _decision(rec: Any, where: str) -> LoggedDecision:
    if not isinstance(rec, dict):
        raise BanditError(f"{where}: expected a JSON object")
    missing = [k for k in ("event_id", "contexts", "actions", "chosen") if k not in rec]
    if missing:
        raise BanditError(f"{where}: missing {', '.join(missing)}")
    actions, contexts, chosen = rec["actions"], rec["contexts"], rec["chosen"]
    if not isinstance(actions, list) or not actions or not all(isinstance(a, dict) and "arm" in a for a in actions):
        raise BanditError(f"{where}: 'actions' must be a non-empty list of {{arm, candidate, p}}")
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, dict) for c in contexts):
        raise BanditError(f"{where}: 'contexts' must be a non-empty list of feature objects")
    if not isinstance(chosen, int) or not 0 <= chosen < len(actions):
        raise BanditError(f"{where}: 'chosen' must index 'actions'")
    pmf = rec.get("pmf") or [a.get("p") for a in actions]
    try:
        pmf = [float(p) for p in pmf]
    except (TypeError, ValueError):
        raise BanditError(f"{where}: every action needs a probability 'p'") from None
    if len(pmf) != len(actions) or any(not (0 <= p <= 1) for p in pmf) or abs(sum(pmf) - 1) > 1e-6:
        raise BanditError(f"{where}: action probabilities must lie in [0, 1] and sum to 1")
    if pmf[chosen] <= 0:
        raise BanditError(f"{where}: the chosen action has probability 0; the log cannot be evaluated")
    for a in actions:
        c = int(a.get("candidate", 0))
        if not 0 <= c < len(contexts):
            raise BanditError(f"{where}: an action names candidate {c}, which has no context")
    reward = rec.get("reward")
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise BanditError(f"{where}: 'reward' must be a finite number or null")
        reward = float(reward)
    source = rec.get("reward_source")
    if source not in (None, "client", "default"):
        raise BanditError(f"{where}: 'reward_source' must be \"client\", \"default\" or null")
    if source is not None and reward is None:
        raise BanditError(f"{where}: 'reward_source' is {source!r} but there is no reward")
    expired_at = rec.get("expired_at")
    if expired_at is not None:
        if isinstance(expired_at, bool) or not isinstance(expired_at, (int, float)) or not math.isfinite(expired_at):
            raise BanditError(f"{where}: 'expired_at' must be a time in seconds or null")
        if reward is not None:
            raise BanditError(f"{where}: an expired event cannot have a reward")
    for c in contexts + [a.get("features") or {} for a in actions]:
        if not isinstance(c, dict):
            raise BanditError(f"{where}: contexts and action features must be objects of name: number")
        for k, v in c.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BanditError(f"{where}: feature {k!r} must be a finite number")
    return LoggedDecision(
        event_id=int(rec["event_id"]), task=str(rec.get("task", "")), contexts=contexts,
        actions=[{"arm": str(a["arm"]), "candidate": int(a.get("candidate", 0)),
                  **({"features": dict(a["features"])} if a.get("features") else {})} for a in actions],
        pmf=pmf, chosen=chosen, reward=reward, policy=rec.get("policy"),
        reward_source=(source or "client") if reward is not None else None, expired=expired_at is not None,
    )


def read_decision_log(path: str | os.PathLike) -> list[LoggedDecision]:
    """Read an exported JSONL decision log, checking every record."""
    return [_decision(rec, f"{path} line {n}") for n, rec in jsonl_objects(read_text(path), str(path))]


def decisions_from_events(events: Iterable[dict]) -> Iterator[LoggedDecision]:
    """Database events (as `Store.events()` yields them) as logged decisions."""
    for ev in events:
        yield _decision(event_record(ev), f"event {ev['id']}")
