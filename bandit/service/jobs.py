"""Background work of the server — merges on its device, replays of uploaded outcome
tables — as jobs in the database (store/jobs.py): submitted here after the same checks the
CLI makes, run one at a time by a worker that calls `run_job`.

A merge writes through the engine's atomic output (a hidden sibling folder renamed at the
end), so a job cut off by a crash leaves no folder that looks complete; the server marks
such jobs failed when it starts again (`fail_interrupted`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bandit.errors import BanditError, InvalidInput, NotFound
from bandit.inputs import parse_event_id
from store import jobs as sql

MERGE = "merge"
REPLAY = "replay"
KINDS = (MERGE, REPLAY)


def _recipe_of(store, spec: dict[str, Any]):
    from merging.recipe import Recipe

    if "event_id" in spec:
        event_id = parse_event_id(spec["event_id"])
        event = store.event(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        if event["model_a"] is None or "models" not in (event["recipe"] or {}):
            raise InvalidInput(f"event {event_id} was proposed without models (a context-only proposal): "
                               "nothing to merge")
        return Recipe.from_dict(event["recipe"])
    return Recipe.from_dict(spec["recipe"])


def submit_merge(store, *, out: str, event_id: int | str | None = None, recipe: dict | None = None,
                 device: str = "auto", shard_size: str = "5GB") -> dict:
    """Queue a merge of an event's proposal or of a recipe into the folder `out`."""
    if (event_id is None) == (recipe is None):
        raise InvalidInput("give exactly one of event_id or recipe")
    if not out or not os.path.isabs(out):
        raise InvalidInput(f"out must be an absolute folder path on the server, got {out!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise InvalidInput(f"{out}: exists and is not an empty folder")
    if not os.path.isdir(os.path.dirname(out.rstrip("/")) or "/"):
        raise InvalidInput(f"{out}: its parent folder does not exist")
    spec: dict[str, Any] = {"out": out, "shard_size": shard_size}
    if event_id is not None:
        spec["event_id"] = parse_event_id(event_id)
    else:
        spec["recipe"] = recipe
    _recipe_of(store, spec).resolve()  # the recipe's own checks, now rather than in the worker
    with store.transaction():
        job_id = sql.insert_job(store, MERGE, spec, device)
    return sql.job(store, job_id)


def submit_replay(store, *, table_path: str, policies: list[str], seeds: int) -> dict:
    """Queue a replay of policies on an outcome table already saved on the server."""
    from bandit.offline.outcomes import read_outcomes
    from bandit.policies.registry import parse_policy_spec

    read_outcomes(table_path)  # a malformed table is the caller's error, now
    for p in policies:
        parse_policy_spec(p)
    if not 1 <= seeds <= 200:
        raise InvalidInput(f"seeds must be between 1 and 200, got {seeds}")
    with store.transaction():
        job_id = sql.insert_job(store, REPLAY, {"table": table_path, "policies": policies, "seeds": seeds}, None)
    return sql.job(store, job_id)


def get_job(store, job_id: int) -> dict:
    row = sql.job(store, job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row


def list_jobs(store, kind: str | None = None, limit: int = 100) -> list[dict]:
    return sql.jobs(store, kind=kind, limit=limit)


def fail_interrupted(store) -> list[int]:
    with store.transaction():
        return sql.fail_interrupted(store)


def run_next(store, kind: str, on_start: Callable[[int], None] | None = None) -> int | None:
    """Take the oldest queued job of `kind`, run it to done or failed. Returns its id, or
    None when the queue is empty."""
    with store.transaction():
        job = sql.next_queued(store, kind)
        if job is None or not sql.start_job(store, job["id"]):
            return None
    try:
        if on_start is not None:
            on_start(job["id"])
        output, result = (_run_merge if kind == MERGE else _run_replay)(store, job)
    except Exception as e:  # noqa: BLE001 — any failure is the job's state, never the worker's death
        message = str(e) if isinstance(e, BanditError) or type(e).__module__.split(".")[0] in (
            "merging", "features", "store", "bandit") else f"{type(e).__name__}: {e}"
        with store.transaction():
            sql.fail_job(store, job["id"], message)
        return job["id"]
    with store.transaction():
        sql.finish_job(store, job["id"], output=output, result=result)
    return job["id"]


def _run_merge(store, job: dict) -> tuple[str, dict]:
    from merging.engine import plan_merge, run_merge

    spec = job["spec"]
    recipe = _recipe_of(store, spec)
    total = len(plan_merge(recipe).jobs)
    done = 0

    def tick(_name: str) -> None:
        nonlocal done
        done += 1
        if done == total or done % 8 == 0:
            with store.transaction():
                sql.set_progress(store, job["id"], done, total)

    with store.transaction():
        sql.set_progress(store, job["id"], 0, total)
    result = run_merge(recipe, spec["out"], device=job["device"] or "auto", shard_size=spec.get("shard_size", "5GB"),
                       progress=False, on_tensor=tick)
    return result.path, result.to_dict()


def _run_replay(store, job: dict) -> tuple[None, dict]:
    from bandit.offline.replay import replay_outcomes

    spec = job["spec"]
    total = len(spec["policies"]) * spec["seeds"]
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        with store.transaction():
            sql.set_progress(store, job["id"], done, total)

    report = replay_outcomes(spec["table"], spec["policies"], spec["seeds"], progress=tick)
    return None, _plain(report)


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays as JSON values, so the report can be stored as JSON."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
