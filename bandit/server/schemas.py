"""Request and response shapes of the /v1 API. Responses are the CLI's `--json` payloads,
typed here so the OpenAPI document describes them. Values are checked again by the facade
(bandit/inputs.py) exactly as on the CLI; these models only fix the shapes."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from bandit.service import records

from bandit.inputs import MAX_CONTEXT_FEATURES  # one bound for the CLI and the server

Scalar = float | int | bool | str
ParamValue = Scalar | list[float | int | bool | str]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ------------------------------------------------------------------------------
class ProposeRequest(Strict):
    task: str = Field(description="Task the merge is for (created on first use).")
    models: list[str] | None = Field(None, description="Registered fine-tunes to choose a pair from.")
    # Each feature adds a row and a column to every arm's ridge statistics (d² floats): a
    # request with 60k features would make its first reward allocate ~29 GB.
    context: dict[str, float | int | str] | None = Field(
        None, max_length=MAX_CONTEXT_FEATURES, description="Context features name: number (instead of models).")
    seed: int | str | None = Field(None, description="Seed for tie-breaking and sampling (logged either way).")
    structural_only: bool = Field(False, description="Weights-only features (no forward passes).")
    trial_merges: bool | None = Field(
        None, description="Trial-merge every action and measure it (action features); default: the database's setting.")
    trial_budget: int | None = Field(None, ge=1, description="Trial only the M most promising actions.")


class RewardRequest(Strict):
    value: float | int | str = Field(description="The reward: a plain decimal number within ±1e6.")


class ArmAddRequest(Strict):
    name: str
    operator: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    warm_start_from: str | None = None
    shrink: float = Field(0.1, description="Share of the donor's evidence kept, in [0, 1].")


class PolicySetRequest(Strict):
    name: str = Field(description="linucb, hybrid, lints, egreedy, random, fixed or vw.")
    params: dict[str, ParamValue] = Field(default_factory=dict)


class ModelAddRequest(Strict):
    name: str
    path: str = Field(description="Checkpoint folder on the server.")
    base: str | None = None


class TaskAddRequest(Strict):
    name: str
    probes: list[str] | None = Field(None, description="Unlabeled probe texts.")


class MergeRequest(Strict):
    out: str = Field(description="Output folder on the server (absolute; must not exist or be empty).")
    event_id: int | str | None = Field(None, description="Merge what this proposal chose...")
    recipe: dict[str, Any] | None = Field(None, description="...or this recipe (the YAML/JSON layout).")
    shard_size: str = "5GB"


class ReplayRequest(Strict):
    table: str = Field(description="The outcome table's text (CSV or JSONL).")
    format: Literal["csv", "jsonl"] = "csv"
    policies: list[str] = Field(default_factory=lambda: ["linucb", "random"])
    seeds: int = Field(5, description="Random arrival orders per policy (1..200).")


# -- responses -----------------------------------------------------------------------------
# The facade's records (bandit/service/records.py) are the payloads; the response models of
# those are made from them, so a field added there is in the OpenAPI document at once and
# the two can never disagree. Payloads that are plain dicts (events, jobs, health) and the
# reward's outcome (a plain class, kept light for `bandit reward`) are written out here.
def from_record(record: type, name: str | None = None, *, types: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> type[BaseModel]:
    """A pydantic model with the fields of the dataclass `record`: same names, types and
    defaults. `types` narrows a field's type for the document (`dict` entries the record
    does not spell out), `extra` adds what the record computes in `to_dict()`."""
    hints = get_type_hints(record)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = ((types or {}).get(f.name, hints[f.name]), default)
    return create_model(name or record.__name__, **fields, **(extra or {}))


class ErrorBody(BaseModel):
    error: str


class PmfEntry(BaseModel):
    arm: str
    model_a: str | None = None
    model_b: str | None = None
    p: float


Proposal = from_record(records.Proposal, types={"pmf": list[PmfEntry]})
Arm = from_record(records.Arm)
PolicyView = from_record(records.PolicyInfo, "PolicyView")
ArmStats = from_record(records.ArmStats)
ModelAdded = from_record(records.Model, "ModelAdded")
ModelRow = from_record(records.ModelRow)
TaskRow = from_record(records.TaskRow)
TaskAdded = from_record(records.Task, "TaskAdded")
Rebuild = from_record(records.RebuildReport, "Rebuild", extra={"clean": (bool, ...)})


class RewardResult(BaseModel):
    event_id: int
    arm: str
    reward: float
    duplicate: bool
    pulls: int


class Retired(BaseModel):
    name: str
    status: Literal["retired"]


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    created_at: float
    task: str
    arm: str
    chosen: int
    prob: float
    pmf: list[float]
    reward: float | None = None
    reward_source: str | None = None
    expired_at: float | None = None


class Job(BaseModel):
    id: int
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    spec: dict[str, Any]
    device: str | None = None
    done: int
    total: int | None = None
    output: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class Liveness(Strict):
    """What /v1/health says without the token when one is configured: the process answers."""
    status: Literal["ok"]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    schema_version: int
    events: int
    rewards: int
    pending_rewards: int
    jobs: dict[str, int]
    reward_window: dict[str, Any] | None
    device: str
