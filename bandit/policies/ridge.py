"""Ridge sufficient statistics in plain Python: the update that `bandit reward` runs.

A posterior over the feature names `schema` (a bias term first, implicit) is
A = λI + Σ x xᵀ and b = Σ r x, stored as little-endian float64 blobs. This module
updates those blobs without numpy, so that a `bandit reward` process starts in a few
tens of milliseconds. The numpy `Posterior` performs the very same float operations
(x_i·x_j, then one addition), so both paths give bit-identical A and b and
`bandit rebuild` can check the live posteriors exactly.
"""
from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Mapping

_SWAP = sys.byteorder != "little"


def load(blob: bytes) -> array:
    a = array("d")
    a.frombytes(blob)
    if _SWAP:
        a.byteswap()
    return a


def dump(a: array) -> bytes:
    if _SWAP:
        a = array("d", a)
        a.byteswap()
    return a.tobytes()


def prior(lam: float, d: int) -> tuple[array, array]:
    """A = λI, b = 0 for d dimensions (bias included)."""
    A = array("d", bytes(8 * d * d))
    for i in range(d):
        A[i * d + i] = lam
    return A, array("d", bytes(8 * d))


def new_names(schema: list[str], context: Mapping[str, float]) -> list[str]:
    known = set(schema)
    return [k for k in context if k not in known]


def extend(schema: list[str], A: array, b: array, lam: float, names: list[str]) -> tuple[list[str], array, array]:
    """Add feature dimensions never seen before. Past contexts had them at 0, so the old
    block stays, the new diagonal gets λ and everything else 0: the exact ridge statistics."""
    if not names:
        return schema, A, b
    d = len(schema) + 1
    m = d + len(names)
    A2 = array("d", bytes(8 * m * m))
    for i in range(d):
        A2[i * m: i * m + d] = A[i * d: (i + 1) * d]
    for i in range(d, m):
        A2[i * m + i] = lam
    b2 = array("d", b)
    b2.extend([0.0] * len(names))
    return schema + list(names), A2, b2


def vector(schema: list[str], context: Mapping[str, float]) -> list[float]:
    return [1.0] + [float(context.get(k, 0.0)) for k in schema]


def update(A: array, b: array, x: list[float], r: float) -> None:
    """A += x xᵀ, b += r x, in place."""
    d = len(x)
    for i in range(d):
        xi = x[i]
        if xi == 0.0:
            # adding (+0.0 or -0.0) products leaves a finite A unchanged bit for bit
            # except for a -0.0 entry, which never occurs: A starts at λI/0 and only grows.
            continue
        row = i * d
        for j in range(d):
            A[row + j] += xi * x[j]
        b[i] += r * xi


def check_context(context: Mapping[str, float]) -> None:
    for k, v in context.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"feature names must be non-empty strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"feature {k!r} must be a finite number, got {v!r}")
