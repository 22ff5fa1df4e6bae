"""Ridge sufficient statistics: the one owner of A = λI + Σ x xᵀ and b = Σ r x.

A posterior over the feature names `schema` (a bias term first, implicit) is stored as
little-endian float64 blobs. Every change to those statistics is made here: the prior, new
feature dimensions, one reward (`update`), a new λ (`shift_lambda`), a warm start's shrunk
copy (`shrink`). The functions run without numpy, so that a `bandit reward` process starts
in a few tens of milliseconds; `update` hands large updates to numpy when a process has
loaded it anyway, with the very same float operations (x_i·x_j, then one addition), so
every path gives bit-identical A and b and `bandit rebuild` can check the live posteriors
exactly. The numpy `Posterior` (posterior.py) scores with these statistics and learns
through `update`.
"""
from __future__ import annotations

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


# Above this dimension numpy's outer product beats the Python loop, if numpy is loaded.
_NUMPY_FROM_D = 8


def update(A, b, x: list[float], r: float) -> None:
    """A += x xᵀ, b += r x, in place (A, b: float64 buffers, `array` or numpy)."""
    d = len(x)
    np = sys.modules.get("numpy")
    if np is not None and (d > _NUMPY_FROM_D or isinstance(A, np.ndarray)):
        xa = np.asarray(x, dtype=np.float64)
        A_np = A if isinstance(A, np.ndarray) else np.frombuffer(A, dtype=np.float64)
        A_np.reshape(d, d)[...] += np.outer(xa, xa)
        b_np = b if isinstance(b, np.ndarray) else np.frombuffer(b, dtype=np.float64)
        b_np += r * xa
        return
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


def shift_lambda(A: array, d: int, delta: float) -> array:
    """A + δ·I: what learning the same data under λ + δ gives (A = λI + Σxxᵀ)."""
    A = array("d", A)
    for i in range(d):
        A[i * d + i] += delta
    return A


def shrink(A: array, b: array, lam: float, d: int, s: float) -> tuple[array, array]:
    """A' = λI + s·(A − λI), b' = s·b: a donor's direction with a fraction of its evidence."""
    A2 = array("d", bytes(8 * d * d))
    for i in range(d):
        for j in range(d):
            eye = lam if i == j else 0.0
            A2[i * d + j] = eye + s * (A[i * d + j] - eye)
    return A2, array("d", [s * v for v in b])


def is_finite(a) -> bool:
    return all(v - v == 0.0 for v in a)  # inf - inf and nan - nan are nan
