"""Trial-merge features for every action of a zoo's outcome table, cached in the zoo folder.

An action is (ordered expert pair, arm). Each expert's probes are its own task's prompts
(`probes/<task>.txt`); the experts' reference continuations are cached under
`<zoo>/probe-outputs/`, and each action's features in `<zoo>/trial-cache.json`, keyed by
the checkpoints' fingerprints, the arm and the probes, so a re-run computes only what is new.

The columns added to an outcome-table row are `a:<arm>:<feature>` (DESIGN.md, outcome
tables v2: the action feature of that arm on that row).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bandit.arms import DEFAULT_ARMS
from zoo.manifest import Zoo

CACHE_NAME = "trial-cache.json"
MERGE_SEED = 0  # the outcome table's merges use the same seed, so the trial is that merge


def action_column(arm: str, feature: str) -> str:
    return f"a:{arm}:{feature}"


def task_probes(zoo: Zoo, task: str) -> list[str]:
    return [line for line in zoo.probes(task).read_text(encoding="utf-8").splitlines() if line.strip()]


def zoo_trial_features(zoo: Zoo, *, arms: Sequence[tuple[str, str, dict]] = DEFAULT_ARMS, device: str = "cpu",
                       pairs: Sequence[tuple[str, str]] | None = None,
                       on_cell: Callable[[str, str, str, bool], None] | None = None) -> dict[tuple[str, str, str], dict]:
    """{(task A, task B, arm): trial features} for every ordered pair (default: all) and arm."""
    from bandit.files import write_atomically
    from features.trial import TrialRunner, action_key

    cache_path = zoo.root / CACHE_NAME
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    out: dict[tuple[str, str, str], dict] = {}
    fresh = 0
    try:
        for a, b in (pairs if pairs is not None else zoo.pairs()):
            pa, pb = task_probes(zoo, a), task_probes(zoo, b)
            runner = None
            for arm, operator, params in arms:
                key = action_key(str(zoo.base), str(zoo.expert(a)), str(zoo.expert(b)), operator, params, pa, pb,
                                 seed=MERGE_SEED)
                hit = key in cache
                if not hit:
                    if runner is None:
                        runner = TrialRunner(zoo.base, zoo.expert(a), zoo.expert(b), pa, pb, device=device,
                                             cache_dir=zoo.root / "probe-outputs", seed=MERGE_SEED)
                    t0 = time.perf_counter()
                    result = runner.trial(operator, params)
                    cache[key] = {"features": result.features, "seconds": time.perf_counter() - t0}
                    fresh += 1
                    if fresh % 32 == 0:  # keep what was computed if the run is interrupted
                        write_atomically(cache_path, json.dumps(cache, indent=1, sort_keys=True).encode())
                out[(a, b, arm)] = cache[key]["features"]
                if on_cell is not None:
                    on_cell(a, b, arm, hit)
    finally:
        if fresh:
            write_atomically(cache_path, json.dumps(cache, indent=1, sort_keys=True).encode())
    return out


def add_trial_columns(rows: list[dict[str, Any]], zoo: Zoo, arms: Sequence[str], *, device: str = "cpu",
                      features: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The outcome-table rows with `a:<arm>:<feature>` columns for the zoo's actions.
    Rows name their experts by model name (`model_a`, `model_b`); arms must be zoo arms."""
    task_of = {zoo.expert_name(t): t for t in zoo.tasks}
    by_name = {arm: (arm, op, params) for arm, op, params in DEFAULT_ARMS}
    unknown = [a for a in arms if a not in by_name]
    if unknown:
        raise ValueError(f"arm {unknown[0]!r} is not one of the zoo's arms ({', '.join(by_name)})")
    pairs = [(task_of[r["model_a"]], task_of[r["model_b"]]) for r in rows]
    table = zoo_trial_features(zoo, arms=[by_name[a] for a in arms], device=device, pairs=pairs)
    out = []
    for r, (a, b) in zip(rows, pairs):
        row = dict(r)
        for arm in arms:
            for name, value in table[(a, b, arm)].items():
                if features is None or name in features:
                    row[action_column(arm, name)] = value
        out.append(row)
    return out


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """An outcome table (CSV or JSONL) with numbers as floats."""
    import csv

    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k.startswith(("f:", "r:", "a:")):
                r[k] = float(v)
    return rows
