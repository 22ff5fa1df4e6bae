"""Errors a user of the bandit service can cause: one family, each with a `kind`.

Front ends map the kind, not the class: the CLI prints one line and exits 1 for all of
them; the HTTP server answers invalid → 422, not_found → 404, conflict → 409,
unavailable → 503 (a database that is locked, read-only or full).
"""


class BanditError(Exception):
    """Bad input to the service: unknown event, arm or task, a bad reward value, ..."""

    kind = "invalid"


class InvalidInput(BanditError):
    """A value that cannot be parsed or lies outside its documented range."""

    kind = "invalid"


class NotFound(BanditError):
    """An event, arm, model or task that does not exist."""

    kind = "not_found"


class Conflict(BanditError):
    """A request that contradicts what is stored: a second different reward, a duplicate arm."""

    kind = "conflict"


class Unavailable(BanditError):
    """The database cannot do it now: locked past the timeout, read-only, disk full."""

    kind = "unavailable"


def store_errors() -> tuple[type[Exception], ...]:
    """The store's own error class, for front ends that catch everything a user can cause
    without importing the store themselves (the facade already converts what it raises)."""
    from store.errors import StoreError

    return (StoreError,)
