"""Trial merges before a decision: action features for the candidate actions of one request.

For every candidate pair and every arm the policy might pick (all of them, or with a budget
the M most promising by the policy's pre-trial scores), the pair is merged in memory and
teacher-forced on each expert's reference continuations (`features.trial`). Experts' probes
are their own when registered with some (`models add --probes`), else the task's. The merges
of the request can be kept, so that writing the chosen one needs no second merge.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bandit.errors import BanditError


@dataclass
class TrialReport:
    """What the trials cost and produced: per candidate `{arm: features}`."""

    features: list[dict[str, dict[str, float]]]
    merges: int = 0
    cached: int = 0               # actions whose features came from the on-disk cache
    seconds: float = 0.0
    reference_cache_hits: int = 0
    budget: int | None = None
    kept: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)  # (candidate, arm) -> InMemoryMerge

    def to_dict(self) -> dict[str, Any]:
        return {"merges": self.merges, "cached": self.cached, "seconds": round(self.seconds, 3), "budget": self.budget,
                "reference_cache_hits": self.reference_cache_hits}


def select_actions(scores: Sequence[float], keys: Sequence[tuple[int, str]], budget: int | None) -> set[tuple[int, str]]:
    """The actions to trial: all, or the `budget` highest pre-trial scores (ties by order)."""
    if budget is None or budget >= len(keys):
        return set(keys)
    if budget < 1:
        raise BanditError(f"--trial-budget must be at least 1, got {budget}")
    ranked = sorted(range(len(keys)), key=lambda i: (-scores[i], i))
    return {keys[i] for i in ranked[:budget]}


def run_trials(base: str, pairs: Sequence[tuple[str, str]], paths: Mapping[str, str],
               probes_of: Callable[[str], list[str]], arms: Mapping[str, tuple[str, dict]],
               selected: set[tuple[int, str]], *, device: str = "auto", keep: bool = False,
               cache_dir: str | None = None, seed: int = 0,
               on_action: Callable[[int, str, bool], None] | None = None,
               fingerprints: dict[str, str] | None = None) -> TrialReport:
    """Trial every selected (candidate, arm); `arms` maps arm name -> (operator, params).
    `on_action(candidate, arm, cached)` is called after each action (a progress bar).
    `fingerprints`: a memo of checkpoint fingerprints by path, filled here as needed, so a
    caller running many pairs samples each checkpoint once, not once per pair."""
    from features.errors import FeatureError
    from features.trial import ActionCache, TrialRunner, action_key, checkpoint_fingerprint

    started = time.perf_counter()
    report = TrialReport([{} for _ in pairs])
    cache = ActionCache(cache_dir)
    try:
        memo = {} if fingerprints is None else fingerprints
        for path in [base, *paths.values()]:
            if path not in memo:
                memo[path] = checkpoint_fingerprint(path)
        base_fp = memo[base]
        for c, (a, b) in enumerate(pairs):
            wanted = [arm for arm in arms if (c, arm) in selected]
            if not wanted:
                continue
            pa, pb = probes_of(a), probes_of(b)
            runner = None
            for arm in wanted:
                operator, params = arms[arm]
                key = action_key((base_fp, memo[paths[a]], memo[paths[b]]), operator, params, pa, pb, seed=seed)
                cached = cache.get(key)
                # A kept merge is wanted only for --merge-to; then the cache cannot supply it.
                if cached is not None and not keep:
                    report.features[c][arm] = cached
                    report.cached += 1
                    if on_action is not None:
                        on_action(c, arm, True)
                    continue
                if runner is None:
                    runner = TrialRunner(base, paths[a], paths[b], pa, pb, device=device, cache_dir=cache_dir,
                                         seed=seed)
                    report.reference_cache_hits += runner.reference_cache_hits
                t0 = time.perf_counter()
                result = runner.trial(operator, params, keep=keep)
                cache.put(key, result.features, time.perf_counter() - t0)
                report.features[c][arm] = result.features
                report.merges += 1
                if keep:
                    report.kept[(c, arm)] = result.merge
                if on_action is not None:
                    on_action(c, arm, False)
    except FeatureError as e:
        raise BanditError(f"trial merges: {e}") from None
    finally:
        cache.save()
    report.seconds = time.perf_counter() - started
    return report


def trial_actions(store, live, task: str, pairs: Sequence[tuple[str, str]], contexts: Sequence[Mapping[str, float]],
                  inputs: Sequence[tuple[str, list[str]]], *, device: str = "auto", budget: int | None = None,
                  keep: bool = False, cache_dir: str | None = None) -> TrialReport:
    """Trial merges for one request: the actions to trial (all, or the budget's best by the
    live policy's pre-trial scores), each expert's probes (its own, else the task's), run."""
    from bandit.policies.base import Action

    policy = live.current()
    arms = [a for a in policy.arm_names if a in live.active]
    keys = [(c, arm) for c in range(len(pairs)) for arm in arms]
    scores = None
    if budget is not None and budget < len(keys):
        means, bonuses = policy.scores([Action(arm, contexts[c], c) for c, arm in keys])
        scores = (means + bonuses).tolist()
    selected = select_actions(scores or [0.0] * len(keys), keys, budget)
    own = {m: expert_probes(store, m, task) for m in {x for p in pairs for x in p}}
    base_path = inputs[0][0]
    paths = {m: path for (a, b), (_, (pa, pb)) in zip(pairs, inputs) for m, path in ((a, pa), (b, pb))}
    specs = {arm: (policy.specs[arm].operator, dict(policy.specs[arm].params)) for arm in arms}
    report = run_trials(base_path, pairs, paths, own.__getitem__, specs, selected, device=device, keep=keep,
                        cache_dir=cache_dir)
    report.budget = budget
    return report


def expert_probes(store, model: str, task: str) -> list[str]:
    """The probes a trial merge scores `model` on: its own (`models add --probes`), else the task's."""
    from bandit.service.context import task_probes

    texts = store.model_probes(model) or task_probes(store, task)
    if not texts:
        raise BanditError(f"trial merges need probe texts: register {model} with --probes, "
                          f"or give task {task!r} probes (bandit tasks add {task} --probes FILE)")
    return texts


class CatalogTrials:
    """Trial features of every arm for ordered pairs of registered models, one pair per call
    (`bandit outcomes --trial-merges`): `trials(a, b)` -> `{arm: {feature: value}}`. The
    actions and the experts' references come from the same on-disk caches as `propose
    --trial-merges`; the counters say how many merges ran and how many came from the cache."""

    def __init__(self, store, base: str, paths: Mapping[str, str], arms: Sequence[Any],
                 task_of: Callable[[str, str], str], *, device: str = "auto", cache_dir: str | None = None,
                 seed: int = 0, on_action: Callable[[str, str, str, bool], None] | None = None):
        self.store, self.base, self.paths, self.task_of = store, base, dict(paths), task_of
        self.specs = {arm.name: (arm.operator, dict(arm.params)) for arm in arms}
        self.device, self.cache_dir, self.seed, self.on_action = device, cache_dir, seed, on_action
        self.merges = self.cached = 0
        self.seconds = 0.0
        self.fingerprints: dict[str, str] = {}  # by path, across the pairs of one table

    def check_probes(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Fail before any merge when an expert has no probes to be scored on."""
        for a, b in pairs:
            task = self.task_of(a, b)
            for model in (a, b):
                expert_probes(self.store, model, task)

    def __call__(self, a: str, b: str) -> dict[str, dict[str, float]]:
        task = self.task_of(a, b)
        probes = {m: expert_probes(self.store, m, task) for m in (a, b)}
        on_action = None if self.on_action is None else (lambda c, arm, cached: self.on_action(a, b, arm, cached))
        report = run_trials(self.base, [(a, b)], {a: self.paths[a], b: self.paths[b]}, probes.__getitem__,
                            self.specs, {(0, arm) for arm in self.specs}, device=self.device,
                            cache_dir=self.cache_dir, seed=self.seed, on_action=on_action,
                            fingerprints=self.fingerprints)
        self.merges += report.merges
        self.cached += report.cached
        self.seconds += report.seconds
        return report.features[0]

    def to_dict(self) -> dict[str, Any]:
        return {"merges": self.merges, "cached": self.cached, "seconds": round(self.seconds, 3)}
