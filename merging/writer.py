"""A streaming, sharded safetensors writer.

Every output tensor's name, dtype and shape is known before the merge starts, so the
shards are laid out up front: each file's header is written when the file is opened and
each tensor's bytes are appended as soon as it is merged. Nothing is buffered, so memory
does not grow with the shard size or the model size.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from merging.checkpoint import INDEX_NAME, SINGLE_NAME
from merging.dtypes import DTYPE_BYTES, ST_OF_TORCH
from merging.errors import MergeError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as Hugging Face shard sizes), '2GiB', or bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        unit = (m.group(2) or "").lower() if m else None
        if not m or unit not in _UNITS:
            raise MergeError(f"shard size {value!r} not understood (e.g. 5GB, 500MB, 2GiB, or bytes)")
        size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise MergeError(f"shard size must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str  # safetensors spelling
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for s in self.shape:
            n *= s
        return n


def plan_shards(tensors: Sequence[PlannedTensor], shard_size: int) -> list[list[PlannedTensor]]:
    """Greedy split in merge order: a new shard starts when the next tensor would push the
    current one past shard_size (a tensor larger than shard_size gets a shard of its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    filled = 0
    for t in tensors:
        if shards[-1] and filled + t.nbytes > shard_size:
            shards.append([])
            filled = 0
        shards[-1].append(t)
        filled += t.nbytes
    return shards if shards[0] else []


def shard_names(count: int) -> list[str]:
    if count <= 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardWriter:
    """Writes tensors, in planned order, into safetensors shards in `folder`."""

    def __init__(self, folder: Path, shards: list[list[PlannedTensor]]):
        self.folder = Path(folder)
        self.shards = shards
        self.names = shard_names(len(shards))
        self._order = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._next = 0
        self._file = None
        self._file_index = -1
        self.bytes_written = 0

    def _open(self, index: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[index]:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        # The data section starts 8-byte aligned, as safetensors' own writer does.
        raw += b" " * (-(8 + len(raw)) % 8)
        self._file = open(self.folder / self.names[index], "wb")
        self._file.write(len(raw).to_bytes(8, "little"))
        self._file.write(raw)
        self._file_index = index

    def write(self, name: str, tensor) -> None:
        """Append one CPU tensor; it must be the next one in the plan."""
        import torch

        if self._next >= len(self._order):
            raise MergeError(f"writer: tensor {name!r} is not in the plan")
        index, planned = self._order[self._next]
        if planned.name != name:
            raise MergeError(f"writer: expected tensor {planned.name!r}, got {name!r}")
        if tuple(tensor.shape) != planned.shape or ST_OF_TORCH.get(str(tensor.dtype).removeprefix("torch.")) != planned.dtype:
            raise MergeError(f"writer: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned {planned.shape} {planned.dtype}")
        if index != self._file_index:
            self._open(index)
        # The raw bytes of the tensor (little-endian on every platform torch supports here).
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != planned.nbytes:
            raise MergeError(f"writer: tensor {name!r} has {data.nbytes} bytes, planned {planned.nbytes}")
        self._file.write(memoryview(data))
        self.bytes_written += data.nbytes
        self._next += 1

    def close(self) -> None:
        """Finish the last shard and write the index (for more than one shard)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._next != len(self._order):
            raise MergeError(f"writer: {len(self._order) - self._next} planned tensor(s) were never written")
        if len(self.shards) > 1:
            weight_map = {t.name: self.names[i] for i, shard in enumerate(self.shards) for t in shard}
            total = sum(t.nbytes for shard in self.shards for t in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
