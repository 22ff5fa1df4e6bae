"""Proposing: score every (candidate pair, arm) action with the live policy, sample one from
its pmf, and log the decision as an event (what was offered, with what probability)."""
from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandit.errors import BanditError, InvalidInput, NotFound
from bandit.inputs import check_context, parse_event_id, parse_seed
from bandit.policies.base import Action
from bandit.service.catalog import check_task_name
from bandit.service.live import LivePolicy
from bandit.service.records import Proposal


def propose(
    live: LivePolicy, task: str, contexts: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    candidates: Sequence[tuple[str, str]] | None = None, seed: int | None = None,
    inputs: Sequence[tuple[str, list[str]]] | None = None, known_tasks: set[str] | None = None,
    action_features: Sequence[Mapping[str, Mapping[str, float]]] | None = None,
) -> Proposal:
    """`contexts` holds one feature dict per candidate pair (or a single dict when no pairs
    are given); `inputs`, when given, the (base path, model paths) each candidate would
    merge, so the event carries a ready recipe; `action_features`, when given, one
    `{arm: {feature: value}}` per candidate (trial-merge signals), logged with each action
    so that rebuild and replay see what the policy saw."""
    store = live.store
    task = check_task_name(task)
    if contexts is None:
        contexts = [{}]
    elif isinstance(contexts, Mapping):
        contexts = [contexts]
    contexts = [check_context(dict(c)) for c in contexts]
    if candidates is not None and len(candidates) != len(contexts):
        raise InvalidInput("one context is needed per candidate pair")
    if action_features is not None:
        if len(action_features) != len(contexts):
            raise InvalidInput("action features are needed per candidate pair")
        action_features = [{arm: check_context(dict(f)) for arm, f in per_arm.items()} for per_arm in action_features]
    seed = parse_seed(seed)
    if seed is None:
        seed = secrets.randbits(63)
    rng = np.random.default_rng(seed)

    policy = live.current()
    arms = [a for a in policy.arm_names if a in live.active]
    if not arms:
        raise BanditError("no active arms: add one with `bandit arms add`")
    def features_of(c: int, arm: str) -> dict[str, float]:
        return dict(action_features[c].get(arm, {})) if action_features is not None else {}

    actions = [Action(arm, ctx, c, features_of(c, arm)) for c, ctx in enumerate(contexts) for arm in arms]
    decision = policy.decide(actions, rng)
    chosen = actions[decision.chosen]
    spec = policy.specs[chosen.arm]
    operator, params = spec.operator, dict(spec.params)
    pair = tuple(candidates[chosen.candidate]) if candidates is not None else (None, None)
    if inputs is not None:
        from merging.recipe import Recipe  # plain data, no torch

        base_path, model_paths = inputs[chosen.candidate]
        recipe = Recipe.from_arm(operator, params, model_paths, base_path).to_merge_layout()
    else:
        recipe = {"merge_method": operator, "parameters": params}

    pmf_out = []
    for a, p in zip(actions, decision.pmf):
        entry: dict[str, Any] = {"arm": a.arm}
        if candidates is not None:
            entry["model_a"], entry["model_b"] = candidates[a.candidate]
        entry["p"] = float(p)
        pmf_out.append(entry)
    event = {
        "created_at": time.time(), "task": task, "policy": policy.name, "policy_params": policy.params(),
        "candidates": [list(c) for c in candidates] if candidates is not None else None,
        "contexts": contexts, "actions": [{"arm": a.arm, "candidate": a.candidate, **({"features": dict(a.features)} if a.features else {})}
                               for a in actions],
        "pmf": [float(p) for p in decision.pmf], "chosen": decision.chosen, "arm": chosen.arm,
        "model_a": pair[0], "model_b": pair[1], "prob": decision.prob,
        "predicted": float(decision.means[decision.chosen]), "bonus": float(decision.bonuses[decision.chosen]),
        "seed": int(seed), "recipe": recipe,
    }
    known_tasks = known_tasks if known_tasks is not None else set()
    with store.transaction():
        if task not in known_tasks:
            store.ensure_task(task)
        event_id = store.insert_event(event)
    known_tasks.add(task)
    return Proposal(
        event_id=event_id, task=task, arm=chosen.arm, operator=operator, params=params,
        prob=decision.prob, predicted=event["predicted"], bonus=event["bonus"], pmf=pmf_out,
        policy=policy.name, seed=int(seed), model_a=pair[0], model_b=pair[1], recipe=recipe,
    )


def merge_contexts(store, task: str, models: Sequence[str], *, structural_only: bool, device: str,
                   progress: bool) -> tuple[list[dict[str, float]], list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """Features for every ordered pair of `models` (cached), the pairs, and what each would merge."""
    from bandit.service.context import catalog_features, common_base, task_probes

    models = list(models)
    if len(models) < 2:
        raise InvalidInput("a merge needs at least two models (--models A B [C ...])")
    if len(set(models)) != len(models):
        raise InvalidInput("a model is named twice in --models")
    base = common_base(store, models)
    probes = None if structural_only else task_probes(store, task)
    pairs = [(a, b) for a in models for b in models if a != b]
    paths = {m: store.model(m)["path"] for m in models}
    # Every pair from one read (and one forward pass) per model, not three per pair.
    by_pair = catalog_features(store, models, probes, structural_only=structural_only, device=device,
                               progress=progress)
    contexts = [by_pair[pair].features for pair in pairs]
    inputs = [(base["path"], [paths[a], paths[b]]) for a, b in pairs]
    return contexts, pairs, inputs


def merge_event(store, event_id: int | str, out_dir: str, *, device: str = "auto", progress: bool | None = None,
                kept=None, **engine_options: Any):
    """Run the merge that event EVENT_ID proposed (its recipe, as logged) into out_dir; `kept`:
    that merge already done in memory by a trial (merging.engine.InMemoryMerge), written as is."""
    from merging.engine import run_merge
    from merging.recipe import Recipe

    event_id = parse_event_id(event_id)
    event = store.event(event_id)
    if event is None:
        raise NotFound(f"no event {event_id}")
    if event["model_a"] is None or "models" not in (event["recipe"] or {}):
        raise InvalidInput(f"event {event_id} was proposed without models (a context-only proposal): nothing to merge")
    # The model card of the output names the proposal that chose this merge.
    provenance = {"event_id": event_id, "policy": event.get("policy"), "arm": event.get("arm"),
                  "predicted_reward": event.get("predicted")}
    provenance = {k: v for k, v in provenance.items() if v is not None}
    if kept is not None and not engine_options:
        return kept.save(out_dir, provenance=provenance)
    return run_merge(Recipe.from_dict(event["recipe"]), out_dir, device=device, progress=progress,
                     provenance=provenance, **engine_options)
