"""SQL of the reward join window: events whose window ran out, default rewards, expiries.

A default reward is an ordinary row of `rewards` with source = 'default' (so `rebuild`
replays it like any other); an expiry is a row of `expired_events` and teaches nothing.
"""
from __future__ import annotations

import time

from store.store import Store


def overdue_events(store: Store, created_before: float, limit: int = 1000) -> list[int]:
    """Events created before `created_before` with neither a reward nor an expiry, oldest first."""
    rows = store._all(
        "SELECT e.id FROM events e WHERE e.created_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.event_id = e.id) "
        "AND NOT EXISTS (SELECT 1 FROM expired_events x WHERE x.event_id = e.id) ORDER BY e.id LIMIT ?",
        (created_before, limit),
    )
    return [r["id"] for r in rows]


def mark_default_reward(store: Store, event_id: int) -> None:
    store.conn.execute("UPDATE rewards SET source = 'default' WHERE event_id = ?", (event_id,))


def mark_expired(store: Store, event_id: int, window: float) -> None:
    store.conn.execute(
        "INSERT OR IGNORE INTO expired_events(event_id, expired_at, window) VALUES (?, ?, ?)",
        (event_id, time.time(), window),
    )


def expiry(store: Store, event_id: int) -> dict | None:
    return store._one("SELECT * FROM expired_events WHERE event_id = ?", (event_id,))


def reward_source(store: Store, event_id: int) -> str | None:
    row = store._one("SELECT source FROM rewards WHERE event_id = ?", (event_id,))
    return None if row is None else row["source"]


def pending_events(store: Store, limit: int = 50) -> list[dict]:
    """Events still waiting for a reward (neither rewarded nor expired), newest first."""
    return store._all(
        "SELECT e.id, e.created_at, e.task, e.arm, e.prob FROM events e "
        "WHERE NOT EXISTS (SELECT 1 FROM rewards r WHERE r.event_id = e.id) "
        "AND NOT EXISTS (SELECT 1 FROM expired_events x WHERE x.event_id = e.id) ORDER BY e.id DESC LIMIT ?",
        (limit,),
    )


def count_pending(store: Store) -> int:
    # Every reward and every expiry names one event, at most once each, so the events left
    # open are the events less the rewarded less the expired-and-unrewarded: three counts
    # SQLite takes from its b-trees, instead of two lookups per event.
    return store._one(
        "SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM rewards) - (SELECT count(*) FROM expired_events x "
        "WHERE NOT EXISTS (SELECT 1 FROM rewards r WHERE r.event_id = x.event_id)) AS n"
    )["n"]


def window_counts(store: Store) -> dict[str, int]:
    return {
        "default_rewards": store._one("SELECT count(*) AS n FROM rewards WHERE source = 'default'")["n"],
        "expired": store._one("SELECT count(*) AS n FROM expired_events")["n"],
    }


def reward_state(store: Store, event_id: int) -> dict | None:
    """Whether the event exists, its reward and where it came from, and its expiry: one
    query on the reward's hot path."""
    return store._one(
        "SELECT e.id, r.value AS reward, r.source AS source, x.expired_at FROM events e "
        "LEFT JOIN rewards r ON r.event_id = e.id LEFT JOIN expired_events x ON x.event_id = e.id WHERE e.id = ?",
        (event_id,),
    )
