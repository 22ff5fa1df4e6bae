"""The app factory: `create_app(ServerConfig)` gives a fresh FastAPI app (tests make one
each), and `serve(...)` runs it under uvicorn for `bandit serve`."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from fastapi import FastAPI

from bandit.server.runtime import JobWorker, ServerConfig, ServiceThread

log = logging.getLogger("bandit.server")


class Runtime:
    """What the routes reach through `app.state.runtime`: the service thread, the job
    workers, the join window."""

    def __init__(self, config: ServerConfig):
        from bandit.service.jobs import KINDS, fail_interrupted
        from bandit.service.join_window import JoinWindow

        self.config = config
        self.window = None
        if config.reward_window is not None:
            self.window = JoinWindow(config.reward_window, config.default_reward)
        self.service = ServiceThread(config.db)
        # Reads that scan the log (stats, the dashboard, the export, counts) run on a second
        # connection and thread: SQLite's WAL lets them read while proposes and rewards write,
        # so a dashboard refresh never holds up the hot path.
        self.reader = ServiceThread(config.db)
        from bandit.service.monitor import ArmShares, RewardCurves

        # The dashboard's views of the log, kept between refreshes (read on the reader thread).
        self.curves = RewardCurves()
        self.shares = ArmShares()
        # Jobs a crashed server left running: their output never got renamed into place.
        failed = self.service.call_sync(lambda svc: fail_interrupted(svc.store))
        if failed:
            log.warning("marked %d interrupted job(s) failed: %s", len(failed), failed)
        self.workers = {kind: JobWorker(config.db, kind) for kind in KINDS}

    def upload_dir(self) -> str:
        folder = os.path.abspath(self.config.db) + ".uploads"
        os.makedirs(folder, exist_ok=True)
        return folder

    def wake(self, kind: str) -> None:
        self.workers[kind].wake.set()

    def start(self) -> None:
        if self.config.start_workers:
            for w in self.workers.values():
                w.start()

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            if w.is_alive():
                w.join(timeout=5)
        self.service.close()
        self.reader.close()

    async def sweep_forever(self) -> None:
        from bandit.service.join_window import close_overdue

        while True:
            try:
                closed = await self.service.call(close_overdue, self.window)
                if closed["defaulted"] or closed["expired"]:
                    log.info("reward window: %d default reward(s), %d expired",
                             len(closed["defaulted"]), len(closed["expired"]))
            except Exception:  # noqa: BLE001 — keep sweeping; the next round retries
                log.exception("reward window sweep failed")
            await asyncio.sleep(self.config.sweep_every)


def create_app(config: ServerConfig) -> FastAPI:
    from bandit.server import errors
    from bandit.server.auth import BearerAuth, BodyLimit
    from bandit.server.dashboard import router as dashboard_router
    from bandit.server.routes import router

    runtime = Runtime(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()
        sweeper = asyncio.create_task(runtime.sweep_forever()) if runtime.window else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            runtime.stop()

    import inspect

    extra = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI's OpenTelemetry hooks (active when opentelemetry is installed, as test tools
        # bring it) cost ~0.1 ms per request to find that nothing is configured.
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        **extra,
        title="simmerge",
        summary="Pick how to merge LLM checkpoints with a contextual bandit: propose, merge, reward.",
        version="1",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    errors.install(app)
    app.include_router(router)
    app.include_router(dashboard_router)
    # Outermost first: the body limit and the token are checked before anything is parsed.
    app.add_middleware(BodyLimit, limit=config.body_limit)
    app.add_middleware(BearerAuth, token=config.token)
    return app


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8600) -> None:
    import uvicorn

    from bandit.server.auth import require_token_off_loopback

    require_token_off_loopback(host, config.token)
    app = create_app(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
