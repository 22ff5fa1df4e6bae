"""Files the bandit reads from users and writes beside its database, with one-line errors.

Reading: a whole text file, and JSONL objects with their line numbers. Writing: a file
replaced atomically (a temporary sibling renamed into place), so a reader never sees half
a snapshot and an interrupted write leaves the old file.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bandit.errors import BanditError


def read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BanditError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BanditError(f"{path}: cannot read it ({e})") from None


def jsonl_objects(text: str, where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; anything but a JSON object is an error."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BanditError(f"{where} line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise BanditError(f"{where} line {n}: expected a JSON object")
        yield n, rec


def _umask() -> int:
    """The process umask. POSIX can only read it by setting it; the two calls are adjacent
    and every writer here sets it back to the value read."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _atomic_file(path: Path, mode: str) -> Iterator[IO]:
    """A file written to a temporary sibling and renamed into place on success only. mkstemp
    makes it private; it gets the mode a plain open() would (the umask's), as the database has."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise BanditError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_text_writer(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file written to a temporary sibling and renamed into place on success only."""
    with _atomic_file(Path(path), "w") as f:
        yield f


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    with _atomic_file(Path(path), "wb") as f:
        f.write(data)
