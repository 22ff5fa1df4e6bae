"""The live service behind one facade, `Service`.

`Service` is loaded on first use (PEP 562) so that `bandit.service.reward`, the fast reward
path, can be imported without numpy or the policies.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Service"]


def __getattr__(name: str) -> Any:
    if name == "Service":
        from bandit.service.facade import Service

        return Service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
