"""The server's threads. All facade calls run on ONE thread that owns the `Service` (and so
the only database connection that proposes and rewards): requests are serialized exactly as
one CLI process would run them, the live policy stays in memory, and SQLite's connection
never crosses threads. Merges and replays run on their own worker threads with their own
connections; one merge at a time per device. The reward join window is swept on the
service thread every few seconds.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("bandit.server")


@dataclass
class ServerConfig:
    db: str = "bandit.db"
    device: str = "auto"
    token: str | None = None
    reward_window: float | None = None  # seconds; None: events wait forever
    default_reward: float | None = None  # with reward_window: apply this, else expire
    sweep_every: float = 5.0
    body_limit: int = 1 << 20
    start_workers: bool = True


class ServiceThread:
    """One Service, one lock: `await call(fn)` runs fn(service) with the lock held.

    Fast calls (`fast=True`: a context propose, a reward, an event) run inline on the event
    loop when the lock is free — about a millisecond, less than a hop to a thread and back;
    everything else, and any fast call that finds the lock taken, runs on the one service
    thread, so a long call (features for a propose over models, a rebuild) never stalls the
    loop. Either way calls are serialized, as one CLI process would run them."""

    def __init__(self, db: str):
        import threading

        from bandit.service import Service
        from store import Store

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bandit-service")
        self._lock = threading.Lock()
        self.service = Service(Store(db, shared=True))

    def _locked(self, fn: Callable[..., Any]) -> Any:
        with self._lock:
            return fn(self.service)

    async def call(self, fn: Callable[..., Any], *args: Any, fast: bool = False) -> Any:
        if args:
            fn = _bind(fn, args)
        if fast and self._lock.acquire(blocking=False):
            try:
                return fn(self.service)
            finally:
                self._lock.release()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._locked, fn)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(self._locked, _bind(fn, args) if args else fn).result()

    def close(self) -> None:
        try:
            self._pool.submit(self._locked, lambda svc: svc.store.close()).result(timeout=30)
        finally:
            self._pool.shutdown(wait=True)


def _bind(fn: Callable[..., Any], args: tuple) -> Callable[[Any], Any]:
    return lambda svc: fn(svc, *args)


class JobWorker(threading.Thread):
    """Runs queued jobs of one kind, oldest first, one at a time, with its own connection."""

    def __init__(self, db: str, kind: str):
        super().__init__(name=f"bandit-{kind}-worker", daemon=True)
        self.db, self.kind = db, kind
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: int | None = None

    def run(self) -> None:
        from bandit.service.jobs import run_next
        from store import Store

        store = Store(self.db)
        try:
            while not self.stopping.is_set():
                try:
                    ran = run_next(store, self.kind, on_start=self._note_start)
                except Exception:  # noqa: BLE001 — a database hiccup must not end the worker
                    log.exception("%s worker: could not take the next job", self.kind)
                    ran = None
                self.current = None
                if ran is None:
                    self.wake.wait(timeout=1.0)
                    self.wake.clear()
        finally:
            store.close()

    def _note_start(self, job_id: int) -> None:
        self.current = job_id

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
