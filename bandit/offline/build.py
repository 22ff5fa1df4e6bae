"""Build an outcome table for a registered catalog: merge every ordered pair with every arm,
evaluate each merge, and write the table (version 2: both orders of a pair are the two
candidates of one request, the order the models were listed in first).

Evaluation is pluggable: `CommandEvaluator` runs the user's command on the merged folder
(`bandit outcomes --evaluate`), the zoo passes its own. Rewards are cached in a JSON file keyed
by the fingerprints of both models and their base, the arm's operator and params, the merge
seed and the evaluator's identity, so a re-run does only what is new, and an interrupted run
keeps what it measured.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import string
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bandit.errors import BanditError
from bandit.policies.base import ArmSpec

MERGE_SEED = 0  # DARE-style operators drop at random; one seed makes the table reproducible
SAVE_EVERY = 8  # merges between cache saves, so an interruption loses little
# A number standing on its own (after a space, `=`, `:`, `(`...), not digits inside a path or a
# name such as /tmp/run-20/ or llama3: those would otherwise pass for the reward.
_NUMBER = re.compile(r"(?<![\w./-])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w/])")


def merge_label(arm: str, a: str, b: str) -> str:
    return f"merge {arm} of {a} + {b}"


@dataclass(frozen=True)
class CommandEvaluator:
    """`CMD {model} {a} {b}`: run through the shell with the merged folder and the source
    names filled in (shell-quoted); the last number the command prints on stdout is the
    reward. Write literal braces as {{ and }}."""

    template: str
    timeout: float | None = None

    def __post_init__(self) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as e:
            raise BanditError(f"--evaluate {self.template!r}: {e} (write literal braces as {{{{ and }}}})") from None
        unknown = sorted(fields - {"model", "a", "b"})
        if unknown:
            raise BanditError(f"--evaluate: unknown placeholder {{{unknown[0]}}}; use {{model}}, {{a}} and {{b}}")
        if "model" not in fields:
            raise BanditError("--evaluate: the command needs {model}, the merged folder to evaluate")

    @property
    def identity(self) -> str:
        return "command:" + self.template

    def __call__(self, folder: str, a: str, b: str, label: str) -> dict[str, Any]:
        cmd = self.template.format(model=shlex.quote(folder), a=shlex.quote(a), b=shlex.quote(b))
        try:
            proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BanditError(f"{label}: the evaluation command ran past {self.timeout} s") from None
        if proc.returncode != 0:
            last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "")
            raise BanditError(f"{label}: the evaluation command exited with status {proc.returncode}"
                              + (f": {last}" if last else ""))
        numbers = _NUMBER.findall(proc.stdout)
        if not numbers:
            raise BanditError(f"{label}: the evaluation command printed no number on stdout")
        value = float(numbers[-1].rstrip(".") or "nan")
        if not math.isfinite(value):
            raise BanditError(f"{label}: the evaluation command's reward {numbers[-1]!r} is not finite")
        return {"reward": value}


@dataclass(frozen=True)
class Cell:
    """One merge to run and evaluate: an ordered pair under one arm."""

    a: str
    b: str
    arm: ArmSpec
    key: str


@dataclass
class BuildResult:
    records: list[dict[str, Any]]  # table rows, as written
    scores: dict[tuple[str, str, str], dict[str, Any]]  # (a, b, arm) → the cached evaluation
    merges_run: int
    merges_cached: int
    path: str | None = None


def cell_key(fp_a: str, fp_b: str, fp_base: str, arm: ArmSpec, seed: int, evaluator_id: str) -> str:
    from merging.registry import merge_meaning

    stamp = json.dumps([fp_a, fp_b, fp_base, arm.operator, merge_meaning(arm.operator, dict(arm.params)), seed,
                        evaluator_id], sort_keys=True)
    return hashlib.sha256(stamp.encode()).hexdigest()[:32]


def load_cache(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BanditError(f"{path}: not a reward cache ({e}); move it away to start afresh") from None
    if not isinstance(data, dict):
        raise BanditError(f"{path}: not a reward cache (expected a JSON object)")
    return data


def save_cache(path: str | os.PathLike, cache: Mapping[str, Any]) -> None:
    from bandit.files import write_atomically

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(cache, indent=1, sort_keys=True).encode())


def merge_and_evaluate(base: str, path_a: str, path_b: str, arm: ArmSpec, names: tuple[str, str], evaluator,
                       device: str = "auto", seed: int = MERGE_SEED, workdir: str | None = None,
                       single_thread: bool = False) -> dict[str, Any]:
    """Merge A and B (in that order) under `arm` into a temporary folder, evaluate it, and
    remove it; errors name the merge."""
    from merging.engine import run_merge
    from merging.errors import MergeError
    from merging.recipe import Recipe

    if single_thread:  # one worker per core: threads inside each would only fight
        import torch

        torch.set_num_threads(1)
    label = merge_label(arm.name, *names)
    tmp = tempfile.mkdtemp(prefix="simmerge-outcome-", dir=workdir)
    try:
        out = Path(tmp) / "merged"
        try:
            recipe = Recipe.from_arm(arm.operator, dict(arm.params), [path_a, path_b], base, seed=seed)
            run_merge(recipe, out, device=device, progress=False)
        except MergeError as e:
            raise BanditError(f"{label}: {e}") from None
        result = evaluator(str(out), names[0], names[1], label)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not isinstance(result, Mapping) or not isinstance(result.get("reward"), (int, float)):
        raise BanditError(f"{label}: the evaluator returned no reward")
    return dict(result)


def _run_cell(args) -> dict[str, Any]:
    return merge_and_evaluate(*args)


def build_table(
    models: Mapping[str, str], base: str, arms: Sequence[ArmSpec], evaluator, cache_path: str | os.PathLike,
    features_of: Callable[[str, str, str], Mapping[str, float]], *,
    task_of: Callable[[str, str], str] = lambda a, b: "default", out: str | os.PathLike | None = None,
    jobs: int = 1, device: str = "auto", seed: int = MERGE_SEED,
    key_of: Callable[[str, str, ArmSpec], str] | None = None,
    on_cell: Callable[[str, str, str, float, bool], None] | None = None,
    action_features_of: Callable[[str, str], Mapping[str, Mapping[str, float]]] | None = None,
) -> BuildResult:
    """Merge every ordered pair of `models` ({name: folder}, in the order listed; fine-tunes of
    the checkpoint folder `base`) with every arm, evaluate, and return (and write to `out`)
    the version-2 table. `task_of(a, b)` names the task of a pair (the same for both orders);
    `features_of(a, b, task)` gives the ordered pair's context (the service computes and
    caches them). `key_of` replaces the default cache key (the zoo keeps its own);
    `on_cell(a, b, arm, reward, cached)` is called once per cell, cached ones first.
    `action_features_of(a, b)` gives the ordered pair's `{arm: {feature: value}}` (trial-merge
    signals), written as the `a:<arm>:<feature>` columns of its row."""
    from merging.checkpoint import Checkpoint

    names = list(models)
    if len(names) < 2:
        raise BanditError("--models needs at least two registered models")
    if not arms:
        raise BanditError("no active arms to merge with")
    if jobs < 1:
        raise BanditError("--jobs must be at least 1")
    fingerprints: dict[str, str] = {}
    for path in [base, *models.values()]:
        if path not in fingerprints:
            fingerprints[path] = Checkpoint(path).fingerprint()

    def default_key(a: str, b: str, arm: ArmSpec) -> str:
        return cell_key(fingerprints[models[a]], fingerprints[models[b]], fingerprints[base], arm, seed,
                        evaluator.identity)

    key_of = key_of or default_key
    ordered = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    records: list[dict[str, Any]] = []
    action_columns: list[dict[str, float]] = []  # per row; written after the r: columns
    for first, second in ordered:  # features first: they need no evaluation, and fail early
        task = task_of(first, second)
        for a, b in ((first, second), (second, first)):
            rec: dict[str, Any] = {"request": f"{task}|{first}|{second}", "task": task, "model_a": a, "model_b": b}
            rec.update({f"f:{k}": float(v) for k, v in features_of(a, b, task).items()})
            records.append(rec)
            per_arm = action_features_of(a, b) if action_features_of is not None else {}
            action_columns.append({f"a:{arm.name}:{k}": float(v) for arm in arms
                                   for k, v in per_arm.get(arm.name, {}).items()})

    cache = load_cache(cache_path)
    cells = [Cell(r["model_a"], r["model_b"], arm, key_of(r["model_a"], r["model_b"], arm))
             for r in records for arm in arms]
    todo = [c for c in cells if c.key not in cache]
    if on_cell is not None:
        for c in cells:
            if c.key in cache:
                on_cell(c.a, c.b, c.arm.name, cache[c.key]["reward"], True)

    def job(c: Cell) -> tuple:
        return (base, models[c.a], models[c.b], c.arm, (c.a, c.b), evaluator, device, seed, None, jobs > 1)

    def record(c: Cell, result: dict[str, Any], n: int) -> None:
        cache[c.key] = result
        if on_cell is not None:
            on_cell(c.a, c.b, c.arm.name, result["reward"], False)
        if n % SAVE_EVERY == 0:
            save_cache(cache_path, cache)

    try:
        if jobs == 1 or len(todo) <= 1:
            for n, c in enumerate(todo, 1):
                record(c, merge_and_evaluate(*job(c)), n)
        else:
            from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_cell, job(c)): c for c in todo}
                n = 0
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        if fut.exception() is not None:
                            for p in pending:
                                p.cancel()
                            raise fut.exception()
                        n += 1
                        record(futures[fut], fut.result(), n)
    finally:
        if todo:
            save_cache(cache_path, cache)
    scores = {}
    for c in cells:
        scores[(c.a, c.b, c.arm.name)] = cache[c.key]
    for rec, columns in zip(records, action_columns):
        for arm in arms:
            rec[f"r:{arm.name}"] = float(scores[(rec["model_a"], rec["model_b"], arm.name)]["reward"])
        rec.update(columns)
    result = BuildResult(records, scores, len(todo), len(cells) - len(todo))
    if out is not None:
        from bandit.offline.outcomes import write_records

        write_records(records, out)
        result.path = str(out)
    return result
