"""Arms: the default set, and validating an arm's name, operator and parameters."""
from __future__ import annotations

import re
from typing import Any

from bandit.errors import BanditError

# Each an operator plus params, in the YAML conventions merge users know. Scalars apply to
# every model of a merge, so an arm fits a merge of any number of models.
DEFAULT_ARMS: list[tuple[str, str, dict[str, Any]]] = [
    ("linear", "linear", {"weight": 0.5}),
    ("slerp", "slerp", {"t": 0.5}),
    ("task_arithmetic", "task_arithmetic", {"lambda": 1.0}),
    ("ties", "ties", {"density": 0.5, "normalize": True}),
    ("dare_ties", "dare_ties", {"density": 0.5}),
    ("dare_linear", "dare_linear", {"density": 0.5}),
    ("breadcrumbs_ties", "breadcrumbs_ties", {"density": 0.9, "gamma": 0.01}),
    ("model_stock", "model_stock", {}),
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def check_arm_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise BanditError(f"bad arm name {name!r}: use letters, digits and _ . : + - (no spaces)")


def validate_operator(operator: str, params: dict[str, Any], n_models: int = 2) -> dict[str, Any]:
    """Check that the operator exists (built in or a plugin) and takes these parameters for
    a merge of `n_models` models. Returns the params as given: scalars stay scalars, so the
    arm fits merges of any size. The registry is imported here only, so proposing and
    rewarding never load it."""
    from merging.errors import MergeError
    from merging.registry import validate_params

    try:
        validate_params(operator, params, n_models)
    except MergeError as e:
        raise BanditError(str(e)) from None
    return params

