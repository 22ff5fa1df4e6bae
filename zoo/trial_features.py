"""Trial-merge features for every action of a zoo's outcome table, cached in the zoo folder.

An action is (ordered expert pair, arm). Each expert's probes are its own task's prompts
(`probes/<task>.txt`); the experts' reference continuations and each action's features are
cached under `<zoo>/probe-outputs/`, keyed by the checkpoints' fingerprints, the arm and the
probes, so a re-run computes only what is new.

The columns added to an outcome-table row are `a:<arm>:<feature>` (DESIGN.md, outcome
tables v2: the action feature of that arm on that row).
"""
from __future__ import annotations

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
    from bandit.service.trials import run_trials

    specs = {arm: (operator, dict(params)) for arm, operator, params in arms}
    out: dict[tuple[str, str, str], dict] = {}
    fingerprints: dict[str, str] = {}
    for a, b in (pairs if pairs is not None else zoo.pairs()):
        probes = {a: task_probes(zoo, a), b: task_probes(zoo, b)}
        on_action = None if on_cell is None else (lambda c, arm, cached, a=a, b=b: on_cell(a, b, arm, cached))
        report = run_trials(str(zoo.base), [(a, b)], {a: str(zoo.expert(a)), b: str(zoo.expert(b))},
                            probes.__getitem__, specs, {(0, arm) for arm in specs}, device=device,
                            cache_dir=str(cache_dir(zoo)), seed=MERGE_SEED, on_action=on_action,
                            fingerprints=fingerprints)
        for arm in specs:
            out[(a, b, arm)] = report.features[0][arm]
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
