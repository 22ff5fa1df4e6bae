"""Errors the store reports to users."""


class StoreError(Exception):
    """A database that cannot be opened, or a write that would break an invariant."""
