"""The zoo's outcome table: every ordered expert pair merged with every arm, evaluated.

One row per ordered pair (A, B) of experts, in the outcome-table layout of DESIGN.md:
`task` (`<task A>+<task B>`), `model_a`, `model_b`, `f:<feature>` columns (the similarity
signals of `features/`, with the pair's probes), and `r:<arm>` — the retained-skill
reward of that arm's merge. Merges and their scores are cached in the zoo folder, so a
re-run only does what is new.
"""
from __future__ import annotations

import csv
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
    stamp = json.dumps([zoo.manifest.get("recipe"), zoo.manifest.get("accuracy", {}).get(zoo.expert_name(a)),
                        zoo.manifest.get("accuracy", {}).get(zoo.expert_name(b)), operator, params, a, b, MERGE_SEED],
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


def _score_cell(zoo_root: str, operator: str, params: dict, a: str, b: str, device: str) -> dict[str, Any]:
    import torch

    from zoo.manifest import load_zoo

    torch.set_num_threads(1)
    return merge_and_score(load_zoo(zoo_root), operator, params, a, b, device=device)


def build_outcomes(
    zoo: Zoo, out: str | os.PathLike | None = None, *, arms: Sequence[tuple[str, str, dict]] = DEFAULT_ARMS,
    device: str = "auto", structural_only: bool = False, jobs: int | None = None,
    on_cell: Callable[[str, str, str, float, bool], None] | None = None,
) -> OutcomeSummary:
    """Build (or complete from the cache) the outcome table and write it to `out` (CSV or JSONL).

    Features come first (cached in the zoo's features.db); the merges that are not in the
    cache then run in `jobs` worker processes (default: `default_jobs(device)`)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from bandit.service.context import pair_features
    from bandit.service import Service

    cache_path = zoo.root / "outcomes-cache.json"
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    svc = Service(str(zoo.root / "features.db"))
    try:
        register_zoo(svc, zoo)
        rows: list[dict[str, Any]] = []
        fingerprints: dict[str, str] = {}
        for a, b in zoo.pairs():
            probes = None if structural_only else pair_probes(zoo, a, b)
            feats = pair_features(svc.store, zoo.expert_name(a), zoo.expert_name(b), probes,
                                  structural_only=structural_only, device=device,
                                  fingerprints=fingerprints).features
            row: dict[str, Any] = {"task": pair_task(a, b), "model_a": zoo.expert_name(a), "model_b": zoo.expert_name(b)}
            row.update({f"f:{k}": v for k, v in feats.items()})
            rows.append(row)
    finally:
        svc.store.close()

    cells = [(a, b, arm, operator, params, _cache_key(zoo, arm, operator, params, a, b))
             for a, b in zoo.pairs() for arm, operator, params in arms]
    todo = [c for c in cells if c[5] not in cache]
    if on_cell is not None:
        for a, b, arm, _, _, key in cells:
            if key in cache:
                on_cell(a, b, arm, cache[key]["reward"], True)
    jobs = jobs or default_jobs(device)
    try:
        if jobs == 1:
            for n, (a, b, arm, operator, params, key) in enumerate(todo, 1):
                cache[key] = merge_and_score(zoo, operator, params, a, b, device=device)
                if on_cell is not None:
                    on_cell(a, b, arm, cache[key]["reward"], False)
                if n % 16 == 0:  # keep what was measured if the run is interrupted
                    _save_cache(cache_path, cache)
        elif todo:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_score_cell, str(zoo.root), op, params, a, b, device): (a, b, arm, key)
                           for a, b, arm, op, params, key in todo}
                for n, fut in enumerate(as_completed(futures), 1):
                    a, b, arm, key = futures[fut]
                    cache[key] = fut.result()
                    if on_cell is not None:
                        on_cell(a, b, arm, cache[key]["reward"], False)
                    if n % 16 == 0:
                        _save_cache(cache_path, cache)
    finally:
        _save_cache(cache_path, cache)
    for row, (a, b) in zip(rows, zoo.pairs()):
        for arm, operator, params in arms:
            row[f"r:{arm}"] = cache[_cache_key(zoo, arm, operator, params, a, b)]["reward"]
    summary = summarize(rows, [arm for arm, _, _ in arms])
    summary.merges_run, summary.merges_cached = len(todo), len(cells) - len(todo)
    if out is not None:
        write_table(rows, out)
        summary.path = str(out)
    return summary


def _save_cache(path: Path, cache: dict) -> None:
    from bandit.files import write_atomically

    write_atomically(path, json.dumps(cache, indent=1, sort_keys=True).encode())


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


def write_table(rows: list[dict[str, Any]], out: str | os.PathLike) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jsonl", ".ndjson"):
        with open(out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return
    fields = list(rows[0]) if rows else ["task", "model_a", "model_b"]
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
