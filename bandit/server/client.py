"""A small client of `bandit serve` for scripts and for `bandit ... --server URL`.

Every method returns the same payload as the CLI's `--json`. A refusal by the server is a
`ServerError` carrying the server's one-line message and its kind (not_found, conflict,
invalid, unavailable), so callers handle it like the local `BanditError` it subclasses.
httpx is imported on first use.
"""
from __future__ import annotations

import os
import time
from typing import Any

from bandit.errors import BanditError

KIND_BY_STATUS = {400: "invalid", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "invalid",
                  422: "invalid", 503: "unavailable"}


class ServerError(BanditError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
        self.kind = KIND_BY_STATUS.get(status, "unavailable")


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise BanditError(f"--server {url!r}: give a URL like http://127.0.0.1:8600")
        token = token if token is not None else (os.environ.get("BANDIT_TOKEN") or None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__}: {e})") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = r.text.strip()[:200] or r.reason_phrase
            # The server's line as is: `--server` prints what the local command prints.
            raise ServerError(message, r.status_code)
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

    # -- the loop ------------------------------------------------------------------------
    def propose(self, task: str, *, models: list[str] | None = None, context: dict[str, float] | None = None,
                seed: int | None = None, structural_only: bool = False) -> dict:
        body: dict[str, Any] = {"task": task, "structural_only": structural_only}
        if models:
            body["models"] = list(models)
        if context:
            body["context"] = dict(context)
        if seed is not None:
            body["seed"] = seed
        return self._call("POST", "/v1/propose", json=body)

    def reward(self, event_id: int | str, value: float | str) -> dict:
        return self._call("POST", f"/v1/events/{event_id}/reward", json={"value": value})

    def event(self, event_id: int | str) -> dict:
        return self._call("GET", f"/v1/events/{event_id}")

    def export(self, rewarded_only: bool = False) -> str:
        return self._call("GET", "/v1/events", params={"rewarded_only": str(rewarded_only).lower()})

    def stats(self) -> list[dict]:
        return self._call("GET", "/v1/stats")

    def rebuild_check(self) -> dict:
        return self._call("GET", "/v1/rebuild")

    def health(self) -> dict:
        return self._call("GET", "/v1/health")

    # -- arms, policy, catalog -------------------------------------------------------------
    def arms(self, include_retired: bool = False) -> list[dict]:
        return self._call("GET", "/v1/arms", params={"all": str(include_retired).lower()})

    def add_arm(self, name: str, operator: str, params: dict | None = None, warm_start_from: str | None = None,
                shrink: float = 0.1) -> dict:
        return self._call("POST", "/v1/arms", json={"name": name, "operator": operator, "params": params or {},
                                                    "warm_start_from": warm_start_from, "shrink": shrink})

    def retire_arm(self, name: str) -> dict:
        return self._call("POST", f"/v1/arms/{name}/retire")

    def policy(self) -> dict:
        return self._call("GET", "/v1/policy")

    def set_policy(self, name: str, params: dict | None = None) -> dict:
        return self._call("PUT", "/v1/policy", json={"name": name, "params": params or {}})

    def models(self) -> list[dict]:
        return self._call("GET", "/v1/models")

    def add_model(self, name: str, path: str, base: str | None = None) -> dict:
        return self._call("POST", "/v1/models", json={"name": name, "path": path, "base": base})

    def tasks(self) -> list[dict]:
        return self._call("GET", "/v1/tasks")

    def add_task(self, name: str, probes: list[str] | None = None) -> dict:
        return self._call("POST", "/v1/tasks", json={"name": name, "probes": probes})

    # -- jobs ------------------------------------------------------------------------------
    def merge(self, out: str, *, event_id: int | None = None, recipe: dict | None = None) -> dict:
        body: dict[str, Any] = {"out": out}
        if event_id is not None:
            body["event_id"] = event_id
        if recipe is not None:
            body["recipe"] = recipe
        return self._call("POST", "/v1/merges", json=body)

    def replay(self, table: str, *, format: str = "csv", policies: list[str] | None = None, seeds: int = 5) -> dict:  # noqa: A002
        return self._call("POST", "/v1/replays", json={"table": table, "format": format,
                                                       "policies": policies or ["linucb", "random"], "seeds": seeds})

    def job(self, job_id: int) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def wait(self, job_id: int, timeout: float = 600.0, poll: float = 0.2) -> dict:
        """Poll a job until it is done or failed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in ("done", "failed"):
                return job
            if time.monotonic() > deadline:
                raise ServerError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(poll)
