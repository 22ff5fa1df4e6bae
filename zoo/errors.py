"""Errors a user of the zoo can cause: an unknown task, a missing zoo, an unreadable model folder."""


class ZooError(Exception):
    """Bad input to the zoo or its evaluator; the CLI prints it as one line and exits 1."""
