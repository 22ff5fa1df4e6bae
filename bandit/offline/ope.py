"""Off-policy evaluation of a target policy from a decision log.

Estimators of the target's mean reward, each with a percentile bootstrap interval:
- replay (Li et al. 2011): walk the log in order; where the target picks the logged action
  the event counts (and the target learns from it), otherwise it is skipped. Unbiased when
  logging was uniform. For any other logging policy each event is first kept with
  probability c / p(logged action), c the smallest logged probability in the log, which
  makes the kept events look uniformly logged (rejection sampling), at the price of data.
- IPS: mean of π(a|x)/p(a|x) · r.
- SNIPS: Σ w·r / Σ w, the self-normalised IPS (less variance, small bias).
- DR: Σ_a π(a|x) r̂(x, a) + π(a|x)/p(a|x) · (r − r̂(x, a)), r̂ a per-arm ridge reward
  model cross-fitted (each event's r̂ comes from a model fitted on the other folds, so its
  own reward never leaks into its correction term).

π(·|x) is the target's pmf on the logged actions, taken before it learns from that event;
with `learn` the target then learns from every logged event (progressive validation), so a
learning policy is judged as it would have evolved on this data. The bootstrap resamples
events with these per-event terms fixed: it measures the sampling noise of the log, not the
randomness of the target's own learning.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from bandit.offline.decision_log import LoggedDecision
from bandit.errors import BanditError
from bandit.policies.registry import make_policy, parse_policy_spec, policy_label
from bandit.policies.base import Action, ArmSpec, Policy
from bandit.policies.ridge import Posterior

UNIFORM_TOL = 1e-9


def _actions(d: LoggedDecision) -> list[Action]:
    return [Action(a["arm"], d.context_of(i), a["candidate"], a.get("features") or {})
            for i, a in enumerate(d.actions)]


def _ensure_arms(policy: Policy, d: LoggedDecision, specs: Mapping[str, ArmSpec]) -> None:
    for a in d.actions:
        if a["arm"] not in policy.specs:
            policy.add_arm(specs.get(a["arm"]) or ArmSpec(a["arm"], a["arm"], {}))


def target_pmfs(decisions: Sequence[LoggedDecision], settings: Mapping[str, Any],
                specs: Mapping[str, ArmSpec], seed: int = 0, learn: bool = True) -> list[np.ndarray]:
    """The target's pmf on each logged decision, in log order."""
    policy = make_policy(settings["name"], settings.get("params"))
    rng = np.random.default_rng([seed, 2])
    out = []
    for d in decisions:
        _ensure_arms(policy, d, specs)
        actions = _actions(d)
        out.append(np.asarray(policy.decide(actions, rng).pmf, dtype=np.float64))
        if learn:
            policy.learn_decision(actions, d.chosen, d.reward, d.prob)
    return out


def replay_value(decisions: Sequence[LoggedDecision], settings: Mapping[str, Any],
                 specs: Mapping[str, ArmSpec], seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Rewards of the events the replay method accepts, and how it got them."""
    rng = np.random.default_rng([seed, 3])
    uniform = all(max(d.pmf) - min(d.pmf) <= UNIFORM_TOL for d in decisions)
    c = min(min(d.pmf) for d in decisions)
    if not uniform and c <= 0:
        raise BanditError("the log has actions with probability 0: replay cannot use rejection sampling")
    policy = make_policy(settings["name"], settings.get("params"))
    accepted = []
    kept = 0
    for d in decisions:
        if not uniform and rng.random() >= c / d.prob:
            continue
        kept += 1
        _ensure_arms(policy, d, specs)
        actions = _actions(d)
        decision = policy.decide(actions, rng)
        if decision.chosen == d.chosen:
            accepted.append(d.reward)
            # the kept events are as if logged uniformly, so that is the propensity to learn with
            policy.learn_decision(actions, d.chosen, d.reward, 1.0 / len(actions))
    info = {"logging": "uniform" if uniform else "rejection sampling", "kept": kept, "matched": len(accepted),
            "acceptance_c": None if uniform else c}
    return np.asarray(accepted, dtype=np.float64), info


def _ridge_predictions(decisions: Sequence[LoggedDecision], folds: int, lam: float) -> list[np.ndarray]:
    """Cross-fitted r̂(x, a) for every action of every decision. Folds interleave (event i
    is in fold i mod folds), so each fold spans the whole log period; each arm's model is
    a ridge fit of the reward minus the training folds' mean (an arm with no training data
    predicts that mean rather than 0)."""
    n = len(decisions)
    fold = np.arange(n) % folds
    preds: list[np.ndarray] = [np.empty(0)] * n
    for f in range(folds):
        train = [d for d, g in zip(decisions, fold) if g != f]
        base = float(np.mean([d.reward for d in train])) if train else 0.0
        models: dict[str, Posterior] = {}
        for d in train:
            arm = d.actions[d.chosen]["arm"]
            post = models.get(arm)
            if post is None:
                post = models[arm] = Posterior.prior(lam)
            post.learn(d.context_of(d.chosen), d.reward - base)
        for i in np.flatnonzero(fold == f):
            d = decisions[i]
            p = np.full(len(d.actions), base)
            by_arm: dict[str, list[int]] = {}
            for j, a in enumerate(d.actions):
                by_arm.setdefault(a["arm"], []).append(j)
            for arm, idx in by_arm.items():
                if arm in models:
                    mean, _ = models[arm].mean_and_width([d.context_of(j) for j in idx])
                    p[idx] = base + mean
            preds[i] = p
    return preds


def _percentile(samples: np.ndarray, point: float) -> dict[str, float | None]:
    """Point estimate and 95 % percentile interval; None where undefined (e.g. SNIPS when
    the target never agrees with the log), so JSON output stays valid."""
    if not np.isfinite(point):
        return {"value": None, "low": None, "high": None}
    lo, hi = np.percentile(samples, [2.5, 97.5]) if len(samples) else (point, point)
    return {"value": float(point), "low": float(lo), "high": float(hi)}


def evaluate_logged(
    decisions: Sequence[LoggedDecision], target: str | Mapping[str, Any],
    specs: Mapping[str, ArmSpec] | None = None, seed: int = 0, bootstrap: int = 1000,
    folds: int = 2, lam: float = 1.0, learn: bool = True,
) -> dict[str, Any]:
    """Value of `target` on the rewarded decisions of a log, by replay, IPS, SNIPS and DR."""
    settings = parse_policy_spec(target) if isinstance(target, str) else dict(target)
    make_policy(settings["name"], settings.get("params"))
    logged = [d for d in decisions if d.reward is not None]
    if len(logged) < 2:
        raise BanditError(f"the log holds {len(logged)} rewarded events; off-policy evaluation needs at least 2")
    if bootstrap < 1:
        raise BanditError("--bootstrap must be at least 1")
    if folds < 2 or folds > len(logged):
        raise BanditError(f"folds must be between 2 and the number of rewarded events ({len(logged)})")
    from bandit.offline.replay import arm_specs_for

    names = list(dict.fromkeys(a["arm"] for d in logged for a in d.actions))
    if settings["name"] == "fixed" and settings["params"].get("arm") not in names:
        raise BanditError(f"target fixed: arm {settings['params'].get('arm')!r} was never offered in the log")
    specs = arm_specs_for(names, specs)
    rng = np.random.default_rng([seed, 4])

    pi = target_pmfs(logged, settings, specs, seed, learn)
    r = np.array([d.reward for d in logged])
    p = np.array([d.prob for d in logged])
    w = np.array([pi_i[d.chosen] for pi_i, d in zip(pi, logged)]) / p
    rhat = _ridge_predictions(logged, folds, lam)
    direct = np.array([float(pi_i @ rh) for pi_i, rh in zip(pi, rhat)])
    rhat_chosen = np.array([rh[d.chosen] for rh, d in zip(rhat, logged)])
    ips_terms = w * r
    dr_terms = direct + w * (r - rhat_chosen)

    n = len(logged)
    idx = rng.integers(0, n, size=(bootstrap, n))
    ips_b = ips_terms[idx].mean(axis=1)
    w_sum = w[idx].sum(axis=1)
    snips_b = np.where(w_sum > 0, ips_terms[idx].sum(axis=1) / np.where(w_sum > 0, w_sum, 1.0), np.nan)
    dr_b = dr_terms[idx].mean(axis=1)
    snips = float(ips_terms.sum() / w.sum()) if w.sum() > 0 else float("nan")

    accepted, replay_info = replay_value(logged, settings, specs, seed)
    if len(accepted):
        rep_b = accepted[rng.integers(0, len(accepted), size=(bootstrap, len(accepted)))].mean(axis=1)
        rep = _percentile(rep_b, float(accepted.mean()))
    else:
        rep = {"value": None, "low": None, "high": None}
    rep.update(replay_info)

    return {
        "policy": policy_label(settings), "settings": settings, "events": len(decisions), "rewarded": n,
        "logged_mean_reward": float(r.mean()),
        "estimators": {
            "replay": rep,
            "ips": _percentile(ips_b, float(ips_terms.mean())),
            "snips": _percentile(snips_b[~np.isnan(snips_b)], snips),
            "dr": _percentile(dr_b, float(dr_terms.mean())),
        },
        "bootstrap": bootstrap, "folds": folds, "learn": learn,
        "effective_sample_size": float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0,
    }


DEFAULT_REWARDS = ("keep", "drop")


def treat_default_rewards(decisions: Sequence[LoggedDecision], treatment: str) -> list[LoggedDecision]:
    """`keep` the join window's default rewards (what the live policy learned) or `drop`
    them (they are not measured outcomes): a dropped one leaves its event unrewarded."""
    if treatment not in DEFAULT_REWARDS:
        raise BanditError(f"default rewards: keep or drop, not {treatment!r}")
    if treatment == "keep":
        return list(decisions)
    return [replace(d, reward=None, reward_source=None) if d.reward_source == "default" else d for d in decisions]


def evaluate_log_source(
    targets: Sequence[str], log_file: str | None = None, store=None, seed: int = 0, bootstrap: int = 1000,
    folds: int = 2, learn: bool = True, default_rewards: str = "keep",
) -> dict[str, Any]:
    """Evaluate each target on an exported decision log, or on a database's own events;
    `default_rewards`: keep or drop the rewards the server's join window applied."""
    from bandit.offline.decision_log import decisions_from_events, read_decision_log

    if not targets:
        raise BanditError("name at least one target policy (--policy NAME)")
    if default_rewards not in DEFAULT_REWARDS:
        raise BanditError(f"--default-rewards: keep or drop, not {default_rewards!r}")
    if log_file:
        decisions = read_decision_log(log_file)
        specs: dict[str, ArmSpec] = {}
        source = str(log_file)
    else:
        if store is None:
            raise BanditError("no decision log given and no database to read events from")
        decisions = list(decisions_from_events(store.events()))
        specs = {a["name"]: ArmSpec(a["name"], a["operator"], a["params"]) for a in store.arms()}
        source = str(store.path)
    defaults = sum(1 for d in decisions if d.reward_source == "default")
    expired = sum(1 for d in decisions if d.expired)
    decisions = treat_default_rewards(decisions, default_rewards)
    return {
        "source": source,
        "default_rewards": {"count": defaults, "treatment": "kept" if default_rewards == "keep" else "dropped"},
        "expired": expired,
        "targets": [evaluate_logged(decisions, t, specs, seed, bootstrap, folds, learn=learn) for t in targets],
    }
