"""Read Hugging Face checkpoint folders (config.json + safetensors, sharded or not).

Headers are parsed and checked here in plain Python (as strictly as the safetensors
library: whole-number, in-file, non-overlapping offsets), so listing tensors, checking
shapes and fingerprinting a checkpoint never imports torch; tensors themselves are loaded
lazily, one at a time, with positioned reads at the offsets the header gave.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from merging.dtypes import DTYPE_BYTES, torch_dtype
from merging.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FINGERPRINT_SAMPLES = 4
FINGERPRINT_SAMPLE_BYTES = 64 * 1024
# A safetensors header is JSON; anything past this is certainly not one.
MAX_HEADER_BYTES = 100 * 1024 * 1024

@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    dtype: str  # safetensors spelling: F32, BF16, ...
    shape: tuple[int, ...]
    # Where the tensor's bytes start in its file: readers walk tensors in this order.
    offset: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path) -> tuple[dict, dict]:
    """Parse one safetensors file's header and check it against the file's size.

    Returns (tensors, metadata); a truncated or corrupt file raises CheckpointError.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt safetensors header (length {n}, file {size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    spans = []
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            nbytes = DTYPE_BYTES[info["dtype"]]
            shape = info["shape"]
            # Whole numbers only: "12" or 1.5 would be read as something else by another
            # reader, so they are refused as the safetensors library refuses them.
            if not all(type(x) is int for x in (begin, end, *shape)):
                raise TypeError
            numel = 1
            for s in shape:
                numel *= s
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors entry for {name!r}") from None
        if begin < 0 or end < begin or any(s < 0 for s in shape):
            raise CheckpointError(f"{path}: corrupt safetensors entry for {name!r} (negative offsets or shape)")
        if end > data_size:
            raise CheckpointError(f"{path}: truncated (tensor {name!r} ends past the end of the file)")
        if end - begin != numel * nbytes:
            raise CheckpointError(f"{path}: corrupt safetensors entry for {name!r} (size does not match shape)")
        spans.append((begin, end, name))
    # Tensors may not share bytes: the safetensors library refuses overlapping entries.
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: corrupt safetensors header (tensors {n0!r} and {n1!r} overlap)")
    return header, metadata


class Checkpoint:
    """A checkpoint folder: its config, its tensors' names/shapes/dtypes, lazy tensor loading."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            os.stat(self.path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CheckpointError(f"{self.path}: a symlink loop, not a folder") from None
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise CheckpointError(f"{self.path}: cannot open ({e.strerror or e})") from None
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such folder")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a folder (a checkpoint is a folder with config.json and safetensors)")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{self.path}: no config.json")
        try:
            self.config: dict = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: cannot parse ({e})") from None
        self.files = self._find_files()
        self.tensors: dict[str, TensorInfo] = {}
        self._headers: dict[str, tuple[int, str]] = {}
        for file in self.files:
            header, _ = read_header(self.path / file)
            for name, info in header.items():
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name!r} stored twice ({self.tensors[name].file}, {file})")
                self.tensors[name] = TensorInfo(name, file, info["dtype"], tuple(int(s) for s in info["shape"]),
                                                int(info["data_offsets"][0]))
            self._headers[file] = (os.path.getsize(self.path / file), json.dumps(header, sort_keys=True))
        if self._index_map is not None:
            for name, file in self._index_map.items():
                if name not in self.tensors:
                    raise CheckpointError(f"{self.path}: index names {name!r} in {file}, which does not hold it")
        self._open: dict[str, tuple[int, int]] = {}  # file -> (descriptor, data start)
        self._fingerprint: str | None = None

    def _find_files(self) -> list[str]:
        self._index_map = None
        index = self.path / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                raise CheckpointError(f"{index}: corrupt index (no weight_map)") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index}: corrupt index (weight_map must map names to file names)")
            self._index_map = dict(weight_map)
            files = sorted(set(weight_map.values()))
            for f in files:
                # Shards live in the folder itself: no separators, no '..', nothing absolute.
                if f in ("", ".", "..") or "/" in f or "\\" in f or os.path.isabs(f):
                    raise CheckpointError(f"{index}: shard {f!r} is outside the model folder")
                if not (self.path / f).is_file():
                    raise CheckpointError(f"{self.path}: shard {f} named in the index is missing")
            return files
        if (self.path / SINGLE_NAME).is_file():
            return [SINGLE_NAME]
        others = sorted(p.name for p in self.path.glob("*.safetensors"))
        if len(others) == 1:
            return others
        if others:
            raise CheckpointError(f"{self.path}: several safetensors files but no {INDEX_NAME}")
        raise CheckpointError(f"{self.path}: no safetensors weights (model.safetensors or an index)")

    # -- facts from headers only (no torch) ---------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self._headers.values())

    @property
    def tie_word_embeddings(self) -> bool:
        cfg = self.config
        tied = cfg.get("tie_word_embeddings")
        if tied is None and isinstance(cfg.get("text_config"), dict):
            tied = cfg["text_config"].get("tie_word_embeddings")
        return bool(tied)

    def fingerprint(self) -> str:
        """A digest of file names, sizes, headers and a few samples of the weight bytes.

        Headers and sizes catch any change of layout; the samples (64 KiB at 4 evenly
        spaced offsets per file) catch a checkpoint re-trained and saved in place with the
        same layout, which changes every weight. Costs a few reads, never the whole file.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for file in self.files:
                size, header = self._headers[file]
                h.update(f"{file}\0{size}\0{header}\0".encode())
                try:
                    with open(self.path / file, "rb") as f:
                        for k in range(FINGERPRINT_SAMPLES):
                            f.seek(size * k // FINGERPRINT_SAMPLES)
                            h.update(f.read(FINGERPRINT_SAMPLE_BYTES))
                except OSError as e:
                    raise CheckpointError(f"{self.path / file}: cannot read ({e.strerror or e})") from None
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # -- tensors (torch) ------------------------------------------------------------------
    def tensor(self, name: str, device: str = "cpu"):
        """Load one tensor from the file that holds it.

        Read with plain positioned reads into a fresh buffer rather than through a memory
        map: pages of a mapped file count towards the process's resident memory for as long
        as the map lives, so streaming a whole model through maps makes RSS grow with the
        model. The offsets come from the header checked when the folder was opened."""
        import torch

        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {name!r}")
        fd, data_start = self._file_handle(info.file)
        nbytes = info.numel * DTYPE_BYTES[info.dtype]
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        done = 0
        try:
            while done < nbytes:
                # Linux reads at most ~2 GB per call; loop over chunks.
                n = os.preadv(fd, [view[done:done + (1 << 30)]], data_start + info.offset + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path / info.file}: truncated while reading tensor {name!r}")
                done += n
        except OSError as e:
            raise CheckpointError(f"{self.path / info.file}: cannot read tensor {name!r} ({e.strerror or e})") from None
        t = buffer.view(torch_dtype(info.dtype)).reshape(info.shape)
        return t if str(device) == "cpu" else t.to(device, non_blocking=True)

    def tensor_range(self, name: str, start: int, stop: int):
        """Entries [start, stop) of one tensor, flattened in storage order, as a 1-D CPU tensor
        of its stored dtype: a part of a tensor too large to hold N copies of at once."""
        import torch

        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {name!r}")
        start, stop = max(0, start), min(stop, info.numel)
        itemsize = DTYPE_BYTES[info.dtype]
        fd, data_start = self._file_handle(info.file)
        nbytes = max(0, stop - start) * itemsize
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        where = data_start + info.offset + start * itemsize
        done = 0
        try:
            while done < nbytes:
                n = os.preadv(fd, [view[done:done + (1 << 30)]], where + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path / info.file}: truncated while reading tensor {name!r}")
                done += n
        except OSError as e:
            raise CheckpointError(f"{self.path / info.file}: cannot read tensor {name!r} ({e.strerror or e})") from None
        return buffer.view(torch_dtype(info.dtype))

    def _file_handle(self, file: str) -> tuple[int, int]:
        handle = self._open.get(file)
        if handle is None:
            path = self.path / file
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot open ({e.strerror or e})") from None
            head = os.pread(fd, 8, 0)
            if len(head) < 8:
                os.close(fd)
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            handle = (fd, 8 + struct.unpack("<Q", head)[0])
            self._open[file] = handle
        return handle

    def close(self) -> None:
        handles = getattr(self, "_open", None) or {}  # absent when __init__ failed
        for fd, _ in handles.values():
            try:
                os.close(fd)
            except OSError:
                pass
        handles.clear()

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
