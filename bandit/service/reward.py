"""Recording a reward: join it to its event and update that arm's posterior, atomically.

Runs without numpy so that `bandit reward` starts fast (see `bandit.policies.ridge`).
"""
from __future__ import annotations

from bandit.errors import Conflict, NotFound
from bandit.inputs import parse_event_id, parse_reward
from bandit.policies import ridge

RIDGE = "ridge"  # the posteriors' reward model shared by linucb, lints and egreedy
DEFAULT_LAMBDA = 1.0


class RewardOutcome:
    """What recording a reward did. (A plain class: dataclasses is slow to import, and this
    module is on the path of `bandit reward`, which must start fast.)"""

    __slots__ = ("event_id", "arm", "value", "duplicate", "pulls", "context")

    def __init__(self, event_id: int, arm: str, value: float, duplicate: bool, pulls: int,
                 context: dict[str, float]):
        self.event_id = event_id
        self.arm = arm
        self.value = value
        self.duplicate = duplicate  # the same value was recorded before; nothing changed
        self.pulls = pulls  # rewards the arm's posterior has learned from
        self.context = context  # the chosen action's context, as learned from

    def to_dict(self) -> dict:
        return {"event_id": self.event_id, "arm": self.arm, "reward": self.value, "duplicate": self.duplicate,
                "pulls": self.pulls}

    def __repr__(self) -> str:
        return (f"RewardOutcome(event_id={self.event_id}, arm={self.arm!r}, value={self.value}, "
                f"duplicate={self.duplicate}, pulls={self.pulls})")


def chosen_context(event: dict) -> dict[str, float]:
    """What the per-arm posteriors learn from: the chosen candidate's context plus the
    chosen action's own features (trial-merge signals) as `a:<feature>`, exactly as
    `Action.inputs` showed them to the policy."""
    action = event["actions"][event["chosen"]]
    context = event["contexts"][action.get("candidate", 0)]
    features = action.get("features")
    if not features:
        return context
    return {**context, **{"a:" + k: v for k, v in features.items()}}


def arm_prior(store, arm: str, lam: float) -> tuple[list[str], object, object]:
    """The statistics an arm starts from: its warm-start prior, or λI."""
    row = store.arm(arm)
    if row is not None and row.get("prior_A") is not None:
        import json

        return json.loads(row["prior_schema"]), ridge.load(row["prior_A"]), ridge.load(row["prior_b"])
    A, b = ridge.prior(lam, 1)
    return [], A, b


def record_reward(store, event_id: int | str, value: float | str) -> RewardOutcome:
    """Store the reward of one event and update the chosen arm's posterior in one transaction.

    The same value twice is a no-op; a different second value, an unknown event or a value
    that is not a finite number is an error, and nothing is changed.
    """
    event_id = parse_event_id(event_id)
    value = parse_reward(value)
    with store.transaction():
        event = store.event_for_reward(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        if event["reward"] is not None:
            if event["reward"] == value:
                post = store.posterior(RIDGE, event["arm"])
                return RewardOutcome(event_id, event["arm"], value, True, post["n"] if post else 0, chosen_context(event))
            raise Conflict(
                f"event {event_id} already has reward {event['reward']!r}; refusing a different value {value!r}"
            )
        store.insert_reward(event_id, value)
        context = chosen_context(event)
        n, _ = apply_to_posterior(store, event["arm"], context, value)
    return RewardOutcome(event_id, event["arm"], value, False, n, context)


def apply_to_posterior(store, arm: str, context: dict[str, float], value: float) -> tuple[int, int]:
    """A += xxᵀ, b += r·x on the stored posterior of `arm` (inside the caller's transaction)."""
    row = store.posterior(RIDGE, arm)
    if row is None:
        lam = store.get_setting("policy", {}).get("params", {}).get("lambda", DEFAULT_LAMBDA)
        schema, A, b = arm_prior(store, arm, lam)
        n, version = 0, 0
    else:
        lam, schema, n, version = row["lam"], row["schema"], row["n"], row["version"]
        A, b = ridge.load(row["A"]), ridge.load(row["b"])
    schema, A, b = ridge.extend(schema, A, b, lam, ridge.new_names(schema, context))
    ridge.update(A, b, ridge.vector(schema, context), value)
    store.put_posterior(RIDGE, arm, schema, lam, ridge.dump(A), ridge.dump(b), n + 1, version + 1)
    return n + 1, version + 1
