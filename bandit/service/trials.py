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
               cache_dir: str | None = None, seed: int = 0) -> TrialReport:
    """Trial every selected (candidate, arm); `arms` maps arm name -> (operator, params)."""
    from features.errors import FeatureError
    from features.trial import ActionCache, TrialRunner, action_key, checkpoint_fingerprint

    started = time.perf_counter()
    report = TrialReport([{} for _ in pairs])
    cache = ActionCache(cache_dir)
    try:
        fingerprints = {m: checkpoint_fingerprint(p) for m, p in paths.items()}
        base_fp = checkpoint_fingerprint(base)
        for c, (a, b) in enumerate(pairs):
            wanted = [arm for arm in arms if (c, arm) in selected]
            if not wanted:
                continue
            pa, pb = probes_of(a), probes_of(b)
            runner = None
            for arm in wanted:
                operator, params = arms[arm]
                key = action_key((base_fp, fingerprints[a], fingerprints[b]), operator, params, pa, pb, seed=seed)
                cached = cache.get(key)
                # A kept merge is wanted only for --merge-to; then the cache cannot supply it.
                if cached is not None and not keep:
                    report.features[c][arm] = cached
                    report.cached += 1
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
    from bandit.service.context import task_probes

    policy = live.current()
    arms = [a for a in policy.arm_names if a in live.active]
    keys = [(c, arm) for c in range(len(pairs)) for arm in arms]
    scores = None
    if budget is not None and budget < len(keys):
        means, bonuses = policy.scores([Action(arm, contexts[c], c) for c, arm in keys])
        scores = (means + bonuses).tolist()
    selected = select_actions(scores or [0.0] * len(keys), keys, budget)
    task_texts = task_probes(store, task)
    own = {m: store.model_probes(m) for m in {x for p in pairs for x in p}}

    def probes_of(model: str) -> list[str]:
        texts = own.get(model) or task_texts
        if not texts:
            raise BanditError(f"trial merges need probe texts: register {model} with --probes, "
                              f"or give task {task!r} probes (bandit tasks add {task} --probes FILE)")
        return texts

    base_path = inputs[0][0]
    paths = {m: path for (a, b), (_, (pa, pb)) in zip(pairs, inputs) for m, path in ((a, pa), (b, pb))}
    specs = {arm: (policy.specs[arm].operator, dict(policy.specs[arm].params)) for arm in arms}
    report = run_trials(base_path, pairs, paths, probes_of, specs, selected, device=device, keep=keep,
                        cache_dir=cache_dir)
    report.budget = budget
    return report
