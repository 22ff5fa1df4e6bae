"""The one place where exceptions become HTTP answers: JSON `{"error": "..."}`.

A user's mistake maps by its kind (bandit/errors.py, store/errors.py): invalid → 422,
not_found → 404, conflict → 409, unavailable → 503. A body that is not JSON is 400, an
oversized one 413 (the body-limit middleware), a missing or wrong token 401 (auth). Any
other exception is a bug: logged with its traceback on the server, answered 500 with one
line and no traceback.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("bandit.server")

STATUS_BY_KIND = {"invalid": 422, "not_found": 404, "conflict": 409, "unavailable": 503}


def user_error_types() -> tuple[type[BaseException], ...]:
    from bandit.errors import BanditError
    from merging.errors import MergeError
    from store.errors import StoreError

    types: list[type[BaseException]] = [BanditError, MergeError, StoreError]
    try:
        from features.errors import FeatureError

        types.append(FeatureError)
    except ImportError:
        pass
    return tuple(types)


def status_of(exc: BaseException) -> int:
    return STATUS_BY_KIND.get(getattr(exc, "kind", "invalid"), 422)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid')}{more}"


def install(app: FastAPI) -> None:
    user_errors = user_error_types()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        status, message = _validation_message(exc)
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def _user(request: Request, exc: Exception):
        return error_response(status_of(exc), str(exc))

    for error_type in user_errors:
        app.add_exception_handler(error_type, _user)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")
