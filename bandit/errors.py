"""Errors a user of the bandit service can cause."""


class BanditError(Exception):
    """Bad input to the service: unknown event, arm or task, a bad reward value, ..."""
