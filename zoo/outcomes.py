"""The zoo's outcome table: every ordered expert pair merged with every arm, evaluated.

One row per ordered pair (A, B) of experts, in the outcome-table format that
`bandit.offline.outcomes` owns (version 2): `request` (one per unordered pair, whose two
orders are its candidates), `task` (`<task A>+<task B>`), `model_a`, `model_b`,
`f:<feature>` columns (the similarity signals of `features/`, with the pair's probes), and
`r:<arm>` — the retained-skill reward of that arm's merge. The table is built by
`bandit.offline.build` with the zoo's evaluator; merges and their scores are cached in the
zoo folder, so a re-run only does what is new.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandit.arms import DEFAULT_ARMS
from zoo.manifest import Zoo

# The tiny zoo's table (task, pair and rewards; no features), shipped as an optional prior:
# `bandit fit --zoo`.
PRIOR_TABLE = Path(__file__).with_name("prior-outcomes.csv")
MERGE_SEED = 0  # the demo merges with the same seed, so its rewards match the table


@dataclass
class OutcomeSummary:
    rows: int
    arms: list[str]
    arm_means: dict[str, float]
    oracle_mean: float
    best_fixed_arm: str
    best_fixed_mean: float
    wins: dict[str, int]  # rows where each arm is (one of) the best
    path: str | None = None
    merges_run: int = 0
    merges_cached: int = 0
    table: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def gap(self) -> float:
        return self.oracle_mean - self.best_fixed_mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "arms": self.arms, "arm_means": self.arm_means, "oracle_mean": self.oracle_mean,
            "best_fixed_arm": self.best_fixed_arm, "best_fixed_mean": self.best_fixed_mean, "gap": self.gap,
            "wins": self.wins, "path": self.path, "merges_run": self.merges_run, "merges_cached": self.merges_cached,
        }


def pair_task(task_a: str, task_b: str) -> str:
    """The task of merging the two experts: the same whichever order they are merged in."""
    return "+".join(sorted((task_a, task_b)))


def pair_probes(zoo: Zoo, task_a: str, task_b: str) -> list[str]:
    """Both tasks' probe prompts (in a fixed order, so both merge orders share features' probes)."""
    texts: list[str] = []
    for t in sorted((task_a, task_b)):
        texts.extend(line for line in zoo.probes(t).read_text(encoding="utf-8").splitlines() if line.strip())
    return texts


def register_zoo(svc, zoo: Zoo) -> None:
    """Register the zoo's base and experts as models, and every pair task with its probes."""
    from bandit.service.catalog import add_model

    known = {m["name"]: m for m in svc.store.models()}
    if known.get(zoo.base_name, {}).get("path") != str(zoo.base):
        add_model(svc.store, zoo.base_name, str(zoo.base))
    for task in zoo.tasks:
        name = zoo.expert_name(task)
        # Each expert carries its own task's prompts as probes: trial merges score a merge
        # on what each expert knows.
        own = [line for line in zoo.probes(task).read_text(encoding="utf-8").splitlines() if line.strip()]
        if (known.get(name, {}).get("path") != str(zoo.expert(task)) or known[name]["base"] != zoo.base_name
                or svc.store.model_probes(name) != own):
            add_model(svc.store, name, str(zoo.expert(task)), zoo.base_name, own)
    for a, b in zoo.pairs():
        if a > b:
            continue  # one task per unordered pair
        probes = pair_probes(zoo, a, b)
        row = svc.store.task(pair_task(a, b))
        if row is None or row["probes"] != probes:
            svc.add_task(pair_task(a, b), probes)


def _cache_key(zoo: Zoo, arm: str, operator: str, params: dict, a: str, b: str) -> str:
    from merging.registry import merge_meaning

    stamp = json.dumps([zoo.manifest.get("recipe"), zoo.manifest.get("accuracy", {}).get(zoo.expert_name(a)),
                        zoo.manifest.get("accuracy", {}).get(zoo.expert_name(b)), operator,
                        merge_meaning(operator, params), a, b, MERGE_SEED],
                       sort_keys=True)
    return f"{arm}|{a}|{b}|" + hashlib.sha256(stamp.encode()).hexdigest()[:16]


def merge_and_score(zoo: Zoo, operator: str, params: dict, task_a: str, task_b: str, *, device: str = "auto",
                    workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge expert A and expert B (in that order) with one operator, evaluate the merge on
    both tasks, and return the accuracies and the retained-skill reward."""
    from merging.engine import run_merge
    from merging.recipe import Recipe
    from zoo.evaluate import evaluate_folder, retained_skill_reward

    recipe = Recipe.from_arm(operator, params, [str(zoo.expert(task_a)), str(zoo.expert(task_b))],
                             str(zoo.base), seed=MERGE_SEED)
    tmp = tempfile.mkdtemp(prefix="simmerge-merge-", dir=workdir)
    try:
        out = Path(tmp) / "merged"
        run_merge(recipe, out, device=device, progress=False)
        acc = evaluate_folder(out, [task_a, task_b])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    expert = {task_a: zoo.expert_accuracy(task_a), task_b: zoo.expert_accuracy(task_b)}
    return {"accuracy": acc, "reward": retained_skill_reward(acc, expert)}


def default_jobs(device: str) -> int:
    """Worker processes for the merges: one per core on a CPU (each single-threaded, which
    is fastest for models this small), one on a GPU."""
    if device != "cpu":
        import torch

        if device.startswith("cuda") or torch.cuda.is_available():
            return 1
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass(frozen=True)
class ZooEvaluator:
    """The zoo's evaluation of a merged folder: accuracy on both experts' tasks and the
    retained-skill reward (what `bandit outcomes` calls with the folder and source names)."""

    root: str

    @property
    def identity(self) -> str:
        from zoo.manifest import load_zoo

        return "zoo:" + json.dumps(load_zoo(self.root).manifest.get("recipe"), sort_keys=True)

    def __call__(self, folder: str, a: str, b: str, label: str) -> dict[str, Any]:
        from zoo.evaluate import evaluate_folder, retained_skill_reward
        from zoo.manifest import load_zoo

        zoo = load_zoo(self.root)
        task_of = {zoo.expert_name(t): t for t in zoo.tasks}
        task_a, task_b = task_of[a], task_of[b]
        acc = evaluate_folder(folder, [task_a, task_b])
        expert = {task_a: zoo.expert_accuracy(task_a), task_b: zoo.expert_accuracy(task_b)}
        return {"accuracy": acc, "reward": retained_skill_reward(acc, expert)}


def build_outcomes(
    zoo: Zoo, out: str | os.PathLike | None = None, *, arms: Sequence[tuple[str, str, dict]] = DEFAULT_ARMS,
    device: str = "auto", structural_only: bool = False, jobs: int | None = None,
    on_cell: Callable[[str, str, str, float, bool], None] | None = None,
) -> OutcomeSummary:
    """Build (or complete from the cache) the outcome table and write it to `out` (CSV or JSONL).

    This is `bandit outcomes` (`bandit.offline.build`) over the zoo's experts with the zoo's
    evaluator; each unordered pair is one request whose two candidates are its two orders.
    Features come first (cached in the zoo's features.db); the merges that are not in the
    cache then run in `jobs` worker processes (default: `default_jobs(device)`). The cache
    keeps its zoo-specific keys, so tables measured before stay valid."""
    from bandit.policies.base import ArmSpec
    from bandit.service import Service

    specs = [ArmSpec(arm, operator, params) for arm, operator, params in arms]
    task_of = {zoo.expert_name(t): t for t in zoo.tasks}
    svc = Service(str(zoo.root / "features.db"))
    try:
        register_zoo(svc, zoo)
        built = svc.build_outcomes(
            [zoo.expert_name(t) for t in zoo.tasks], ZooEvaluator(str(zoo.root)), out, arms=specs,
            cache_path=zoo.root / "outcomes-cache.json", task_of=lambda a, b: pair_task(task_of[a], task_of[b]),
            jobs=jobs or default_jobs(device), device=device, structural_only=structural_only,
            on_cell=None if on_cell is None else
            (lambda a, b, arm, reward, cached: on_cell(task_of[a], task_of[b], arm, reward, cached)),
            key_of=lambda a, b, arm: _cache_key(zoo, arm.name, arm.operator, dict(arm.params), task_of[a], task_of[b]),
        )
    finally:
        svc.store.close()
    summary = summarize(built["records"], [s.name for s in specs])
    summary.merges_run, summary.merges_cached = built["merges_run"], built["merges_cached"]
    summary.path = built["path"]
    return summary


def summarize(rows: list[dict[str, Any]], arms: list[str]) -> OutcomeSummary:
    """Mean reward per arm, the per-row oracle, and the best fixed arm (hindsight)."""
    n = len(rows)
    means = {arm: sum(r[f"r:{arm}"] for r in rows) / n for arm in arms}
    oracle = sum(max(r[f"r:{arm}"] for arm in arms) for r in rows) / n
    best = max(arms, key=lambda arm: (means[arm], -arms.index(arm)))
    wins = {arm: 0 for arm in arms}
    for r in rows:
        top = max(r[f"r:{arm}"] for arm in arms)
        for arm in arms:
            if r[f"r:{arm}"] == top:
                wins[arm] += 1
    return OutcomeSummary(n, arms, means, oracle, best, means[best], wins, table=rows)
