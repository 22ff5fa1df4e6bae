"""The ridge posterior of one arm, in numpy: what LinUCB and its relatives score with.

A = λI + Σ x xᵀ, b = Σ r x over `schema` (a bias term first), θ = A⁻¹b. A⁻¹ is kept by
Sherman–Morrison after each update and re-factored by Cholesky every `refactor_every`
updates and on load, so rounding error cannot build up.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bandit.policies import ridge

DTYPE = np.dtype("<f8")


def update_arrays(A, b, x: list[float], r: float) -> None:
    """`ridge.update` done by numpy on the same float64 buffers: the same operations
    (x_i·x_j, then one addition), hence bit-identical results, much faster for large d."""
    d = len(x)
    xa = np.asarray(x, dtype=np.float64)
    A_np = np.frombuffer(A, dtype=np.float64).reshape(d, d)
    A_np += np.outer(xa, xa)
    b_np = np.frombuffer(b, dtype=np.float64)
    b_np += r * xa


class Posterior:
    def __init__(
        self, schema: Sequence[str], lam: float, A: np.ndarray, b: np.ndarray, n: int = 0,
        refactor_every: int = 256,
    ):
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
        d = len(schema) + 1
        return cls(schema, lam, lam * np.eye(d), np.zeros(d), 0, refactor_every)

    @classmethod
    def from_blobs(cls, schema: Sequence[str], lam: float, A: bytes, b: bytes, n: int = 0,
                   refactor_every: int = 256) -> "Posterior":
        return cls(schema, lam, np.frombuffer(A, dtype=DTYPE), np.frombuffer(b, dtype=DTYPE), n, refactor_every)

    def blobs(self) -> tuple[bytes, bytes]:
        return self.A.astype(DTYPE, copy=False).tobytes(), self.b.astype(DTYPE, copy=False).tobytes()

    def shrunk_copy(self, s: float) -> "Posterior":
        """A = λI + s·(A − λI), b = s·b: the donor's direction with a fraction of its confidence."""
        eye = self.lam * np.eye(self.d)
        return Posterior(self.schema, self.lam, eye + s * (self.A - eye), s * self.b, 0, self.refactor_every)

    @property
    def d(self) -> int:
        return len(self.schema) + 1

    # -- linear algebra ------------------------------------------------------------------
    def refactor(self) -> None:
        """A⁻¹ from a Cholesky factorisation of A (A is symmetric positive definite)."""
        L = np.linalg.cholesky(self.A)
        L_inv = np.linalg.inv(L)  # triangular, d is small
        self.A_inv = L_inv.T @ L_inv
        self._since_refactor = 0
        self._theta = None

    @property
    def theta(self) -> np.ndarray:
        if self._theta is None:
            self._theta = self.A_inv @ self.b
        return self._theta

    def vectors(self, contexts: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows x over this posterior's schema, and for each row the squared norm of the
        features this posterior has never seen (they are 0 in θ and λ⁻¹ in A⁻¹)."""
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
        self, contexts: Sequence[Mapping[str, float]], vectors: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """θᵀx and √(xᵀA⁻¹x) for every context (`vectors`: this schema's `vectors(contexts)`,
        when the caller already built them for another posterior with the same schema)."""
        X, unseen = vectors if vectors is not None else self.vectors(contexts)
        mean = X @ self.theta
        var = np.einsum("ij,jk,ik->i", X, self.A_inv, X) + unseen / self.lam
        return mean, np.sqrt(np.maximum(var, 0.0))

    def extend(self, names: Sequence[str]) -> None:
        """New feature dimensions: A gets λ on the new diagonal, A⁻¹ gets 1/λ (block diagonal)."""
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
        self.extend(ridge.new_names(self.schema, context))
        x = np.asarray(ridge.vector(self.schema, context))
        self.A += np.outer(x, x)
        self.b += reward * x
        self.n += 1
        self._since_refactor += 1
        if self._since_refactor >= self.refactor_every:
            self.refactor()
            return
        Ax = self.A_inv @ x
        self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
        self._theta = None
