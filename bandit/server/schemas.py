"""Request and response shapes of the /v1 API. Responses are the CLI's `--json` payloads,
typed here so the OpenAPI document describes them. Values are checked again by the facade
(bandit/inputs.py) exactly as on the CLI; these models only fix the shapes."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
class ErrorBody(BaseModel):
    error: str


class PmfEntry(BaseModel):
    arm: str
    model_a: str | None = None
    model_b: str | None = None
    p: float


class Proposal(BaseModel):
    event_id: int
    task: str
    arm: str
    operator: str
    params: dict[str, Any]
    prob: float
    predicted: float
    bonus: float
    pmf: list[PmfEntry]
    policy: str
    seed: int
    model_a: str | None = None
    model_b: str | None = None
    recipe: dict[str, Any] = {}
    trial: dict[str, Any] | None = Field(None, description="Trial merges' cost (merges, seconds, budget), when they ran.")


class RewardResult(BaseModel):
    event_id: int
    arm: str
    reward: float
    duplicate: bool
    pulls: int


class Arm(BaseModel):
    name: str
    operator: str
    params: dict[str, Any]
    status: str = "active"
    warm_start_from: str | None = None


class Retired(BaseModel):
    name: str
    status: Literal["retired"]


class PolicyView(BaseModel):
    name: str
    params: dict[str, Any]
    label: str
    effective: dict[str, Any]


class ArmStats(BaseModel):
    arm: str
    operator: str
    status: str
    proposals: int
    pulls: int
    mean_reward: float | None
    posterior_mean: float | None
    share: float


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    path: str
    base: str | None = None
    fingerprint: str


class Task(BaseModel):
    name: str
    probe_hash: str | None = None
    created_at: float
    n_probes: int
    events: int


class TaskAdded(BaseModel):
    name: str
    new: bool
    probes: int


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


class Rebuild(BaseModel):
    arms: int
    rewards: int
    max_abs_diff: float
    mismatched: list[str]
    written: bool
    clean: bool
