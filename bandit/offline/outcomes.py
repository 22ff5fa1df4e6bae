"""Full-information outcome tables: reading, writing, and a synthetic generator.

Layout (DESIGN.md): one row per merge request, columns `task`, `model_a`, `model_b`,
context features `f:<feature>` and one reward column `r:<arm>` per arm; CSV (with a header)
or JSONL (one object per line). Arm names are free text. Every row needs every reward.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.arms import DEFAULT_ARMS
from bandit.policies.descriptors import arm_descriptor
from bandit.errors import BanditError
from bandit.files import jsonl_objects, read_text
from bandit.service.reward import parse_finite
from bandit.policies.base import ArmSpec


@dataclass
class OutcomeTable:
    tasks: list[str]
    pairs: list[tuple[str, str]]
    features: list[str]  # context feature names, without the `f:` prefix
    X: np.ndarray  # rows × features
    arms: list[str]
    R: np.ndarray  # rows × arms: the reward each arm would have earned
    expected: np.ndarray | None = None  # rows × arms noiseless rewards, when known (synthetic)

    def __len__(self) -> int:
        return len(self.tasks)

    def contexts(self) -> list[dict[str, float]]:
        return [dict(zip(self.features, map(float, row))) for row in self.X]

    def best_fixed_arm(self) -> int:
        """Index of the arm with the highest mean reward over the whole table (hindsight)."""
        return int(np.argmax(self.R.mean(axis=0)))

    def best_arm_per_row(self) -> np.ndarray:
        """The known best arm of each row: by expected reward when known, else realised."""
        return np.argmax(self.expected if self.expected is not None else self.R, axis=1)




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
    n = len(records)
    X = np.empty((n, len(features)))
    R = np.empty((n, len(arms)))
    tasks, pairs = [], []
    for i, rec in enumerate(records):
        where = f"{source} row {i + 1}"
        missing = [c for c in ["task"] + [f"f:{f}" for f in features] + [f"r:{a}" for a in arms]
                   if rec.get(c) in (None, "")]
        if missing:
            raise BanditError(f"{where}: missing {', '.join(missing)}")
        tasks.append(str(rec["task"]))
        pairs.append((str(rec.get("model_a") or ""), str(rec.get("model_b") or "")))
        for j, f in enumerate(features):
            X[i, j] = parse_finite(rec[f"f:{f}"], f"{where} f:{f}")
        for j, a in enumerate(arms):
            R[i, j] = parse_finite(rec[f"r:{a}"], f"{where} r:{a}")
    return OutcomeTable(tasks, pairs, features, X, arms, R)


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
                extra = {k for k in set(rec) - first if k.startswith(("f:", "r:"))}
                if extra:
                    raise BanditError(f"{path} row {n}: columns {sorted(extra)} are not in the first row")
    else:
        records = list(csv.DictReader(text.splitlines()))
    return _from_records(records, str(path))


def write_outcomes(table: OutcomeTable, path: str | os.PathLike) -> None:
    """Write CSV, or JSONL when the name ends in .jsonl."""
    path = Path(path)
    header = ["task", "model_a", "model_b"] + [f"f:{f}" for f in table.features] + [f"r:{a}" for a in table.arms]
    rows = []
    for i in range(len(table)):
        rows.append([table.tasks[i], table.pairs[i][0], table.pairs[i][1]]
                    + [float(v) for v in table.X[i]] + [float(v) for v in table.R[i]])
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for r in rows:
                f.write(json.dumps(dict(zip(header, r))) + "\n")
        else:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


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
    task_shift: float = 0.3, seed: int = 0,
) -> OutcomeTable:
    """A table with linear rewards + Gaussian noise whose best arm depends on the context.

    Context features are bounded in [-1, 1] like the real signals. Arm k's coefficients are
    θ_k = Σ_j d_kj Φ_j + arm_specific·δ_k over its descriptor d_k (see
    `bandit.policies.descriptors`), so arms that look alike behave alike (what the hybrid policy
    exploits) while each arm keeps its own part. Each task shifts the context
    distribution by `task_shift`. Rewards are 0.5 + θ_kᵀ[1, x] + noise; the noiseless ones
    are kept in `expected`, so the best arm of every row is known.
    """
    if n_rows < 1:
        raise BanditError("n_rows must be >= 1")
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
    row_tasks = [task_names[i] for i in rng.integers(0, len(task_names), size=n_rows)]
    X = np.empty((n_rows, n_features))
    for i, t in enumerate(row_tasks):
        X[i] = np.clip(centers[t] + rng.uniform(-1.0, 1.0, size=n_features), -1.0, 1.0)
    Xb = np.hstack([np.ones((n_rows, 1)), X])
    expected = 0.5 + 0.25 * (Xb @ Theta.T)
    R = expected + rng.normal(0.0, noise, size=expected.shape)
    pairs = [(f"m{int(a)}", f"m{int(b)}") for a, b in rng.integers(0, 20, size=(n_rows, 2))]
    return OutcomeTable(row_tasks, pairs, [f"s{j}" for j in range(n_features)], X, [s.name for s in specs], R, expected)
