"""Where a zoo lives and what its manifest says, readable without torch.

A zoo folder holds one model folder per checkpoint (`base`, `expert-<task>`), one probe file
per task (`probes/<task>.txt`, one prompt a line) and `manifest.json`:

    {
      "format": "simmerge-zoo/1",
      "size": "tiny",
      "recipe": {...every training setting...},
      "tasks": {"add": {"description": ..., "tag": "[add]", "example": {...},
                        "eval_size": 256, "probes": "probes/add.txt"}, ...},
      "base": {"name": "base", "path": "base"},
      "experts": {"add": {"name": "expert-add", "path": "expert-add"}, ...},
      "accuracy": {"base": {"add": 0.02, ...}, "expert-add": {"add": 0.97, ...}, ...},
      "build_seconds": {"base": 71.0, "expert-add": 9.3, ..., "evaluation": 7.4,
                        "total": 190.2, "this_run": 0.1},
      "versions": {"torch": ..., "transformers": ...}
    }

Paths are relative to the zoo folder so a zoo can be moved; `Zoo` resolves them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from zoo.errors import ZooError

MANIFEST_NAME = "manifest.json"
FORMAT = "simmerge-zoo/1"


def default_root() -> Path:
    """`zoo/` under simmerge's home ($SIMMERGE_HOME, else the user's cache folder / simmerge)."""
    from features.probe_outputs import simmerge_home

    return simmerge_home() / "zoo"


def default_zoo_dir(size: str = "tiny") -> Path:
    # One folder per size, so building `small` never evicts the default `tiny` zoo.
    return default_root() / size


@dataclass(frozen=True)
class Zoo:
    """A built zoo, as its manifest describes it, with absolute paths."""

    root: Path
    manifest: dict

    @property
    def size(self) -> str:
        return self.manifest["size"]

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def base(self) -> Path:
        return self.root / self.manifest["base"]["path"]

    @property
    def base_name(self) -> str:
        return self.manifest["base"]["name"]

    @property
    def experts(self) -> dict[str, Path]:
        """Task -> the folder of the expert fine-tuned on it."""
        return {task: self.root / e["path"] for task, e in self.manifest["experts"].items()}

    def expert_name(self, task: str) -> str:
        return self._expert(task)["name"]

    def expert(self, task: str) -> Path:
        return self.root / self._expert(task)["path"]

    def probes(self, task: str) -> Path:
        return self.root / self._task(task)["probes"]

    def accuracy(self, model_name: str) -> dict[str, float]:
        """Task -> accuracy of a model named in the manifest (`base`, `expert-add`, ...)."""
        try:
            return dict(self.manifest["accuracy"][model_name])
        except KeyError:
            raise ZooError(f"no model {model_name!r} in the zoo at {self.root}; models: "
                           f"{', '.join(self.manifest['accuracy'])}") from None

    def expert_accuracy(self, task: str) -> float:
        """The expert's accuracy on its own task: the denominator of the retained-skill reward."""
        return self.accuracy(self.expert_name(task))[task]

    def pairs(self) -> list[tuple[str, str]]:
        """Every ordered pair of distinct tasks, i.e. of experts to merge."""
        return list(permutations(self.tasks, 2))

    def _task(self, task: str) -> dict:
        try:
            return self.manifest["tasks"][task]
        except KeyError:
            raise ZooError(f"task {task!r} is not in the zoo at {self.root}; tasks: {', '.join(self.tasks)}") from None

    def _expert(self, task: str) -> dict:
        self._task(task)
        return self.manifest["experts"][task]


def load_zoo(directory: str | os.PathLike | None = None, size: str = "tiny") -> Zoo:
    """The zoo in `directory` (default: the cache folder for `size`), or a ZooError saying
    how to build it."""
    root = Path(directory).expanduser() if directory else default_zoo_dir(size)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ZooError(f"no zoo at {root} (no {MANIFEST_NAME}); build it with `bandit zoo build"
                       f"{' --dir ' + str(root) if directory else ''}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: cannot read the zoo manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZooError(f"{path}: not a {FORMAT} manifest; rebuild with `bandit zoo build`")
    return Zoo(root.resolve(), manifest)


def write_manifest(root: Path, manifest: dict) -> None:
    # Written to a sibling and renamed, so a reader never sees half a manifest.
    tmp = root / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
