"""Errors a user can cause while computing similarity features."""


class FeatureError(Exception):
    """Features cannot be computed: checkpoints that do not share an architecture, a folder
    without a tokenizer, no usable probe text, an unreadable checkpoint."""
