"""Trial-merge features for every action of a zoo's outcome table, cached in the zoo folder.

An action is (ordered expert pair, arm). Each expert's probes are its own task's prompts
(`probes/<task>.txt`); the experts' reference continuations and each action's features are
cached under `<zoo>/probe-outputs/`, keyed by the checkpoints' fingerprints, the arm and the
probes, so a re-run computes only what is new.

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

MERGE_SEED = 0  # the outcome table's merges use the same seed, so the trial is that merge


def action_column(arm: str, feature: str) -> str:
    return f"a:{arm}:{feature}"


def task_probes(zoo: Zoo, task: str) -> list[str]:
    return [line for line in zoo.probes(task).read_text(encoding="utf-8").splitlines() if line.strip()]


def zoo_trial_features(zoo: Zoo, *, arms: Sequence[tuple[str, str, dict]] = DEFAULT_ARMS, device: str = "cpu",
                       pairs: Sequence[tuple[str, str]] | None = None,
                       on_cell: Callable[[str, str, str, bool], None] | None = None) -> dict[tuple[str, str, str], dict]:
    """{(task A, task B, arm): trial features} for every ordered pair (default: all) and arm.

    The cache is the service's own (`features.trial.ActionCache` in `<zoo>/probe-outputs`),
    with the same keys, so `propose --trial-merges` on the zoo's experts reuses it."""
    from features.trial import ActionCache, TrialRunner, action_key, checkpoint_fingerprint

    cache = ActionCache(cache_dir(zoo))
    out: dict[tuple[str, str, str], dict] = {}
    fingerprints = {t: checkpoint_fingerprint(zoo.expert(t)) for t in zoo.tasks}
    base_fp = checkpoint_fingerprint(zoo.base)
    try:
        for a, b in (pairs if pairs is not None else zoo.pairs()):
            pa, pb = task_probes(zoo, a), task_probes(zoo, b)
            fps = (base_fp, fingerprints[a], fingerprints[b])
            runner = None
            for arm, operator, params in arms:
                key = action_key(fps, operator, params, pa, pb, seed=MERGE_SEED)
                hit = cache.get(key)
                if hit is None:
                    if runner is None:
                        runner = TrialRunner(zoo.base, zoo.expert(a), zoo.expert(b), pa, pb, device=device,
                                             cache_dir=cache_dir(zoo), seed=MERGE_SEED)
                    t0 = time.perf_counter()
                    result = runner.trial(operator, params)
                    cache.put(key, result.features, time.perf_counter() - t0)
                    if cache.fresh >= 32:  # keep what was computed if the run is interrupted
                        cache.save()
                out[(a, b, arm)] = cache.get(key)
                if on_cell is not None:
                    on_cell(a, b, arm, hit is not None)
    finally:
        cache.save()
    return out


def cache_dir(zoo: Zoo) -> Path:
    """Where the zoo keeps its experts' reference outputs and its per-action trial features."""
    return zoo.root / "probe-outputs"


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
