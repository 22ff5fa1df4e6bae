"""The database schema and its forward migrations.

Version numbers only grow. `PRAGMA user_version` holds the applied version so that the
hot paths (`propose`, `reward`) can check it without importing sqlite-utils; the
`schema_version` table records when each migration ran, for people browsing the file.

Tables (all JSON columns are UTF-8 JSON text; all blobs are little-endian float64):
- arms(name, operator, params, status, created_at, warm_start_from, shrink,
  prior_schema, prior_A, prior_b) — an arm is an operator plus params. `status` is
  `active` or `retired`. A warm-started arm keeps the prior it started from, so
  posteriors can be rebuilt from the log.
- tasks(name, probes, probe_hash, created_at) — a task is a name plus unlabeled probes.
- models(name, path, base, fingerprint, config, created_at) — registered checkpoints.
- events(id, created_at, task, policy, policy_params, candidates, contexts, actions,
  pmf, chosen, arm, model_a, model_b, prob, predicted, bonus, seed, recipe) — one row per
  proposal: every (candidate pair, arm) action offered, the probability of each, and
  the one chosen. The source of truth, with `rewards`.
- rewards(id, event_id, value, created_at) — at most one per event (a unique index);
  `id` is the order rewards were recorded in.
- posteriors(model, arm, schema, lam, A, b, n, version, updated_at) — derived data:
  per reward model and arm, A = λI + Σxxᵀ and b = Σr·x over the feature names in
  `schema` (a bias term first). `bandit rebuild` recomputes them from events + rewards.
- features(key, model_a, model_b, base, fp_a, fp_b, fp_base, probe_hash, feature_set,
  version, features, created_at) — cached similarity signals.
- settings(key, value) — the live policy and its parameters (and `trial_merges`: whether
  `propose --models` runs trial merges by default, with which budget).

Version 2 (the server, `bandit serve`):
- rewards.source — `client` (reported by a user) or `default` (the reward join window ran
  out and the configured default reward was applied: a real reward, replayed by rebuild).
- expired_events(event_id, expired_at, window) — events whose join window ran out with no
  default reward configured: closed, never rewarded, nothing learned from them.
- jobs(id, kind, state, spec, device, done, total, output, result, error, created_at,
  started_at, finished_at) — the server's background work (merges, replays) in order of
  `id`; `state` is queued, running, done or failed. A job found `running` when the server
  starts was cut off by a crash and is marked failed.

Version 3 (trial merges):
- model_probes(model, probes, probe_hash, created_at) — a model's own unlabeled probe
  texts (`models add --probes`), on which trial merges compare the merge with that model.

Version 4 (stats that do not grow with the log):
- stats_summary(id = 1, events_upto, rewards_upto, summary, updated_at) — derived data, a
  cache: the per-arm statistics (`bandit stats`) of every event with id <= events_upto and
  every reward with id <= rewards_upto, as JSON {"events": n, "arms": {arm: [proposals,
  pulls, reward sum]}, "context": {feature: sum of the chosen contexts}}. The sums are
  exact: integers in units of 2^-1074 (the smallest float64 step), written in hex. Ids
  only grow and rows are never deleted, so the next reader adds what came after the two
  cursors; deleting the row only makes the next `stats` read the whole log once.
- rewards_default — a partial index of the default rewards, so counting them costs what
  there are of them.
"""
from __future__ import annotations

import sqlite3
import time

LATEST = 4


def _v1(db) -> None:
    db["schema_version"].create({"version": int, "applied_at": float}, pk="version", if_not_exists=True)
    db["settings"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["arms"].create(
        {
            "name": str, "operator": str, "params": str, "status": str, "created_at": float,
            "warm_start_from": str, "shrink": float,
            "prior_schema": str, "prior_A": bytes, "prior_b": bytes,
        },
        pk="name", not_null={"operator", "params", "status"}, defaults={"status": "active"},
        if_not_exists=True,
    )
    db["tasks"].create(
        {"name": str, "probes": str, "probe_hash": str, "created_at": float}, pk="name", if_not_exists=True
    )
    db["models"].create(
        {"name": str, "path": str, "base": str, "fingerprint": str, "config": str, "created_at": float},
        pk="name", if_not_exists=True,
    )
    db["events"].create(
        {
            "id": int, "created_at": float, "task": str, "policy": str, "policy_params": str,
            "candidates": str, "contexts": str, "actions": str, "pmf": str, "chosen": int,
            "arm": str, "model_a": str, "model_b": str, "prob": float, "predicted": float,
            "bonus": float, "seed": int, "recipe": str,
        },
        pk="id", not_null={"task", "arm", "pmf", "prob"}, if_not_exists=True,
    )
    # `id` numbers rewards in the order they were recorded: the order the live posteriors
    # were updated in, which `rebuild` replays (an event_id primary key would be event order).
    db["rewards"].create(
        {"id": int, "event_id": int, "value": float, "created_at": float},
        pk="id", foreign_keys=[("event_id", "events", "id")], not_null={"event_id", "value"}, if_not_exists=True,
    )
    db["rewards"].create_index(["event_id"], unique=True, if_not_exists=True)
    db["posteriors"].create(
        {
            "model": str, "arm": str, "schema": str, "lam": float, "A": bytes, "b": bytes,
            "n": int, "version": int, "updated_at": float,
        },
        pk=("model", "arm"), not_null={"A", "b"}, if_not_exists=True,
    )
    db["features"].create(
        {
            "key": str, "model_a": str, "model_b": str, "base": str, "fp_a": str, "fp_b": str,
            "fp_base": str, "probe_hash": str, "feature_set": str, "version": int,
            "features": str, "created_at": float,
        },
        pk="key", if_not_exists=True,
    )
    db["events"].create_index(["task"], if_not_exists=True)
    db["events"].create_index(["arm"], if_not_exists=True)


def _v2(db) -> None:
    db.execute("ALTER TABLE rewards ADD COLUMN source TEXT NOT NULL DEFAULT 'client'")
    db.execute(
        "CREATE TABLE IF NOT EXISTS expired_events (event_id INTEGER PRIMARY KEY REFERENCES events(id), "
        "expired_at FLOAT NOT NULL, window FLOAT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, "
        "spec TEXT NOT NULL, device TEXT, done INTEGER NOT NULL DEFAULT 0, total INTEGER, output TEXT, "
        "result TEXT, error TEXT, created_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")


def _v3(db) -> None:
    # A model's own unlabeled probe texts (its domain), for trial merges: each expert is
    # scored on its own probes. A table of its own, so `models` rows stay as they were.
    db["model_probes"].create(
        {"model": str, "probes": str, "probe_hash": str, "created_at": float}, pk="model", if_not_exists=True
    )


def _v4(db) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS stats_summary (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "events_upto INTEGER NOT NULL, rewards_upto INTEGER NOT NULL, summary TEXT NOT NULL, updated_at FLOAT)"
    )
    # The dashboard counts default rewards on every refresh: a partial index holds just
    # those (few), instead of a scan of every reward.
    db.execute("CREATE INDEX IF NOT EXISTS rewards_default ON rewards(event_id) WHERE source = 'default'")


MIGRATIONS = {1: _v1, 2: _v2, 3: _v3, 4: _v4}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to LATEST, one migration per transaction."""
    import sqlite_utils  # only when there is something to do: it is slow to import

    # sqlite-utils expects plain tuples from the connection.
    saved_factory, conn.row_factory = conn.row_factory, None
    try:
        _migrate(conn, sqlite_utils)
    finally:
        conn.row_factory = saved_factory


def _migrate(conn: sqlite3.Connection, sqlite_utils) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > LATEST:
        from store.errors import StoreError

        raise StoreError(f"database schema version {current} is newer than this simmerge knows ({LATEST}); upgrade simmerge")
    db = sqlite_utils.Database(conn)
    for version in range(current + 1, LATEST + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                conn.execute("COMMIT")
                continue
            MIGRATIONS[version](db)
            conn.execute("INSERT INTO schema_version(version, applied_at) VALUES (?, ?)", (version, time.time()))
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
