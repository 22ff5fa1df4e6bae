"""Fresh servers for tests: an app per test over its own database (ASGI test client), or a
real uvicorn on a free loopback port when a test needs HTTP (the CLI's --server, a browser)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time


def make_app(db: str, **config):
    from bandit.server.app import create_app
    from bandit.server.runtime import ServerConfig

    return create_app(ServerConfig(db=db, **config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(db: str, **config):
    """A real server on 127.0.0.1 in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(db, **config), host="127.0.0.1", port=port,
                                           log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_job(client, job_id: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
