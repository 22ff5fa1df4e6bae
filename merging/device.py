"""The one place where a device is chosen: `auto` means CUDA when present, else CPU."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from merging.errors import MergeError


def resolve_device(spec: str = "auto"):
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a torch.device, checking that it exists."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MergeError(f"device {spec!r} asked for, but CUDA is not available here (use --device cpu)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MergeError(f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise MergeError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the duration, put back after (None:
    unchanged). The setting is process-wide: other torch work in the same process runs
    with it meanwhile. Callers pin CPU work on small, chunked tensors to one thread, where
    the hand-offs of a parallel region cost more than they give, and much more when other
    processes share the cores."""
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
