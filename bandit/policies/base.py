"""The narrow interface every policy implements, and the records it speaks in.

A decision is over *actions*: one (candidate model pair, arm) combination each, with the
context of its candidate. A policy scores actions (a reward estimate and an exploration
bonus), turns scores into a probability for every action (its exploration), learns from
one reward at a time, and takes up a new arm at any moment. Policies hold no database
handle: the service loads and saves their state, and replay drives them in memory.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArmSpec:
    """An arm: a name, a merge operator and its parameters."""

    name: str
    operator: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    arm: str
    context: Mapping[str, float]
    candidate: int = 0  # index of the ordered model pair this action would merge
    # Features of this action itself (trial-merge signals of this pair merged with this
    # arm), beside the candidate's context; empty for policies and callers without them.
    features: Mapping[str, float] = field(default_factory=dict)

    @cached_property
    def inputs(self) -> Mapping[str, float]:
        """What a per-arm model (LinUCB, LinTS, VW) sees: the context plus this action's
        features named `a:<feature>`, each with its own per-arm weight. The same dict as
        `context` when there are none, so actions of one candidate share it."""
        return with_action_features(self.context, self.features)


ACTION_PREFIX = "a:"


def with_action_features(context: Mapping[str, float], features: Mapping[str, float] | None) -> Mapping[str, float]:
    if not features:
        return context
    return {**context, **{ACTION_PREFIX + k: v for k, v in features.items()}}


@dataclass
class Decision:
    pmf: np.ndarray  # probability of every action, sums to 1
    chosen: int  # index into the actions
    means: np.ndarray  # reward estimate per action
    bonuses: np.ndarray  # exploration bonus per action

    @property
    def prob(self) -> float:
        return float(self.pmf[self.chosen])


class Policy(ABC):
    """Score candidates, learn one reward, take up a new arm."""

    name: str = "policy"
    learns_from_log: bool = True  # False: the live service may skip feeding it the rewards

    def __init__(self) -> None:
        self.specs: dict[str, ArmSpec] = {}  # arms known, in the order they were added

    @abstractmethod
    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        """Take up a new arm, from the prior or from a shrunk copy of another arm."""

    def check_new_arm(self, arm: ArmSpec, warm_start_from: str | None, shrink: float) -> None:
        """What every `add_arm` checks first: a new name, a known donor, a shrink in [0, 1]."""
        from bandit.errors import BanditError

        if arm.name in self.specs:
            raise BanditError(f"arm {arm.name!r} exists already")
        if warm_start_from is not None:
            if warm_start_from not in self.specs:
                raise BanditError(f"cannot warm-start from unknown arm {warm_start_from!r}")
            if not 0 <= shrink <= 1:
                raise BanditError(f"shrink must be in [0, 1], got {shrink}")

    @abstractmethod
    def learn_one(self, arm: str, context: Mapping[str, float], reward: float) -> None:
        """Learn from one reward of `arm` in `context`."""

    @abstractmethod
    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        """(reward estimate, exploration bonus) per action."""

    @abstractmethod
    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        """Probabilities over the actions and the one sampled from them."""

    def learn_decision(self, actions: Sequence[Action], chosen: int, reward: float, prob: float) -> None:
        """Learn from one logged decision: the actions offered, the one taken, its reward and
        the probability it was taken with. Ridge-style policies need only the chosen action;
        learners that reduce to importance-weighted regression (VW) override this."""
        action = actions[chosen]
        self.learn_one(action.arm, action.inputs, reward)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The settings to log with each event."""

    @property
    def arm_names(self) -> list[str]:
        """Arms this policy knows, in the order they were added."""
        return list(self.specs)
