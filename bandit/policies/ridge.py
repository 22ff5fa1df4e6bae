"""Ridge sufficient statistics: the one owner of A = λI + Σ x xᵀ and b = Σ r x.

A posterior over the feature names `schema` (a bias term first, implicit) is stored as
little-endian float64 blobs. Every change to those statistics is made here: the prior, new
feature dimensions, one reward (`update`), a new λ (`shift_lambda`), a warm start's shrunk
copy (`shrink`). The functions run without numpy, so that a `bandit reward` process starts
in a few tens of milliseconds; `update` hands large updates to numpy when a process has
loaded it anyway, with the very same float operations (x_i·x_j, then one addition), so
every path gives bit-identical A and b and `bandit rebuild` can check the live posteriors
exactly. `Posterior`, at the end, is the numpy view that LinUCB and its relatives score
with: it keeps A⁻¹ and θ beside the statistics and changes them only through this module's
functions; numpy is imported when one is first built, never by the reward path.
"""
from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence

_SWAP = sys.byteorder != "little"
DTYPE = "<f8"  # the blobs' element type, as numpy spells it


def _np():
    """numpy, imported on first use: the reward path runs this module without it."""
    import numpy

    return numpy


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


# -- the numpy view -------------------------------------------------------------------------
class Posterior:
    """One arm's ridge posterior in numpy: A⁻¹ kept by Sherman–Morrison after each update and
    re-factored by Cholesky every `refactor_every` updates and on load, so rounding error
    cannot build up."""

    def __init__(
        self, schema: Sequence[str], lam: float, A, b, n: int = 0,
        refactor_every: int = 256,
    ):
        np = _np()
        self.schema = list(schema)
        self.lam = float(lam)
        d = len(self.schema) + 1
        self.A = np.array(A, dtype=np.float64).reshape(d, d)
        self.b = np.array(b, dtype=np.float64).reshape(d)
        self.n = int(n)
        self.refactor_every = int(refactor_every)
        self._index = {name: i + 1 for i, name in enumerate(self.schema)}
        self.refactor()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def prior(cls, lam: float = 1.0, schema: Sequence[str] = (), refactor_every: int = 256) -> "Posterior":
        np = _np()
        d = len(schema) + 1
        return cls(schema, lam, lam * np.eye(d), np.zeros(d), 0, refactor_every)

    @classmethod
    def from_blobs(cls, schema: Sequence[str], lam: float, A: bytes, b: bytes, n: int = 0,
                   refactor_every: int = 256) -> "Posterior":
        np = _np()
        return cls(schema, lam, np.frombuffer(A, dtype=DTYPE), np.frombuffer(b, dtype=DTYPE), n, refactor_every)

    def blobs(self) -> tuple[bytes, bytes]:
        return self.A.astype(DTYPE, copy=False).tobytes(), self.b.astype(DTYPE, copy=False).tobytes()

    def shrunk_copy(self, s: float) -> "Posterior":
        """A = λI + s·(A − λI), b = s·b: the donor's direction with a fraction of its confidence."""
        np = _np()
        A, b = shrink(self.A.ravel().tolist(), self.b.tolist(), self.lam, self.d, s)
        return Posterior(self.schema, self.lam, np.asarray(A), np.asarray(b), 0, self.refactor_every)

    @property
    def d(self) -> int:
        return len(self.schema) + 1

    # -- linear algebra ------------------------------------------------------------------
    def refactor(self) -> None:
        """A⁻¹ from a Cholesky factorisation of A (A is symmetric positive definite)."""
        np = _np()
        L = np.linalg.cholesky(self.A)
        L_inv = np.linalg.inv(L)  # triangular, d is small
        self.A_inv = L_inv.T @ L_inv
        self._since_refactor = 0
        self._theta = None

    @property
    def theta(self):
        if self._theta is None:
            self._theta = self.A_inv @ self.b
        return self._theta

    def vectors(self, contexts: Sequence[Mapping[str, float]]) -> tuple:
        """Rows x over this posterior's schema, and for each row the squared norm of the
        features this posterior has never seen (they are 0 in θ and λ⁻¹ in A⁻¹)."""
        np = _np()
        X = np.zeros((len(contexts), self.d))
        X[:, 0] = 1.0
        unseen = np.zeros(len(contexts))
        for r, ctx in enumerate(contexts):
            for k, v in ctx.items():
                i = self._index.get(k)
                if i is None:
                    unseen[r] += float(v) * float(v)
                else:
                    X[r, i] = v
        return X, unseen

    def mean_and_width(
        self, contexts: Sequence[Mapping[str, float]], vectors: tuple | None = None
    ) -> tuple:
        """θᵀx and √(xᵀA⁻¹x) for every context (`vectors`: this schema's `vectors(contexts)`,
        when the caller already built them for another posterior with the same schema)."""
        np = _np()
        X, unseen = vectors if vectors is not None else self.vectors(contexts)
        mean = X @ self.theta
        var = np.einsum("ij,jk,ik->i", X, self.A_inv, X) + unseen / self.lam
        return mean, np.sqrt(np.maximum(var, 0.0))

    def extend(self, names: Sequence[str]) -> None:
        """New feature dimensions: A gets λ on the new diagonal, A⁻¹ gets 1/λ (block diagonal)."""
        np = _np()
        names = [k for k in names if k not in self._index]
        if not names:
            return
        d, m = self.d, self.d + len(names)
        A = np.zeros((m, m))
        A[:d, :d] = self.A
        A_inv = np.zeros((m, m))
        A_inv[:d, :d] = self.A_inv
        for i in range(d, m):
            A[i, i] = self.lam
            A_inv[i, i] = 1.0 / self.lam
        self.A, self.A_inv = A, A_inv
        self.b = np.concatenate([self.b, np.zeros(len(names))])
        for k in names:
            self._index[k] = len(self.schema) + 1
            self.schema.append(k)
        self._theta = None

    def learn(self, context: Mapping[str, float], reward: float) -> None:
        """One observation: A += xxᵀ, b += r·x, A⁻¹ by Sherman–Morrison."""
        np = _np()
        self.extend(new_names(self.schema, context))
        x_list = vector(self.schema, context)
        update(self.A, self.b, x_list, reward)
        x = np.asarray(x_list)
        self.n += 1
        self._since_refactor += 1
        if self._since_refactor >= self.refactor_every:
            self.refactor()
            return
        Ax = self.A_inv @ x
        self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
        self._theta = None
