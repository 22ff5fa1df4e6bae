"""Full-information outcome tables: the one owner of their format, and a synthetic generator.

Format (CSV with a header, or JSONL with one object per line; arm names are free text):

- `task`, `model_a`, `model_b`: the request's task and the ordered pair a row would merge.
- `f:<feature>`: the row's context (pair-level similarity signals of that ordered pair).
- `r:<arm>`: the reward that arm's merge of that ordered pair earned. Every row has every arm.
- `a:<arm>:<feature>` (optional): a per-action feature of that arm on that row, e.g. a
  trial-merge signal. The feature name is what follows the last `:`, so arm names may hold
  `:` but action-feature names may not. Every arm needs every action feature named anywhere.
- `request` (optional, version 2): rows sharing a request id are the *candidates* of one
  merge request — both orders of a pair, or several pairs — from which a policy picks one
  (candidate, arm) action. Rows of a request share its task; their order in the table is the
  order the user listed them in (the first is what a user without a bandit would merge).
  Without a `request` column (version 1) every row is a request with one candidate.

`group_pair_orders` turns a version-1 table holding both orders of each pair (as the zoo's
used to) into a version-2 table with one request per unordered pair.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandit.arms import DEFAULT_ARMS
from bandit.errors import BanditError
from bandit.files import jsonl_objects, read_text, write_atomically
from bandit.inputs import parse_finite
from bandit.policies.base import ArmSpec
from bandit.policies.descriptors import arm_descriptor


@dataclass
class OutcomeTable:
    tasks: list[str]
    pairs: list[tuple[str, str]]
    features: list[str]  # context feature names, without the `f:` prefix
    X: np.ndarray  # rows × features
    arms: list[str]
    R: np.ndarray  # rows × arms: the reward each arm would have earned
    expected: np.ndarray | None = None  # rows × arms noiseless rewards, when known (synthetic)
    requests: list[str] | None = None  # request id per row; None: every row its own request
    action_features: list[str] = field(default_factory=list)  # names, without `a:<arm>:`
    A: np.ndarray | None = None  # rows × arms × action_features
    _groups: list[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tasks)

    def contexts(self) -> list[dict[str, float]]:
        return [dict(zip(self.features, map(float, row))) for row in self.X]

    def action_contexts(self) -> list[list[dict[str, float]]]:
        """Per row, per arm: the action features of that (row, arm), as a dict."""
        if not self.action_features or self.A is None:
            empty: dict[str, float] = {}
            return [[empty] * len(self.arms) for _ in range(len(self))]
        return [[dict(zip(self.action_features, map(float, cell))) for cell in row] for row in self.A]

    # -- requests ------------------------------------------------------------------------
    def request_groups(self) -> list[np.ndarray]:
        """Row indices of each request's candidates, in table order; requests in order of
        their first row."""
        if self._groups is None:
            if self.requests is None:
                self._groups = [np.array([i], dtype=np.intp) for i in range(len(self))]
            else:
                index: dict[str, list[int]] = {}
                for i, r in enumerate(self.requests):
                    index.setdefault(r, []).append(i)
                self._groups = [np.array(rows, dtype=np.intp) for rows in index.values()]
        return self._groups

    def request_tasks(self) -> list[str]:
        return [self.tasks[g[0]] for g in self.request_groups()]

    @property
    def n_requests(self) -> int:
        return len(self.request_groups())

    def first_candidate_rewards(self) -> np.ndarray:
        """requests × arms: each arm on the candidate listed first (what a user asked for)."""
        return self.R[[g[0] for g in self.request_groups()]]

    def best_candidate_rewards(self) -> np.ndarray:
        """requests × arms: each arm on its best candidate of the request (hindsight)."""
        return np.array([self.R[g].max(axis=0) for g in self.request_groups()])

    def oracle_rewards(self) -> np.ndarray:
        """Per request: the best (candidate, arm) reward."""
        return self.best_candidate_rewards().max(axis=1)

    def best_fixed_arm(self) -> int:
        """The arm with the highest mean reward over the requests when always applied to the
        first-listed candidate (hindsight): what a user without a bandit would do. Gap
        closure is measured against it. For a version-1 table: the best mean over rows."""
        return int(np.argmax(self.first_candidate_rewards().mean(axis=0)))

    def best_fixed_arm_best_candidate(self) -> int:
        """The arm with the highest mean when applied to each request's best candidate in
        hindsight: a stricter baseline (it knows the best order), reported beside."""
        return int(np.argmax(self.best_candidate_rewards().mean(axis=0)))

    def best_arm_per_row(self) -> np.ndarray:
        """The known best arm of each row: by expected reward when known, else realised."""
        return np.argmax(self.expected if self.expected is not None else self.R, axis=1)


def _action_columns(keys: Sequence[str], arms: Sequence[str], source: str) -> list[str]:
    """Action-feature names from the `a:<arm>:<feature>` columns; every arm needs every one."""
    seen: dict[str, set[str]] = {}
    for k in keys:
        if not k.startswith("a:"):
            continue
        arm, sep, feat = k[2:].rpartition(":")
        if not sep or not arm or not feat:
            raise BanditError(f"{source}: bad action-feature column {k!r} (write a:<arm>:<feature>)")
        if arm not in arms:
            raise BanditError(f"{source}: column {k!r} names arm {arm!r}, which has no r:{arm} column")
        seen.setdefault(feat, set()).add(arm)
    names = list(seen)
    for feat in names:
        missing = [a for a in arms if a not in seen[feat]]
        if missing:
            raise BanditError(f"{source}: action feature {feat!r} has no column for arm(s) "
                              f"{', '.join(missing)} (a:<arm>:{feat})")
    return names


def _from_records(records: list[dict], source: str) -> OutcomeTable:
    if not records:
        raise BanditError(f"{source}: no rows")
    keys = list(records[0])
    features = [k[2:] for k in keys if k.startswith("f:")]
    arms = [k[2:] for k in keys if k.startswith("r:")]
    if not arms:
        raise BanditError(f"{source}: no reward columns (name them r:<arm>)")
    if "task" not in keys:
        raise BanditError(f"{source}: no 'task' column")
    action_features = _action_columns(keys, arms, source)
    has_requests = "request" in keys
    n = len(records)
    X = np.empty((n, len(features)))
    R = np.empty((n, len(arms)))
    A = np.empty((n, len(arms), len(action_features))) if action_features else None
    tasks, pairs, requests = [], [], []
    needed = (["task"] + (["request"] if has_requests else []) + [f"f:{f}" for f in features]
              + [f"r:{a}" for a in arms] + [f"a:{a}:{f}" for a in arms for f in action_features])
    request_task: dict[str, str] = {}
    for i, rec in enumerate(records):
        where = f"{source} row {i + 1}"
        missing = [c for c in needed if rec.get(c) in (None, "")]
        if missing:
            raise BanditError(f"{where}: missing {', '.join(missing)}")
        tasks.append(str(rec["task"]))
        pairs.append((str(rec.get("model_a") or ""), str(rec.get("model_b") or "")))
        if has_requests:
            req = str(rec["request"])
            if request_task.setdefault(req, tasks[-1]) != tasks[-1]:
                raise BanditError(f"{where}: request {req!r} has rows of tasks {request_task[req]!r} and "
                                  f"{tasks[-1]!r}; the candidates of one request share its task")
            requests.append(req)
        for j, f in enumerate(features):
            X[i, j] = parse_finite(rec[f"f:{f}"], f"{where} f:{f}")
        for j, a in enumerate(arms):
            R[i, j] = parse_finite(rec[f"r:{a}"], f"{where} r:{a}")
            for m, f in enumerate(action_features):
                A[i, j, m] = parse_finite(rec[f"a:{a}:{f}"], f"{where} a:{a}:{f}")
    return OutcomeTable(tasks, pairs, features, X, arms, R, requests=requests if has_requests else None,
                        action_features=action_features, A=A)


def read_outcomes(path: str | os.PathLike) -> OutcomeTable:
    """Read a CSV or JSONL outcome table (JSONL when the name ends in .jsonl/.ndjson or the
    first non-blank character is `{`)."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        records = [rec for _, rec in jsonl_objects(text, str(path))]
        if records:
            # JSONL rows may order keys differently: take the columns from the first row
            first = set(records[0])
            for n, rec in enumerate(records[1:], 2):
                extra = {k for k in set(rec) - first if k.startswith(("f:", "r:", "a:")) or k == "request"}
                if extra:
                    raise BanditError(f"{path} row {n}: columns {sorted(extra)} are not in the first row")
    else:
        records = list(csv.DictReader(text.splitlines()))
    return _from_records(records, str(path))


def table_records(table: OutcomeTable) -> list[dict[str, Any]]:
    """The table as one dict per row, columns in the documented order."""
    rows = []
    for i in range(len(table)):
        rec: dict[str, Any] = {}
        if table.requests is not None:
            rec["request"] = table.requests[i]
        rec.update({"task": table.tasks[i], "model_a": table.pairs[i][0], "model_b": table.pairs[i][1]})
        rec.update({f"f:{f}": float(v) for f, v in zip(table.features, table.X[i])})
        rec.update({f"r:{a}": float(v) for a, v in zip(table.arms, table.R[i])})
        if table.A is not None:
            for j, a in enumerate(table.arms):
                rec.update({f"a:{a}:{f}": float(v) for f, v in zip(table.action_features, table.A[i, j])})
        rows.append(rec)
    return rows


def write_records(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write rows (dicts with the same keys) as CSV, or JSONL when the name ends in .jsonl;
    atomically, so an interrupted run never leaves half a table. Floats keep every digit."""
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for r in records:
            buf.write(json.dumps(dict(r)) + "\n")
    else:
        fields = list(records[0]) if records else ["task", "model_a", "model_b"]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    write_atomically(path, buf.getvalue().encode("utf-8"))


def write_outcomes(table: OutcomeTable, path: str | os.PathLike) -> None:
    """Write CSV, or JSONL when the name ends in .jsonl."""
    write_records(table_records(table), path)


def group_pair_orders(table: OutcomeTable) -> OutcomeTable:
    """One request per (task, unordered pair): both orders of a pair become the two
    candidates of one request, the order met first in the table listed first."""
    if table.requests is not None:
        raise BanditError("the table has a request column already")
    requests = []
    for i, (task, (a, b)) in enumerate(zip(table.tasks, table.pairs)):
        if not a or not b:
            raise BanditError(f"row {i + 1}: model_a and model_b are needed to group the two orders of a pair")
        requests.append(f"{task}|{min(a, b)}|{max(a, b)}")
    return OutcomeTable(list(table.tasks), list(table.pairs), list(table.features), table.X, list(table.arms),
                        table.R, table.expected, requests, list(table.action_features), table.A)


@dataclass
class TableSummary:
    """What a table allows: per-arm means, the oracle and both fixed-arm baselines."""

    rows: int
    requests: int
    arms: list[str]
    arm_means: dict[str, float]  # on the first-listed candidate of each request
    oracle_mean: float  # best (candidate, arm) per request
    best_fixed_arm: str
    best_fixed_mean: float  # that arm on the first-listed candidate
    best_fixed_arm_best_candidate: str
    best_fixed_best_candidate_mean: float  # that arm on each request's best candidate
    wins: dict[str, int]  # requests where each arm is (one of) the best

    @property
    def gap(self) -> float:
        return self.oracle_mean - self.best_fixed_mean

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["gap"] = self.gap
        return d


def summarize_table(table: OutcomeTable) -> TableSummary:
    first = table.first_candidate_rewards()
    best = table.best_candidate_rewards()
    top = best.max(axis=1, keepdims=True)
    k, kb = table.best_fixed_arm(), table.best_fixed_arm_best_candidate()
    return TableSummary(
        rows=len(table), requests=table.n_requests, arms=list(table.arms),
        arm_means={a: float(v) for a, v in zip(table.arms, first.mean(axis=0))},
        oracle_mean=float(top.mean()), best_fixed_arm=table.arms[k], best_fixed_mean=float(first[:, k].mean()),
        best_fixed_arm_best_candidate=table.arms[kb], best_fixed_best_candidate_mean=float(best[:, kb].mean()),
        wins={a: int(n) for a, n in zip(table.arms, (best == top).sum(axis=0))},
    )


def default_arm_specs() -> list[ArmSpec]:
    return [ArmSpec(n, op, p) for n, op, p in DEFAULT_ARMS]


def variant_arm_specs() -> list[ArmSpec]:
    """25 arms: the usual operators over a grid of their main parameter. Neighbours on the
    grid behave alike, which is the situation where sharing through descriptors pays."""
    specs = []
    for op in ("ties", "dare_ties", "dare_linear", "breadcrumbs_ties"):
        for density in (0.2, 0.4, 0.6, 0.8):
            specs.append(ArmSpec(f"{op}@{density}", op, {"density": density}))
    for op, key, values in (("linear", "weight", (0.3, 0.5, 0.7)), ("slerp", "t", (0.3, 0.5, 0.7)),
                            ("task_arithmetic", "lambda", (0.5, 1.0, 1.5))):
        for v in values:
            specs.append(ArmSpec(f"{op}@{v}", op, {key: v}))
    return specs


def synthetic_outcomes(
    n_rows: int = 1000, arms: Sequence[ArmSpec] | None = None, n_features: int = 4,
    noise: float = 0.05, arm_specific: float = 0.3, tasks: Sequence[str] = ("task0", "task1", "task2"),
    task_shift: float = 0.3, seed: int = 0, candidates: int = 1, action_features: int = 0,
    action_noise: float = 0.05, level: float = 0.5,
) -> OutcomeTable:
    """A table with linear rewards + Gaussian noise whose best arm depends on the context.

    Context features are bounded in [-1, 1] like the real signals. Arm k's coefficients are
    θ_k = Σ_j d_kj Φ_j + arm_specific·δ_k over its descriptor d_k (see
    `bandit.policies.descriptors`), so arms that look alike behave alike (what the hybrid
    policy exploits) while each arm keeps its own part. Each task shifts the context
    distribution by `task_shift`. Rewards are `level` + 0.25·θ_kᵀ[1, x] + noise; the
    noiseless ones are kept in `expected`, so the best arm of every row is known.

    `n_rows` counts requests. With `candidates` ≥ 2 each request has that many rows: the
    second is the reversed order of the first pair — the first half of the features (at
    least one) change sign, the rest are shared — and any further ones are other pairs with
    fresh contexts; which candidate is best is known from `expected`. `action_features` > 0
    adds columns `a:<arm>:t<j>`: each the noiseless reward of that (row, arm) plus its own
    Gaussian noise of sd `action_noise` (an informative per-action signal, as trial merges give).
    """
    if n_rows < 1:
        raise BanditError("n_rows must be >= 1")
    if candidates < 1:
        raise BanditError("candidates must be >= 1")
    specs = list(arms) if arms is not None else default_arm_specs()
    if len(specs) < 2:
        raise BanditError("a synthetic table needs at least two arms")
    rng = np.random.default_rng(seed)
    d = n_features + 1
    descs = [arm_descriptor(s) for s in specs]
    names = sorted({k for dd in descs for k in dd})
    D = np.array([[dd.get(k, 0.0) for k in names] for dd in descs])
    Phi = rng.normal(0.0, 1.0, size=(len(names), d)) / np.sqrt(len(names))
    Theta = D @ Phi + arm_specific * rng.normal(0.0, 1.0, size=(len(specs), d))
    Theta[:, 0] *= 0.3  # keep intercept differences modest, so no arm wins everywhere
    task_names = list(tasks)
    centers = {t: rng.uniform(-task_shift, task_shift, size=n_features) for t in task_names}
    req_tasks = [task_names[i] for i in rng.integers(0, len(task_names), size=n_rows)]

    def draw(t: str) -> np.ndarray:
        return np.clip(centers[t] + rng.uniform(-1.0, 1.0, size=n_features), -1.0, 1.0)

    first = np.array([draw(t) for t in req_tasks]).reshape(n_rows, n_features)
    flip = np.ones(n_features)
    flip[: max(1, n_features // 2)] = -1.0  # the order-dependent features of a pair
    X_rows, row_tasks, requests = [], [], []
    for i, t in enumerate(req_tasks):
        for c in range(candidates):
            X_rows.append(first[i] if c == 0 else first[i] * flip if c == 1 else draw(t))
            row_tasks.append(t)
            requests.append(f"q{i}")
    X = np.array(X_rows).reshape(len(X_rows), n_features)
    Xb = np.hstack([np.ones((len(X), 1)), X])
    expected = level + 0.25 * (Xb @ Theta.T)
    R = expected + rng.normal(0.0, noise, size=expected.shape)
    # drawn after the rewards, so a one-candidate table is the same as before candidates existed
    drawn = [(f"m{int(a)}", f"m{int(b)}") for a, b in rng.integers(0, 20, size=(len(X), 2))]
    pairs = []
    for n in range(len(X)):
        i, c = divmod(n, candidates)
        pairs.append(drawn[n] if c != 1 else pairs[-1][::-1])
    A = None
    if action_features > 0:
        A = expected[:, :, None] + rng.normal(0.0, action_noise, size=expected.shape + (action_features,))
    return OutcomeTable(row_tasks, pairs, [f"s{j}" for j in range(n_features)], X, [s.name for s in specs], R,
                        expected, requests if candidates > 1 else None,
                        [f"t{j}" for j in range(action_features)], A)
