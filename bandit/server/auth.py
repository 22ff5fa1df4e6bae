"""Bearer-token auth and the request-body limit, as plain ASGI middleware (cheap per request).

Off loopback a token is mandatory (`--token-file` or $BANDIT_TOKEN); with one configured,
every request but /v1/health must carry `Authorization: Bearer TOKEN`, compared in
constant time. A refused request is answered before any handler runs: nothing changes.
/v1/health stays open for load balancers, but learns whether the token came
(`request.state.authorized`) and says nothing about the data without it.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os

from bandit.errors import InvalidInput

OPEN_PATHS = frozenset({"/v1/health"})
DEFAULT_BODY_LIMIT = 1 << 20  # 1 MiB: a recipe or a context is a few kB
UPLOAD_BODY_LIMIT = 64 << 20  # an outcome table for replay


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | None, env: dict | None = None) -> str | None:
    """The token from the file, else $BANDIT_TOKEN, else None. An empty one is refused."""
    env = os.environ if env is None else env
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise InvalidInput(f"--token-file {token_file}: {e.strerror}") from None
        if not token:
            raise InvalidInput(f"--token-file {token_file} is empty")
        return token
    token = env.get("BANDIT_TOKEN", "").strip()
    return token or None


def require_token_off_loopback(host: str, token: str | None) -> None:
    if not is_loopback(host) and token is None:
        raise InvalidInput(f"binding to {host} (not loopback) needs a token: --token-file FILE or $BANDIT_TOKEN")
    if token is not None and len(token) < 16:
        raise InvalidInput("the token is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")


async def _send_error(send, status: int, message: str, extra_headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    def __init__(self, app, token: str | None):
        self.app = app
        self.expected = None if token is None else token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.expected is None:
            return await self.app(scope, receive, send)
        if scope["path"] in OPEN_PATHS:
            scope.setdefault("state", {})["authorized"] = self._carries_token(scope)
            return await self.app(scope, receive, send)
        if not self._carries_token(scope):
            return await _send_error(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)

    def _carries_token(self, scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)


class BodyLimit:
    """413 for a body over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app, limit: int = DEFAULT_BODY_LIMIT, upload_limit: int = UPLOAD_BODY_LIMIT,
                 upload_paths: tuple[str, ...] = ("/v1/replays",)):
        self.app, self.limit, self.upload_limit, self.upload_paths = app, limit, upload_limit, upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] in self.upload_paths else self.limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    return await _send_error(send, 400, "bad Content-Length header")
                if announced > limit:
                    return await _send_error(send, 413, f"request body over the limit of {limit} bytes")
        if not any(name == b"content-length" for name, _ in scope["headers"]) and scope["method"] in ("POST", "PUT", "PATCH"):
            # A streamed (chunked) body: read it here, up to the limit, and hand it on whole.
            chunks, seen, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > limit:
                    return await _send_error(send, 413, f"request body over the limit of {limit} bytes")
                more = message.get("more_body", False)
            body = b"".join(chunks)
            delivered = False

            async def replay_receive():
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay_receive, send)
        return await self.app(scope, receive, send)
