"""The one place where a device is chosen: `auto` means CUDA when present, else CPU."""
from __future__ import annotations

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
