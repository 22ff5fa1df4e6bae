"""SQL of the server's dashboard: the newest events with the fate of their reward, and
which arm each event chose (the share of each arm over time)."""
from __future__ import annotations

from store.store import Store


def recent_events(store: Store, limit: int = 20) -> list[dict]:
    """The newest events with their reward, its source and the expiry: what a dashboard lists."""
    return store._all(
        "SELECT e.id, e.created_at, e.task, e.arm, e.model_a, e.model_b, e.prob, e.pmf, e.actions, "
        "r.value AS reward, r.source AS reward_source, x.expired_at FROM events e "
        "LEFT JOIN rewards r ON r.event_id = e.id LEFT JOIN expired_events x ON x.event_id = e.id "
        "ORDER BY e.id DESC LIMIT ?",
        (limit,),
    )


def chosen_arms_after(store: Store, event_id: int) -> list[dict]:
    """The id and arm of every event after `event_id`, in event order."""
    return store._all("SELECT id, arm FROM events WHERE id > ? ORDER BY id", (event_id,))
