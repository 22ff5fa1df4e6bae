"""The reward join window (Personalizer's semantics): an event not rewarded within
`seconds` of its proposal gets the configured default reward — recorded as a real reward
flagged `default`, so the posterior never waits on an abandoned evaluation and `rebuild`
replays it like any other — or, with no default, is marked expired and teaches nothing.

A reward that arrives after the window closed is a conflict: a defaulted event already has
its (default) reward, an expired one is closed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from bandit.errors import Conflict, InvalidInput, NotFound
from bandit.inputs import parse_event_id, parse_number
from store import join_window as sql


@dataclass(frozen=True)
class JoinWindow:
    seconds: float
    default_reward: float | None  # None: expire instead

    def __post_init__(self):
        if not (self.seconds > 0) or self.seconds == float("inf"):
            raise InvalidInput(f"--reward-window must be a positive number of seconds, got {self.seconds!r}")
        if self.default_reward is not None:
            object.__setattr__(self, "default_reward", parse_number(self.default_reward, "--default-reward", bounded=True))

    def describe(self) -> dict:
        return {"seconds": self.seconds, "default_reward": self.default_reward,
                "on_timeout": "expire" if self.default_reward is None else "default_reward"}


def close_overdue(service, window: JoinWindow, now: float | None = None) -> dict[str, list[int]]:
    """Apply the default reward to (or expire) every event older than the window that has
    neither a reward nor an expiry. Each event is one transaction."""
    now = time.time() if now is None else now
    defaulted, expired = [], []
    for event_id in sql.overdue_events(service.store, now - window.seconds):
        with service.store.transaction():
            if window.default_reward is None:
                sql.mark_expired(service.store, event_id, window.seconds)
                expired.append(event_id)
                continue
            outcome = service.reward(event_id, window.default_reward)
            if not outcome.duplicate:
                sql.mark_default_reward(service.store, event_id)
                defaulted.append(event_id)
    return {"defaulted": defaulted, "expired": expired}


def reward_in_window(service, event_id: int | str, value: float | str):
    """`Service.reward`, refusing events whose window closed (an expiry; a default reward
    differing from `value` is refused by the reward path itself, as any second value is)."""
    event_id = parse_event_id(event_id)
    value = parse_number(value, "reward", bounded=True)
    store = service.store
    with store.transaction():
        # Checked here too, so that each refusal carries its kind (404 / 409 on the server).
        state = sql.reward_state(store, event_id)
        if state is None:
            raise NotFound(f"no event {event_id}")
        if state["expired_at"] is not None:
            raise Conflict(f"event {event_id} expired: its reward window closed before a reward came")
        if state["reward"] is not None and state["reward"] != value:
            if state["source"] == "default":
                raise Conflict(f"event {event_id} got the default reward {state['reward']!r} when its window "
                               f"closed; refusing a late value {value!r}")
            raise Conflict(f"event {event_id} already has reward {state['reward']!r}; "
                           f"refusing a different value {value!r}")
        return service.reward(event_id, value)
