"""The Store: every SQL statement simmerge runs lives in this package.

Connections run in autocommit mode; writes that belong together share one
`BEGIN IMMEDIATE` transaction (`Store.transaction()`), so that concurrent `propose` and
`reward` processes serialize on the write lock instead of failing or losing updates.
The hot paths use the standard library's sqlite3 only; sqlite-utils (slow to import)
creates and migrates the schema.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `bandit reward` should not pay for importing typing
    from typing import Any

from store.errors import StoreError
from store.schema import LATEST, migrate

BUSY_TIMEOUT_MS = 60_000


def _row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {d[0]: v for d, v in zip(cursor.description, row)}


def _explain(path: str, e: sqlite3.Error) -> StoreError:
    """sqlite3's error as the store's own, in words a user can act on."""
    text = str(e)
    if "locked" in text or "busy" in text:
        why = f"the database is locked: another process held it longer than {BUSY_TIMEOUT_MS // 1000} s; try again"
    elif "readonly" in text or "read-only" in text:
        why = "the database is read-only (check the permissions of the file and its folder)"
    elif "full" in text:
        why = "the disk is full (or the database reached its size limit)"
    else:
        why = f"database error ({text})"
    err = StoreError(f"{path}: {why}; nothing was changed")
    err.sqlite_message = text
    return err


class _Connection(sqlite3.Connection):
    """A connection whose every statement reports failures as `StoreError`."""

    db_path = ""

    def execute(self, sql, parameters=()):
        try:
            return super().execute(sql, parameters)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as e:
            raise _explain(self.db_path, e) from None


class Store:
    """One SQLite database: catalog (arms, tasks, models), events, rewards, posteriors, caches."""

    def __init__(self, path: str | os.PathLike = "bandit.db", *, create: bool = True, shared: bool = False):
        """`shared`: the connection may be used from several threads, each use serialized by
        the caller (the server's lock); otherwise only from the thread that opened it."""
        # a plain string path: pathlib is slow to import for a command that must start fast
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise StoreError(f"{self.path}: is a folder, not a database file")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise StoreError(f"{self.path}: folder {folder} does not exist")
        if not create and not os.path.exists(self.path):
            raise StoreError(f"{self.path}: no such database (check --db or $BANDIT_DB)", kind="not_found")
        try:
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                        factory=_Connection, check_same_thread=not shared)
            self.conn.db_path = self.path
            self.conn.row_factory = _row
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()["journal_mode"]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
            # NORMAL is durable across application crashes in WAL mode; only a power loss
            # can drop the last transactions, and posteriors can be rebuilt from the log.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if self.conn.execute("PRAGMA user_version").fetchone()["user_version"] < LATEST:
                migrate(self.conn)
            elif self.conn.execute("PRAGMA user_version").fetchone()["user_version"] > LATEST:
                migrate(self.conn)  # raises the "newer than this simmerge" error
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable SQLite database ({e})") from None
        except StoreError as e:
            if "database error (" not in str(e):
                raise  # locked, read-only, full: already in words
            raise StoreError(f"{self.path}: not a usable SQLite database ({getattr(e, 'sqlite_message', e)})") from None
        self._depth = 0

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception. Nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
            self.conn.execute("COMMIT")  # a full disk may refuse the commit itself
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except StoreError:
                pass  # SQLite rolls back on its own when it cannot

    def _one(self, sql: str, params: tuple = ()) -> dict | None:
        try:
            return self.conn.execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise _explain(self.path, e) from None

    def _all(self, sql: str, params: tuple = ()) -> list[dict]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _explain(self.path, e) from None

    def _stream(self, sql: str, params: tuple | list = ()) -> Iterator[dict]:
        """Rows one at a time; a failure while fetching is a StoreError like any other."""
        cursor = self.conn.execute(sql, params)
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.Error as e:
                raise _explain(self.path, e) from None
            if row is None:
                return
            yield row

    # -- settings ------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return default if row is None else json.loads(row["value"])

    def set_setting(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # -- arms ----------------------------------------------------------------------------
    def arms(self, status: str | None = None) -> list[dict]:
        if status is None:
            rows = self._all("SELECT * FROM arms ORDER BY created_at, name")
        else:
            rows = self._all("SELECT * FROM arms WHERE status = ? ORDER BY created_at, name", (status,))
        for r in rows:
            r["params"] = json.loads(r["params"])
        return rows

    def arm(self, name: str) -> dict | None:
        r = self._one("SELECT * FROM arms WHERE name = ?", (name,))
        if r is not None:
            r["params"] = json.loads(r["params"])
        return r

    def insert_arm(
        self, name: str, operator: str, params: dict, *, created_at: float | None = None,
        warm_start_from: str | None = None, shrink: float | None = None,
        prior: tuple[list[str], bytes, bytes] | None = None,
    ) -> None:
        prior_schema, prior_A, prior_b = (json.dumps(prior[0]), prior[1], prior[2]) if prior else (None, None, None)
        try:
            self.conn.execute(
                "INSERT INTO arms(name, operator, params, status, created_at, warm_start_from, shrink, "
                "prior_schema, prior_A, prior_b) VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
                (name, operator, json.dumps(params, sort_keys=True), created_at or time.time(),
                 warm_start_from, shrink, prior_schema, prior_A, prior_b),
            )
        except sqlite3.IntegrityError:
            raise StoreError(f"arm {name!r} exists already", kind="conflict") from None

    def set_arm_prior_stats(self, name: str, schema: list[str], prior_A: bytes, prior_b: bytes) -> None:
        """The statistics an arm's posterior starts from (rebuild replays rewards on top)."""
        self.conn.execute("UPDATE arms SET prior_schema = ?, prior_A = ?, prior_b = ? WHERE name = ?",
                          (json.dumps(schema), prior_A, prior_b, name))

    def set_arm_prior(self, name: str, prior_A: bytes) -> None:
        self.conn.execute("UPDATE arms SET prior_A = ? WHERE name = ?", (prior_A, name))

    def set_arm_status(self, name: str, status: str) -> None:
        cur = self.conn.execute("UPDATE arms SET status = ? WHERE name = ?", (status, name))
        if cur.rowcount == 0:
            raise StoreError(f"no arm named {name!r}", kind="not_found")

    # -- tasks ---------------------------------------------------------------------------
    def task(self, name: str) -> dict | None:
        r = self._one("SELECT * FROM tasks WHERE name = ?", (name,))
        if r is not None:
            r["probes"] = json.loads(r["probes"]) if r["probes"] else []
        return r

    def tasks(self) -> list[dict]:
        rows = self._all(
            "SELECT t.name, t.probe_hash, t.created_at, json_array_length(coalesce(t.probes, '[]')) AS n_probes, "
            "(SELECT count(*) FROM events e WHERE e.task = t.name) AS events FROM tasks t ORDER BY t.created_at, t.name"
        )
        return rows

    def upsert_task(self, name: str, probes: list[str] | None, probe_hash: str | None) -> bool:
        """Insert a task, or replace its probes when given. Returns True if it was new."""
        existing = self._one("SELECT name FROM tasks WHERE name = ?", (name,))
        if existing is None:
            self.conn.execute(
                "INSERT INTO tasks(name, probes, probe_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, json.dumps(probes) if probes is not None else None, probe_hash, time.time()),
            )
            return True
        if probes is not None:
            self.conn.execute(
                "UPDATE tasks SET probes = ?, probe_hash = ? WHERE name = ?", (json.dumps(probes), probe_hash, name)
            )
        return False

    def ensure_task(self, name: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO tasks(name, probes, probe_hash, created_at) VALUES (?, NULL, NULL, ?)",
            (name, time.time()),
        )

    # -- models --------------------------------------------------------------------------
    def model(self, name: str) -> dict | None:
        r = self._one("SELECT * FROM models WHERE name = ?", (name,))
        if r is not None and r["config"]:
            r["config"] = json.loads(r["config"])
        return r

    def model_probes(self, name: str) -> list[str] | None:
        """The model's own probe texts, or None when it was registered without."""
        r = self._one("SELECT probes FROM model_probes WHERE model = ?", (name,))
        return json.loads(r["probes"]) if r is not None and r["probes"] else None

    def set_model_probes(self, name: str, probes: list[str], probe_hash: str) -> None:
        self.conn.execute(
            "INSERT INTO model_probes(model, probes, probe_hash, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(model) DO UPDATE SET probes = excluded.probes, probe_hash = excluded.probe_hash",
            (name, json.dumps(probes), probe_hash, time.time()),
        )

    def models(self) -> list[dict]:
        return self._all("SELECT name, path, base, fingerprint, created_at FROM models ORDER BY created_at, name")

    def upsert_model(self, name: str, path: str, base: str | None, fingerprint: str, config: dict) -> None:
        self.conn.execute(
            "INSERT INTO models(name, path, base, fingerprint, config, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET path = excluded.path, base = excluded.base, "
            "fingerprint = excluded.fingerprint, config = excluded.config",
            (name, path, base, fingerprint, json.dumps(config), time.time()),
        )

    # -- events and rewards ----------------------------------------------------------------
    def insert_event(self, event: dict) -> int:
        cols = [
            "created_at", "task", "policy", "policy_params", "candidates", "contexts", "actions", "pmf",
            "chosen", "arm", "model_a", "model_b", "prob", "predicted", "bonus", "seed", "recipe",
        ]
        json_cols = {"policy_params", "candidates", "contexts", "actions", "pmf", "recipe"}
        values = [json.dumps(event.get(c)) if c in json_cols and event.get(c) is not None else event.get(c) for c in cols]
        cur = self.conn.execute(
            f"INSERT INTO events({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values
        )
        return cur.lastrowid

    @staticmethod
    def _decode_event(r: dict | None) -> dict | None:
        if r is None:
            return None
        for c in ("policy_params", "candidates", "contexts", "actions", "pmf", "recipe"):
            if r.get(c) is not None:
                r[c] = json.loads(r[c])
        return r

    def event(self, event_id: int) -> dict | None:
        return self._decode_event(
            self._one(
                "SELECT e.*, r.value AS reward, r.created_at AS rewarded_at FROM events e "
                "LEFT JOIN rewards r ON r.event_id = e.id WHERE e.id = ?",
                (event_id,),
            )
        )

    def events(self, *, rewarded_only: bool = False, task: str | None = None) -> Iterator[dict]:
        """Events in id order, each with its reward (or None), where that came from
        (`reward_source`: client or default, None without a reward) and when its reward
        window closed with no reward (`expired_at`, None unless expired)."""
        where, params = [], []
        if rewarded_only:
            where.append("r.value IS NOT NULL")
        if task is not None:
            where.append("e.task = ?")
            params.append(task)
        sql = (
            "SELECT e.*, r.value AS reward, r.created_at AS rewarded_at, r.source AS reward_source, x.expired_at "
            "FROM events e LEFT JOIN rewards r ON r.event_id = e.id LEFT JOIN expired_events x ON x.event_id = e.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY e.id"
        )
        for r in self._stream(sql, params):
            yield self._decode_event(r)

    def event_for_reward(self, event_id: int) -> dict | None:
        """Just what recording a reward needs: the chosen arm and action, the contexts, and
        the reward already stored (or None)."""
        r = self._one(
            "SELECT e.id, e.arm, e.chosen, e.contexts, e.actions, r.value AS reward FROM events e "
            "LEFT JOIN rewards r ON r.event_id = e.id WHERE e.id = ?",
            (event_id,),
        )
        if r is not None:
            r["contexts"] = json.loads(r["contexts"])
            r["actions"] = json.loads(r["actions"])
        return r

    def reward_row(self, event_id: int) -> dict | None:
        return self._one("SELECT * FROM rewards WHERE event_id = ?", (event_id,))

    def insert_reward(self, event_id: int, value: float) -> None:
        self.conn.execute(
            "INSERT INTO rewards(event_id, value, created_at) VALUES (?, ?, ?)", (event_id, value, time.time())
        )

    def rewards_in_order(self) -> Iterator[dict]:
        """Every reward joined to its event, in the order the rewards were recorded:
        the order in which the live posteriors were updated."""
        sql = (
            "SELECT r.event_id, r.value, e.arm, e.chosen, e.contexts, e.actions FROM rewards r "
            "JOIN events e ON e.id = r.event_id ORDER BY r.id"
        )
        for r in self._stream(sql):
            r["contexts"] = json.loads(r["contexts"])
            r["actions"] = json.loads(r["actions"])
            yield r

    def rewarded_decisions_after(self, reward_id: int) -> Iterator[dict]:
        """What a learner replays, for every reward recorded after reward `reward_id`, in
        the order recorded: reward id and value, chosen action, offered actions, contexts
        and logged probability. The primary key makes it cost what it returns."""
        sql = (
            "SELECT r.id AS reward_id, r.event_id, r.value, e.arm, e.chosen, e.contexts, e.actions, e.prob "
            "FROM rewards r JOIN events e ON e.id = r.event_id WHERE r.id > ? ORDER BY r.id"
        )
        for r in self._all(sql, (reward_id,)):
            r["contexts"] = json.loads(r["contexts"])
            r["actions"] = json.loads(r["actions"])
            yield r

    def last_reward_id(self) -> int:
        return self._one("SELECT coalesce(max(id), 0) AS n FROM rewards")["n"]

    def rewarded_event(self, reward_id: int) -> int | None:
        """The event that reward `reward_id` rewarded (None: no such reward)."""
        r = self._one("SELECT event_id FROM rewards WHERE id = ?", (reward_id,))
        return None if r is None else r["event_id"]

    def count_rewards_upto(self, reward_id: int) -> int:
        return self._one("SELECT count(*) AS n FROM rewards WHERE id <= ?", (reward_id,))["n"]

    def arm_stats(self) -> list[dict]:
        return self._all(
            "SELECT a.name AS arm, a.operator, a.status, "
            "(SELECT count(*) FROM events e WHERE e.arm = a.name) AS proposals, "
            "(SELECT count(*) FROM events e JOIN rewards r ON r.event_id = e.id WHERE e.arm = a.name) AS pulls, "
            "(SELECT avg(r.value) FROM events e JOIN rewards r ON r.event_id = e.id WHERE e.arm = a.name) AS mean_reward "
            "FROM arms a ORDER BY a.created_at, a.name"
        )

    # -- the stats summary (derived; see store/schema.py, version 4) ------------------------
    @contextmanager
    def reading(self) -> Iterator["Store"]:
        """One read snapshot for several SELECTs (WAL: writers go on meanwhile); inside a
        transaction, that transaction's view."""
        if self._depth or self.conn.in_transaction:
            yield self
            return
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._rollback()  # nothing was written: ending the read is all it does

    def stats_summary(self) -> dict | None:
        return self._one("SELECT events_upto, rewards_upto, summary FROM stats_summary WHERE id = 1")

    def put_stats_summary(self, events_upto: int, rewards_upto: int, summary: str, wait_ms: int = 100) -> bool:
        """Store a summary unless the stored one covers more of the log. A cache write on a
        read path: it waits at most `wait_ms` for the write lock and gives up (False) rather
        than hold up a reader behind a long write, or fail a read on a read-only database or
        a full disk."""
        self.conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
        try:
            self.conn.execute(
                "INSERT INTO stats_summary(id, events_upto, rewards_upto, summary, updated_at) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET events_upto = excluded.events_upto, rewards_upto = excluded.rewards_upto, "
                "summary = excluded.summary, updated_at = excluded.updated_at "
                "WHERE excluded.events_upto >= stats_summary.events_upto "
                "AND excluded.rewards_upto >= stats_summary.rewards_upto",
                (events_upto, rewards_upto, summary, time.time()),
            )
            return True
        except StoreError as e:
            text = getattr(e, "sqlite_message", "")
            if any(word in text for word in ("locked", "busy", "readonly", "read-only", "full")):
                return False
            raise
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def chosen_after(self, event_id: int) -> Iterator[dict]:
        """Events after `event_id` in id order, with just what their chosen action was: id,
        arm, chosen, contexts and actions (decoded)."""
        for r in self._stream("SELECT id, arm, chosen, contexts, actions FROM events WHERE id > ? ORDER BY id",
                              (event_id,)):
            r["contexts"] = json.loads(r["contexts"])
            r["actions"] = json.loads(r["actions"])
            yield r

    def rewards_after(self, reward_id: int) -> Iterator[dict]:
        """Rewards recorded after reward `reward_id`, in that order: id, value, the event's arm."""
        return self._stream(
            "SELECT r.id, r.value, e.arm FROM rewards r JOIN events e ON e.id = r.event_id WHERE r.id > ? ORDER BY r.id",
            (reward_id,),
        )

    def count_events(self) -> int:
        return self._one("SELECT count(*) AS n FROM events")["n"]

    def count_rewards(self) -> int:
        return self._one("SELECT count(*) AS n FROM rewards")["n"]

    # -- posteriors ----------------------------------------------------------------------
    def posterior(self, model: str, arm: str) -> dict | None:
        r = self._one("SELECT * FROM posteriors WHERE model = ? AND arm = ?", (model, arm))
        if r is not None:
            r["schema"] = json.loads(r["schema"])
        return r

    def posteriors(self, model: str) -> list[dict]:
        rows = self._all("SELECT * FROM posteriors WHERE model = ? ORDER BY arm", (model,))
        for r in rows:
            r["schema"] = json.loads(r["schema"])
        return rows

    def active_arms_with_versions(self, model: str) -> list[dict]:
        """Active arms with their posterior's version (None without one), params as JSON text:
        one cheap query that tells a long-lived process what changed."""
        return self._all(
            "SELECT a.name, a.operator, a.params, p.version FROM arms a LEFT JOIN posteriors p "
            "ON p.arm = a.name AND p.model = ? WHERE a.status = 'active' ORDER BY a.created_at, a.name",
            (model,),
        )

    def put_posterior(
        self, model: str, arm: str, schema: list[str], lam: float, A: bytes, b: bytes, n: int, version: int
    ) -> None:
        self.conn.execute(
            "INSERT INTO posteriors(model, arm, schema, lam, A, b, n, version, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model, arm) DO UPDATE SET schema = excluded.schema, "
            "lam = excluded.lam, A = excluded.A, b = excluded.b, n = excluded.n, version = excluded.version, "
            "updated_at = excluded.updated_at",
            (model, arm, json.dumps(schema), lam, A, b, n, version, time.time()),
        )

    def delete_posteriors(self, model: str) -> None:
        self.conn.execute("DELETE FROM posteriors WHERE model = ?", (model,))

    # -- feature cache ---------------------------------------------------------------------
    def cached_features(self, key: str) -> dict | None:
        r = self._one("SELECT features FROM features WHERE key = ?", (key,))
        return None if r is None else json.loads(r["features"])

    def put_features(self, key: str, row: dict, features: dict[str, float]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO features(key, model_a, model_b, base, fp_a, fp_b, fp_base, probe_hash, "
            "feature_set, version, features, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, row.get("model_a"), row.get("model_b"), row.get("base"), row.get("fp_a"), row.get("fp_b"),
             row.get("fp_base"), row.get("probe_hash"), row.get("feature_set"), row.get("version"),
             json.dumps(features), time.time()),
        )
