"""Errors a user can cause while reading checkpoints or merging them."""


class MergeError(Exception):
    """Bad merge input: a missing file, a corrupt checkpoint, an unknown operator or parameter."""


class CheckpointError(MergeError):
    """A checkpoint folder that cannot be read as a Hugging Face safetensors checkpoint."""
