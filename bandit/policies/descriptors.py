"""Arm descriptors: what an arm *is*, as features, so that arms can share what is learned.

A descriptor is a `{name: float}` dict built from the arm's operator and parameters:
- `op=<operator>`: one-hot of the operator;
- `family=<token>`: one-hot of each `_`-separated token of the operator name, so that
  `ties`, `dare_ties` and `breadcrumbs_ties` share `family=ties` and a new TIES variant
  starts from what the others taught;
- `param:<name>`: numeric parameters as they are (`density`, `weight`, `t`, `lambda`,
  `gamma`, `epsilon`, ...); booleans as 0/1, per-model lists by their mean.

Text parameters are left out: they name things (a tokenizer source, say) rather than
place the arm on a scale.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bandit.policies.base import ArmSpec

DESCRIPTOR_KINDS = ("operator+params", "none")


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (list, tuple)) and value:
        parts = [_numeric(v) for v in value]
        if all(p is not None for p in parts):
            return sum(parts) / len(parts)
    return None


def arm_descriptor(arm: ArmSpec, kind: str = "operator+params") -> dict[str, float]:
    """The descriptor of `arm`; kind `none` gives {} (no sharing between arms)."""
    if kind == "none":
        return {}
    if kind != "operator+params":
        raise ValueError(f"unknown descriptor kind {kind!r}; known: {', '.join(DESCRIPTOR_KINDS)}")
    out: dict[str, float] = {f"op={arm.operator}": 1.0}
    for token in arm.operator.split("_"):
        if token:
            out[f"family={token}"] = 1.0
    params: Mapping[str, Any] = arm.params or {}
    for name in sorted(params):
        v = _numeric(params[name])
        if v is not None:
            out[f"param:{name}"] = v
    return out
