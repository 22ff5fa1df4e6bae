"""Errors the store reports to users."""


class StoreError(Exception):
    """A database that cannot be opened, or a write that would break an invariant.

    `kind` tells a front end what went wrong without parsing the message: "unavailable"
    (locked past the timeout, read-only, disk full, not a database), "conflict" (a row
    that exists already), "not_found" (a row that does not exist).
    """

    def __init__(self, message: str, kind: str = "unavailable"):
        super().__init__(message)
        self.kind = kind
