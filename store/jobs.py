"""The server's job queue: background merges and replays, one row each in `jobs`.

The queue lives in the database so it survives a restart; the server is its only writer.
"""
from __future__ import annotations

import json
import time

from store.store import Store

STATES = ("queued", "running", "done", "failed")


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    row["spec"] = json.loads(row["spec"])
    row["result"] = json.loads(row["result"]) if row["result"] is not None else None
    return row


def insert_job(store: Store, kind: str, spec: dict, device: str | None) -> int:
    cur = store.conn.execute(
        "INSERT INTO jobs(kind, state, spec, device, created_at) VALUES (?, 'queued', ?, ?, ?)",
        (kind, json.dumps(spec), device, time.time()),
    )
    return cur.lastrowid


def job(store: Store, job_id: int) -> dict | None:
    return _decode(store._one("SELECT * FROM jobs WHERE id = ?", (job_id,)))


def jobs(store: Store, *, kind: str | None = None, limit: int = 100) -> list[dict]:
    """The newest jobs first."""
    if kind is None:
        rows = store._all("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = store._all("SELECT * FROM jobs WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, limit))
    return [_decode(r) for r in rows]


def next_queued(store: Store, kind: str) -> dict | None:
    return _decode(store._one("SELECT * FROM jobs WHERE kind = ? AND state = 'queued' ORDER BY id LIMIT 1", (kind,)))


def start_job(store: Store, job_id: int, total: int | None = None) -> bool:
    """queued → running; False when another worker took it first."""
    cur = store.conn.execute(
        "UPDATE jobs SET state = 'running', started_at = ?, total = ? WHERE id = ? AND state = 'queued'",
        (time.time(), total, job_id),
    )
    return cur.rowcount == 1


def set_progress(store: Store, job_id: int, done: int, total: int | None) -> None:
    store.conn.execute("UPDATE jobs SET done = ?, total = ? WHERE id = ?", (done, total, job_id))


def finish_job(store: Store, job_id: int, *, output: str | None = None, result: dict | None = None) -> None:
    store.conn.execute(
        "UPDATE jobs SET state = 'done', output = ?, result = ?, finished_at = ? WHERE id = ?",
        (output, json.dumps(result) if result is not None else None, time.time(), job_id),
    )


def fail_job(store: Store, job_id: int, error: str) -> None:
    store.conn.execute(
        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?", (error, time.time(), job_id)
    )


def fail_interrupted(store: Store) -> list[int]:
    """Jobs left `running` by a process that died: mark them failed. Returns their ids."""
    ids = [r["id"] for r in store._all("SELECT id FROM jobs WHERE state = 'running'")]
    if ids:
        store.conn.execute(
            "UPDATE jobs SET state = 'failed', error = 'interrupted: the server stopped while it ran', "
            "finished_at = ? WHERE state = 'running'", (time.time(),),
        )
    return ids


def count_by_state(store: Store) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    for r in store._all("SELECT state, count(*) AS n FROM jobs GROUP BY state"):
        counts[r["state"]] = r["n"]
    return counts
