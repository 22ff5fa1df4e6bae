"""Per-model outputs on probe texts, computed once and kept on disk: the one probe-output cache.

Anything derived from running one model on a set of probes (next-token log-probabilities and
hidden states for the functional features, greedy continuations for trial merges, ...) is stored
here as a few named arrays plus a small JSON record, under a key of

    (model fingerprint, probe hash, kind, extractor version, variant)

- `fingerprint`: `merging.checkpoint.Checkpoint(folder).fingerprint()`, so a checkpoint saved
  again in place misses;
- `probe_hash`: `features.probe_hash(probes)` (texts and token cut);
- `kind`: who stores it ("functional", "continuations", ...), each kind its own folder;
- `version`: the extractor's version: bump it when what is stored changes meaning;
- `variant`: anything else the outputs depend on (a digest of the token ids actually fed, so
  another tokenizer misses; generation settings), free text, may be "".

Layout: `<root>/probe_outputs/<kind>/<fingerprint>/<probe_hash>-v<version>-<variant digest>.npz`,
one uncompressed `.npz` per entry holding the arrays and the record (as the `__meta__` array).
Writes go to a temporary file in the same folder and are renamed into place, so a reader sees
either nothing or a whole entry, and concurrent writers of one entry both leave a whole one.
A file that cannot be read is a miss (and is overwritten by the next store).

The root is `$SIMMERGE_HOME/cache` (default `~/.cache/simmerge/cache`), or `cache/` next to a
database file when one is given (`default_cache_root(database)`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

META = "__meta__"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def simmerge_home() -> Path:
    """Where simmerge keeps its caches and the zoo: $SIMMERGE_HOME when set, else the user's
    cache folder ($XDG_CACHE_HOME, default ~/.cache) / simmerge. The one place that decides."""
    home = os.environ.get("SIMMERGE_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "simmerge"


def default_cache_root(database: str | os.PathLike | None = None) -> Path:
    """`cache/` beside the database when one is given, else under `simmerge_home()`."""
    if database is not None and str(database) != ":memory:":
        return Path(database).expanduser().resolve().parent / "cache"
    return simmerge_home() / "cache"


@dataclass(frozen=True)
class ProbeOutputKey:
    fingerprint: str
    probe_hash: str
    kind: str
    version: int
    variant: str = ""

    def relative_path(self) -> Path:
        for label, value in (("fingerprint", self.fingerprint), ("probe hash", self.probe_hash), ("kind", self.kind)):
            if not _SAFE.match(value):
                raise ValueError(f"probe-output cache: {label} {value!r} is not a plain name")
        variant = hashlib.sha256(self.variant.encode("utf-8")).hexdigest()[:16]
        return Path("probe_outputs") / self.kind / self.fingerprint / f"{self.probe_hash}-v{int(self.version)}-{variant}.npz"


class ProbeOutputCache:
    """Load and store entries; `hits` and `misses` count the `load` calls of this object."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.hits = 0
        self.misses = 0

    def path(self, key: ProbeOutputKey) -> Path:
        return self.root / key.relative_path()

    def load(self, key: ProbeOutputKey) -> tuple[dict, dict] | None:
        """(arrays as numpy, record) of the entry, or None when there is none (or it is unreadable)."""
        import numpy as np

        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name != META}
                meta = json.loads(bytes(data[META]).decode("utf-8")) if META in data.files else {}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
            # Missing, or a file another tool truncated: recompute rather than fail.
            self.misses += 1
            return None
        if meta.get("key") != _key_record(key):
            self.misses += 1  # a digest collision on the variant, or a file moved by hand
            return None
        self.hits += 1
        return arrays, meta

    def store(self, key: ProbeOutputKey, arrays: dict, meta: dict | None = None) -> Path:
        """Write the entry atomically; `arrays`: {name: numpy array}, `meta`: JSON-serialisable."""
        import numpy as np

        if META in arrays:
            raise ValueError(f"probe-output cache: {META!r} is a reserved array name")
        record = dict(meta or {})
        record["key"] = _key_record(key)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
        payload[META] = np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path


def _key_record(key: ProbeOutputKey) -> dict:
    return {"fingerprint": key.fingerprint, "probe_hash": key.probe_hash, "kind": key.kind,
            "version": int(key.version), "variant": key.variant}
