"""The /v1 routes: each parses its request model, calls the facade on the service thread,
and returns the same payload as the CLI's `--json`. No SQL here, no policy math."""
from __future__ import annotations

import io
import os
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from bandit.render import payload
from bandit.server import schemas as s

router = APIRouter(prefix="/v1")

ERRORS = {code: {"model": s.ErrorBody} for code in (400, 401, 404, 409, 413, 422, 503)}


def _rt(request: Request):
    return request.app.state.runtime


# -- propose and reward ------------------------------------------------------------------------
def _propose(svc, body: s.ProposeRequest, device: str) -> dict:
    from bandit.errors import InvalidInput
    from bandit.inputs import parse_seed

    seed = parse_seed(body.seed)
    if body.models:
        if body.context:
            raise InvalidInput("give either models (features are computed) or a context, not both")
        p = svc.propose_merge(body.task, body.models, seed=seed, structural_only=body.structural_only, device=device,
                              trial_merges=body.trial_merges, trial_budget=body.trial_budget)
    else:
        if body.trial_merges or body.trial_budget:
            raise InvalidInput("trial merges need models: they merge the candidate pairs")
        p = svc.propose(body.task, body.context or {}, seed=seed)  # the facade checks the context
    return p.shallow_dict()


@router.post("/propose", response_model=s.Proposal, response_model_exclude_unset=True, responses=ERRORS,
             summary="Choose an arm and log the event")
async def propose(body: s.ProposeRequest, request: Request):
    rt = _rt(request)
    # A JSONResponse skips FastAPI's re-validation of a payload the facade built (the hot path);
    # the response model still documents it, and the fuzz test checks the two agree.
    # A propose over models computes features (seconds): never inline.
    return JSONResponse(await rt.service.call(_propose, body, rt.config.device, fast=not body.models))


def _reward(svc, event_id: str, value) -> dict:
    from bandit.service.join_window import reward_in_window

    return reward_in_window(svc, event_id, value).to_dict()


@router.post("/events/{event_id}/reward", response_model=s.RewardResult, responses=ERRORS,
             summary="Record an event's reward (the same value again is a no-op; a different one is 409)")
async def reward(event_id: str, body: s.RewardRequest, request: Request):
    return JSONResponse(await _rt(request).service.call(_reward, event_id, body.value, fast=True))


@router.get("/events/{event_id}", response_model=s.Event, responses=ERRORS, summary="One logged event")
async def get_event(event_id: str, request: Request):
    from bandit.service.monitor import event_view

    return await _rt(request).service.call(lambda svc: event_view(svc.store, event_id), fast=True)


@router.get("/events", responses=ERRORS, summary="The decision log as JSONL (bandit export)",
            response_class=Response)
async def export(request: Request, rewarded_only: bool = False):
    def _export(svc) -> str:
        buf = io.StringIO()
        svc.export("-", rewarded_only=rewarded_only, stream=buf)
        return buf.getvalue()

    text = await _rt(request).reader.call(_export)
    return Response(text, media_type="application/x-ndjson")


# -- arms, policy, stats -------------------------------------------------------------------------
@router.get("/arms", response_model=list[s.Arm], responses=ERRORS, summary="Arms (retired ones with all=true)")
async def arms_list(request: Request, all: bool = False):  # noqa: A002 — the CLI's --all
    return await _rt(request).service.call(lambda svc: payload(svc.arms(include_retired=all)))


@router.post("/arms", response_model=s.Arm, status_code=201, responses=ERRORS, summary="Add an arm")
async def arms_add(body: s.ArmAddRequest, request: Request):
    return await _rt(request).service.call(lambda svc: payload(
        svc.add_arm(body.name, body.operator, dict(body.params), body.warm_start_from, body.shrink)))


@router.post("/arms/{name}/retire", response_model=s.Retired, responses=ERRORS, summary="Retire an arm")
async def arms_retire(name: str, request: Request):
    from bandit.render import arm_retired_payload

    return await _rt(request).service.call(lambda svc: arm_retired_payload(svc.retire_arm(name)))


@router.get("/policy", response_model=s.PolicyView, responses=ERRORS, summary="The live policy")
async def policy_show(request: Request):
    return await _rt(request).service.call(lambda svc: payload(svc.show_policy()))


@router.put("/policy", response_model=s.PolicyView, responses=ERRORS,
            summary="Choose the live policy (documented settings only)")
async def policy_set(body: s.PolicySetRequest, request: Request):
    return await _rt(request).service.call(lambda svc: payload(svc.set_policy(body.name, dict(body.params))))


@router.get("/stats", response_model=list[s.ArmStats], responses=ERRORS, summary="Per-arm statistics")
async def stats(request: Request):
    return await _rt(request).reader.call(lambda svc: payload(svc.stats()))


@router.get("/rebuild", response_model=s.Rebuild, responses=ERRORS,
            summary="Recompute every posterior from the log and compare (changes nothing)")
async def rebuild_check(request: Request):
    return await _rt(request).service.call(lambda svc: payload(svc.rebuild(check=True)))


# -- catalog --------------------------------------------------------------------------------
@router.get("/models", response_model=list[s.ModelRow], responses=ERRORS, summary="Registered models")
async def models_list(request: Request):
    return await _rt(request).reader.call(lambda svc: payload(svc.models()))


@router.post("/models", response_model=s.ModelAdded, response_model_exclude_unset=True, status_code=201,
             responses=ERRORS,
             summary="Register a checkpoint folder on the server")
async def models_add(body: s.ModelAddRequest, request: Request):
    return await _rt(request).service.call(lambda svc: payload(svc.add_model(body.name, body.path, body.base)))


@router.get("/tasks", response_model=list[s.TaskRow], responses=ERRORS, summary="Tasks")
async def tasks_list(request: Request):
    return await _rt(request).reader.call(lambda svc: payload(svc.tasks()))


@router.post("/tasks", response_model=s.TaskAdded, responses=ERRORS, summary="Add a task (or replace its probes)")
async def tasks_add(body: s.TaskAddRequest, request: Request):
    return await _rt(request).service.call(lambda svc: payload(svc.add_task(body.name, body.probes)))


# -- jobs ----------------------------------------------------------------------------------
@router.post("/merges", response_model=s.Job, status_code=202, responses=ERRORS,
             summary="Queue a merge (an event's proposal or a recipe) on the server's device")
async def merges_submit(body: s.MergeRequest, request: Request):
    from bandit.service.jobs import submit_merge

    rt = _rt(request)
    job = await rt.service.call(lambda svc: submit_merge(
        svc.store, out=body.out, event_id=body.event_id, recipe=body.recipe, device=rt.config.device,
        shard_size=body.shard_size))
    rt.wake("merge")
    return job


@router.get("/jobs", response_model=list[s.Job], responses=ERRORS, summary="Jobs, newest first")
async def jobs_list(request: Request, kind: str | None = Query(None, pattern="^(merge|replay)$"),
                    limit: int = Query(100, ge=1, le=1000)):
    from bandit.service.jobs import list_jobs

    return await _rt(request).reader.call(lambda svc: list_jobs(svc.store, kind, limit))


@router.get("/jobs/{job_id}", response_model=s.Job, responses=ERRORS, summary="One job")
async def job_get(job_id: str, request: Request):
    from bandit.inputs import parse_event_id
    from bandit.service.jobs import get_job

    def _get(svc):
        try:
            jid = parse_event_id(job_id)  # the same rule: a whole number 1 <= id < 2^63
        except Exception as e:  # noqa: BLE001 — say "job id", not "event id"
            from bandit.errors import InvalidInput

            raise InvalidInput(f"{job_id!r} is not a job id (job ids are whole numbers from 1)") from e
        return get_job(svc.store, jid)

    return await _rt(request).service.call(_get)


@router.post("/replays", response_model=s.Job, status_code=202, responses=ERRORS,
             summary="Replay policies on an uploaded outcome table, as a background job")
async def replays_submit(body: s.ReplayRequest, request: Request):
    from bandit.service.jobs import submit_replay

    rt = _rt(request)
    folder = rt.upload_dir()
    path = os.path.join(folder, f"outcomes-{uuid.uuid4().hex[:12]}.{body.format}")

    def _submit(svc) -> dict[str, Any]:
        with open(path, "w", encoding="utf-8") as f:
            f.write(body.table)
        try:
            return submit_replay(svc.store, table_path=path, policies=body.policies, seeds=body.seeds)
        except BaseException:
            os.unlink(path)
            raise

    job = await rt.service.call(_submit)
    rt.wake("replay")
    return job


# -- health and dashboard data ----------------------------------------------------------------
@router.get("/health", response_model=s.Health | s.Liveness,
            summary="Liveness (open); with the token, or without one configured, also counts and versions")
async def health(request: Request):
    rt = _rt(request)
    if not getattr(request.state, "authorized", True):  # set by BearerAuth when a token is configured
        return {"status": "ok"}

    def _health(svc):
        from importlib.metadata import PackageNotFoundError, version

        from bandit.service.monitor import health_counts

        try:
            v = version("simmerge")
        except PackageNotFoundError:
            v = "unknown"
        return {
            "status": "ok", "version": v, **health_counts(svc.store),
            "reward_window": rt.window.describe() if rt.window else None, "device": rt.config.device,
        }

    return await rt.reader.call(_health)


@router.get("/dashboard", responses=ERRORS, summary="Everything the dashboard shows, as JSON")
async def dashboard_data(request: Request):
    from bandit.server.dashboard import collect

    rt = _rt(request)
    return await rt.reader.call(collect, rt.curves, rt.shares)
