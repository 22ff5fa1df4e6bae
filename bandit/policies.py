"""Policies by name, built from the settings stored in the database."""
from __future__ import annotations

from typing import Any, Callable

from bandit.errors import BanditError
from bandit.linucb import LinUCB
from bandit.policy import Policy

DEFAULT_POLICY = {"name": "linucb", "params": {"alpha": 1.0, "lambda": 1.0, "epsilon": 0.05}}


def _linucb(params: dict[str, Any]) -> Policy:
    return LinUCB(
        alpha=float(params.get("alpha", 1.0)), lam=float(params.get("lambda", 1.0)),
        epsilon=float(params.get("epsilon", 0.05)),
    )


POLICIES: dict[str, Callable[[dict[str, Any]], Policy]] = {"linucb": _linucb}


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    factory = POLICIES.get(name)
    if factory is None:
        raise BanditError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return factory(dict(params or {}))
