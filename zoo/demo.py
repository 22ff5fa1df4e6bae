"""`bandit demo`: the whole online loop on the embedded zoo, for real.

Each round draws a merge request (two experts, task = their pair), asks the live policy
to propose (operator, pair order), merges with the engine, evaluates the merge on both
tasks and reports the retained-skill reward. The summary compares the bandit's
cumulative reward with what the outcome table says the best fixed arm, a uniformly random
choice and the per-request oracle would have earned on the same requests.

By default the live policy is `pooled` with trial merges (each candidate action merged in
memory and scored against the experts' own outputs before the decision; the signals come
from the zoo's per-action cache when it has them). The other tier — the same policy without
trial merges — is replayed on the same requests from the outcome table (the rewards a real
merge gets are the table's: same merges, same seed), so both are reported side by side.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.manifest import Zoo
from zoo.outcomes import OutcomeSummary, merge_and_score, pair_task, register_zoo


@dataclass
class Round:
    round: int
    task: str
    model_a: str
    model_b: str
    arm: str
    event_id: int
    reward: float
    running_mean: float
    best_fixed: float  # the best fixed arm's reward on this request (outcome table)
    random: float  # expected reward of a uniformly random (order, arm)
    oracle: float  # best reward any (order, arm) gets on this request


@dataclass
class DemoSummary:
    rounds: int
    interrupted: bool
    bandit: float  # cumulative rewards
    best_fixed: float
    random: float
    oracle: float
    best_fixed_arm: str
    arm_counts: dict[str, int]
    first_half_mean: float
    second_half_mean: float
    plot: str | None = None
    db: str | None = None
    history: list[Round] = field(default_factory=list)
    policy: str = ""
    trial_merges: bool = False
    trial_seconds: float = 0.0    # spent computing trial signals (0 when all came from the cache)
    trial_merges_run: int = 0
    other_tier: float | None = None  # cumulative reward of the other tier, replayed
    other_tier_label: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [asdict(r) for r in self.history]
        return d


def run_demo(
    zoo: Zoo, outcomes: OutcomeSummary, db: str, *, rounds: int = 60, seed: int = 0, device: str = "auto",
    plot: str | None = None, on_round: Callable[[Round], None] | None = None, policy: str | None = "pooled",
    trial_merges: bool = True,
) -> DemoSummary:
    """Run `rounds` real propose → merge → evaluate → reward rounds against the database `db`.

    `policy`: the live policy to set first (None: keep the database's); `trial_merges`:
    propose with trial-merge signals (the zoo's cache supplies the ones it holds)."""
    from bandit.service import Service
    from zoo.trial_features import cache_dir

    svc = Service(db)
    register_zoo(svc, zoo)
    if policy is not None and svc.show_policy().name != policy:
        svc.set_policy(policy)
    policy_name = svc.show_policy().name
    trial_seconds, trial_runs = 0.0, 0
    table = {(r["model_a"], r["model_b"]): r for r in outcomes.table}
    arms = outcomes.arms
    rng = random.Random(seed)
    history: list[Round] = []
    total = 0.0
    interrupted = False
    try:
        for i in range(1, rounds + 1):
            ta, tb = rng.sample(zoo.tasks, 2)
            task = pair_task(ta, tb)
            models = [zoo.expert_name(ta), zoo.expert_name(tb)]
            p = svc.propose_merge(task, models, seed=rng.randrange(2**62), device=device, trial_merges=trial_merges,
                                  trial_cache_dir=str(cache_dir(zoo)))
            if p.trial is not None:
                trial_seconds += p.trial["seconds"]
                trial_runs += p.trial["merges"]
            task_of = {zoo.expert_name(t): t for t in zoo.tasks}
            scored = merge_and_score(zoo, p.operator, p.params, task_of[p.model_a], task_of[p.model_b], device=device)
            svc.reward(p.event_id, scored["reward"])
            total += scored["reward"]
            both = [table[(models[0], models[1])], table[(models[1], models[0])]]
            cells = [r[f"r:{arm}"] for r in both for arm in arms]
            rd = Round(
                round=i, task=task, model_a=p.model_a, model_b=p.model_b, arm=p.arm, event_id=p.event_id,
                reward=scored["reward"], running_mean=total / i,
                # a fixed arm does not choose the order: it meets either order equally often
                best_fixed=sum(r[f"r:{outcomes.best_fixed_arm}"] for r in both) / 2,
                random=sum(cells) / len(cells), oracle=max(cells),
            )
            history.append(rd)
            if on_round is not None:
                on_round(rd)
    except KeyboardInterrupt:
        interrupted = True  # every finished round is in the database already
    finally:
        svc.store.close()
    s = summarize(history, outcomes.best_fixed_arm, interrupted, plot, db)
    s.policy, s.trial_merges, s.trial_seconds, s.trial_merges_run = policy_name, trial_merges, trial_seconds, trial_runs
    if history:
        s.other_tier = replay_tier(history, outcomes, zoo, policy_name, not trial_merges, seed, device)
        s.other_tier_label = f"{policy_name} {'with' if not trial_merges else 'without'} trial merges (replayed)"
    return s


def replay_tier(history: list[Round], outcomes: OutcomeSummary, zoo: Zoo, policy: str, trial_merges: bool,
                seed: int, device: str) -> float:
    """The cumulative reward another tier earns on the demo's requests, from the outcome
    table: both orders of each request's pair are candidates, as in the live loop."""
    import numpy as np

    from bandit.policies.base import Action, ArmSpec
    from bandit.policies.registry import make_policy
    from zoo.trial_features import zoo_trial_features

    table = {(r["model_a"], r["model_b"]): r for r in outcomes.table}
    arms = outcomes.arms
    task_of = {zoo.expert_name(t): t for t in zoo.tasks}
    trials = {}
    if trial_merges:
        pairs = sorted({(task_of[x], task_of[y]) for r in history for x, y in ((r.model_a, r.model_b), (r.model_b, r.model_a))})
        trials = zoo_trial_features(zoo, pairs=pairs, device=device)
    pol = make_policy(policy)
    for arm in arms:
        pol.add_arm(ArmSpec(arm, arm))
    rng = np.random.default_rng([seed, 2])
    total = 0.0
    for r in history:
        rows = [table[(r.model_a, r.model_b)], table[(r.model_b, r.model_a)]]
        acts = []
        for c, row in enumerate(rows):
            ctx = {k[2:]: float(v) for k, v in row.items() if k.startswith("f:")}
            for arm in arms:
                feats = trials.get((task_of[row["model_a"]], task_of[row["model_b"]], arm), {})
                acts.append(Action(arm, ctx, c, feats))
        d = pol.decide(acts, rng)
        a = acts[d.chosen]
        reward = float(rows[a.candidate][f"r:{a.arm}"])
        pol.learn_decision(acts, d.chosen, reward, d.prob)
        total += reward
    return total


def summarize(history: list[Round], best_fixed_arm: str, interrupted: bool, plot: str | None, db: str) -> DemoSummary:
    n = len(history)
    half = n // 2
    counts: dict[str, int] = {}
    for r in history:
        counts[r.arm] = counts.get(r.arm, 0) + 1
    s = DemoSummary(
        rounds=n, interrupted=interrupted,
        bandit=sum(r.reward for r in history), best_fixed=sum(r.best_fixed for r in history),
        random=sum(r.random for r in history), oracle=sum(r.oracle for r in history),
        best_fixed_arm=best_fixed_arm, arm_counts=dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        first_half_mean=sum(r.reward for r in history[:half]) / half if half else 0.0,
        second_half_mean=sum(r.reward for r in history[half:]) / (n - half) if n - half else 0.0,
        db=db, history=history,
    )
    if plot and n:
        s.plot = learning_curve(history, best_fixed_arm, plot)
    return s


def learning_curve(history: list[Round], best_fixed_arm: str, path: str) -> str:
    """Running mean reward per round: bandit vs best fixed arm, random and oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in history]

    def running(values: list[float]) -> list[float]:
        out, acc = [], 0.0
        for i, v in enumerate(values, 1):
            acc += v
            out.append(acc / i)
        return out

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(xs, running([r.oracle for r in history]), color="0.3", ls="--", label="oracle (best arm per request)")
    ax.plot(xs, running([r.reward for r in history]), color="C0", lw=2.2, label="bandit (live policy)")
    ax.plot(xs, running([r.best_fixed for r in history]), color="C2", label=f"best fixed arm ({best_fixed_arm}, hindsight)")
    ax.plot(xs, running([r.random for r in history]), color="C3", ls=":", label="random arm")
    ax.set_xlabel("round")
    ax.set_ylabel("running mean reward (retained skill)")
    ax.set_title("simmerge demo: merging zoo experts")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)
