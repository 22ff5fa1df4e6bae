"""The payloads the facade returns: plain records with `to_dict()`, the `--json` output of
the CLI and the body of the HTTP server's answers, field for field."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class Record:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Proposal(Record):
    event_id: int
    task: str
    arm: str
    operator: str
    params: dict[str, Any]
    prob: float
    predicted: float
    bonus: float
    pmf: list[dict[str, Any]]  # one entry per action: arm, (model_a, model_b,) p
    policy: str
    seed: int
    model_a: str | None = None
    model_b: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    merged: dict[str, Any] | None = None  # the merge run with it (--merge-to), when one was
    trial: dict[str, Any] | None = None  # the trial merges' cost, when they ran

    def to_dict(self) -> dict[str, Any]:
        return self._without_unset(asdict(self))

    def shallow_dict(self) -> dict[str, Any]:
        """`to_dict()` without its deep copy, for a payload serialised at once (the server's hot path)."""
        return self._without_unset(dict(vars(self)))

    @staticmethod
    def _without_unset(out: dict[str, Any]) -> dict[str, Any]:
        for optional in ("merged", "trial"):  # present only when they happened
            if out.get(optional) is None:
                out.pop(optional, None)
        return out


@dataclass
class Arm(Record):
    name: str
    operator: str
    params: dict[str, Any]
    status: str = "active"
    warm_start_from: str | None = None


@dataclass
class Task(Record):
    name: str
    new: bool
    probes: int


@dataclass
class TaskRow(Record):
    name: str
    n_probes: int
    events: int
    probe_hash: str | None
    created_at: float


@dataclass
class Model(Record):
    name: str
    path: str
    base: str | None
    fingerprint: str
    model_type: str | None = None
    architectures: list[str] | None = None
    tensors: int | None = None
    bytes: int | None = None
    probes: int | None = None  # its own probe texts, when registered with some

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["probes"] is None:
            del out["probes"]
        return out


@dataclass
class ModelRow(Record):
    name: str
    path: str
    base: str | None
    fingerprint: str
    created_at: float


@dataclass
class PolicyInfo(Record):
    name: str
    params: dict[str, Any]
    label: str
    effective: dict[str, Any]


@dataclass
class ArmStats(Record):
    arm: str
    operator: str
    status: str
    proposals: int
    pulls: int
    mean_reward: float | None
    posterior_mean: float | None
    share: float


@dataclass
class RebuildReport(Record):
    arms: int
    rewards: int
    max_abs_diff: float
    mismatched: list[str]
    written: bool

    @property
    def clean(self) -> bool:
        return not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


@dataclass
class Features(Record):
    model_a: str
    model_b: str
    cached: bool
    features: dict[str, float]
