"""Offline replay on a full-information outcome table.

Each policy runs online over the table's requests in a random arrival order (one order per
seed, the same for every policy so they are compared on equal terms). A request offers every
(candidate, arm) action — its candidates are the table rows sharing its request id (both
orders of a pair, several pairs; one row in a version-1 table) — each with its candidate's
context and its own action features (`Action.features`); the policy picks one action and sees
only that reward. With `passes` = k the requests recur k times, each pass in a fresh random
order (issue #10's "×10 recurrence": read the last-half figures). Against that run we measure:
- mean reward;
- cumulative regret vs the per-request oracle: the best (candidate, arm) of the request,
  among the arms that exist at that round;
- gap closure = (policy − best fixed arm) / (oracle − best fixed arm), mean rewards over all
  rounds and over the last half. The best fixed arm is what a user without a bandit would do:
  one arm for every request, applied to the candidate the user listed first (the order they
  asked in), chosen in hindsight as the arm with the best such mean. So 0 means "no better
  than always using that arm on the pair as asked" and 1 means "the oracle". Choosing the
  better order is part of what a bandit can add, so the baseline does not get it for free;
- the same against a stricter baseline, reported beside so nothing is hidden: the best fixed
  arm applied to each request's best candidate in hindsight (`..._vs_best_candidate`).
For a one-candidate table both baselines are the same arm, as before.
Every figure comes with a 95 % interval over seeds (Student t on the per-seed values).

Scenarios: an arm that only joins after some round (`AddArm`), and a task whose rows only
arrive from some round on (`NewTask`), each with its own report.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bandit.arms import DEFAULT_ARMS
from bandit.errors import BanditError
from bandit.offline.outcomes import OutcomeTable
from bandit.policies.registry import make_policy, parse_policy_spec, policy_label
from bandit.policies.base import Action, ArmSpec

FAIR_WINDOW = 50  # rounds in the trailing window that measures a new arm's choice rate
NEW_TASK_FIRST_ROWS = 20  # "first rows" of a new task, when it has at least twice as many


@dataclass(frozen=True)
class AddArm:
    round: int  # the arm joins after this many rounds
    arm: str


@dataclass(frozen=True)
class NewTask:
    round: int  # the task's rows arrive only from this round on (0-based)
    task: str


@dataclass
class Run:
    """One policy over one arrival order of the requests."""

    seed: int
    rows: np.ndarray  # request index per round (the row index, for a one-candidate table)
    chosen: np.ndarray  # arm index (into table.arms) per round
    reward: np.ndarray
    prob: np.ndarray
    oracle: np.ndarray  # best (candidate, arm) reward among the arms that existed that round
    fixed: np.ndarray  # the best fixed arm on the request's first-listed candidate
    fixed_best_candidate: np.ndarray | None = None  # the best such arm on the request's best candidate
    candidate: np.ndarray | None = None  # chosen candidate per round (index within the request)


@dataclass
class PolicyResult:
    label: str
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)


def parse_scenario_arg(text: str, kind: str) -> tuple[int, str]:
    """`ROUND:NAME` with ROUND a whole number ≥ 0."""
    head, sep, name = text.partition(":")
    try:
        rnd = int(head)
    except ValueError:
        rnd = -1
    if not sep or not name or rnd < 0:
        raise BanditError(f"bad {kind} {text!r}: write it as ROUND:NAME with ROUND a whole number >= 0")
    return rnd, name


def arm_specs_for(names: Sequence[str], known: Mapping[str, ArmSpec] | None = None) -> dict[str, ArmSpec]:
    """Operator and params of each arm of a table: from `known` (e.g. the database's arms),
    else the default arm of that name, else an arm whose operator is its own name."""
    defaults = {n: ArmSpec(n, op, p) for n, op, p in DEFAULT_ARMS}
    known = dict(known or {})
    return {n: known.get(n) or defaults.get(n) or ArmSpec(n, n, {}) for n in names}


def arrival_order(table: OutcomeTable, seed: int, new_task: NewTask | None = None, passes: int = 1) -> np.ndarray:
    """A random permutation of the requests; with `new_task`, that task's requests only from
    its round on. With `passes` > 1 the table recurs: each further pass is a fresh random
    permutation of all requests (the new task is new in the first pass only)."""
    rng = np.random.default_rng([seed, 0])
    n = table.n_requests
    if new_task is None:
        first = rng.permutation(n)
    else:
        is_new = np.array([t == new_task.task for t in table.request_tasks()])
        new_rows, old_rows = np.flatnonzero(is_new), np.flatnonzero(~is_new)
        old_rows = rng.permutation(old_rows)
        head = old_rows[: new_task.round]
        tail = rng.permutation(np.concatenate([old_rows[new_task.round:], new_rows]))
        first = np.concatenate([head, tail]).astype(np.intp)
    return np.concatenate([first] + [rng.permutation(n) for _ in range(passes - 1)]).astype(np.intp)


def run_once(
    table: OutcomeTable, settings: Mapping[str, Any], seed: int, specs: Mapping[str, ArmSpec],
    add_arm: AddArm | None = None, new_task: NewTask | None = None,
    contexts: Sequence[Mapping[str, float]] | None = None, passes: int = 1, prior=None,
) -> Run:
    """Drive one policy through one arrival order, revealing only the chosen action's reward.

    Each round is one request: the policy is offered every (candidate, arm) action, each with
    its candidate's context and its own action features, and picks one."""
    order = arrival_order(table, seed, new_task, passes)
    rng = np.random.default_rng([seed, 1])
    policy = make_policy(settings["name"], settings.get("params"))
    contexts = contexts if contexts is not None else table.contexts()
    action_feats = table.action_contexts()
    groups = table.request_groups()
    late = add_arm.arm if add_arm is not None else None
    available = [j for j, a in enumerate(table.arms) if a != late]
    for j in available:
        policy.add_arm(specs[table.arms[j]])
    prior_due = None  # round at which a prior centred on the live mean is applied
    if prior is not None:
        from bandit.offline.prior import apply_prior, centred_on

        if prior.centre == "live" and not getattr(policy, "self_centred", False):
            prior_due = min(len(available), len(order) - 1)
        else:
            apply_prior(policy, prior, [table.arms[j] for j in available])
    names = [table.arms[j] for j in available]
    T = len(order)
    chosen = np.empty(T, dtype=np.intp)
    cand = np.empty(T, dtype=np.intp)
    reward = np.empty(T)
    prob = np.empty(T)
    R = table.R
    BC = table.best_candidate_rewards()  # requests × arms
    FC = table.first_candidate_rewards()
    oracle = np.empty(T)
    for t in range(T):
        if late is not None and t == add_arm.round:
            policy.add_arm(specs[late])
            if prior is not None and (prior_due is None or t > prior_due):
                apply_prior(policy, prior, [late])
            available = list(range(len(table.arms)))
            names = list(table.arms)
        if t == prior_due:
            prior = centred_on(prior, float(reward[:t].mean()))
            apply_prior(policy, prior, names)
        req = order[t]
        rows = groups[req]
        actions = [Action(names[k], contexts[row], c, action_feats[row][available[k]])
                   for c, row in enumerate(rows) for k in range(len(names))]
        decision = policy.decide(actions, rng)
        c, k = divmod(decision.chosen, len(names))
        j = available[k]
        r = float(R[rows[c], j])
        policy.learn_decision(actions, decision.chosen, r, decision.prob)
        chosen[t], cand[t], reward[t], prob[t] = j, c, r, decision.prob
        oracle[t] = BC[req, available].max()
    fixed = FC[order, table.best_fixed_arm()]
    fixed_any = BC[order, table.best_fixed_arm_best_candidate()]
    return Run(seed, order, chosen, reward, prob, oracle, fixed, fixed_any, cand)


def _run_job(args) -> Run:
    return run_once(*args)


def replay(
    table: OutcomeTable, policies: Sequence[str | Mapping[str, Any]], seeds: int = 20,
    add_arm: AddArm | None = None, new_task: NewTask | None = None,
    specs: Mapping[str, ArmSpec] | None = None, jobs: int = 1,
    progress: Callable[[int], None] | None = None, passes: int = 1, prior=None,
) -> list[PolicyResult]:
    """Run every policy over `seeds` arrival orders. Policies are `NAME[:k=v,...]` strings or
    settings dicts. `jobs` > 1 spreads the (policy, seed) runs over processes. `passes` > 1
    lets the requests recur (see `arrival_order`). With a `prior` (`bandit.offline.prior`)
    every policy runs twice, without and with it (labelled `+prior`), on the same orders."""
    if seeds < 1:
        raise BanditError("--seeds must be at least 1")
    if passes < 1:
        raise BanditError("--passes must be at least 1")
    if table.n_requests < 2:
        raise BanditError("the outcome table needs at least two requests")
    if not policies:
        raise BanditError("name at least one policy to replay (--policy NAME)")
    specs = dict(specs or arm_specs_for(table.arms))
    rounds = table.n_requests * passes
    if add_arm is not None:
        if add_arm.arm not in table.arms:
            raise BanditError(f"--add-arm-at: arm {add_arm.arm!r} is not a reward column of the table")
        if len(table.arms) < 2:
            raise BanditError("--add-arm-at needs at least one other arm to start with")
        if add_arm.round >= rounds:
            raise BanditError(f"--add-arm-at: round {add_arm.round} is past the replay's {rounds} rounds")
    if new_task is not None:
        if new_task.task not in table.tasks:
            raise BanditError(f"--new-task-at: task {new_task.task!r} has no rows in the table")
        if all(t == new_task.task for t in table.tasks):
            raise BanditError("--new-task-at: every row belongs to that task; there is nothing to compare with")
    results, priors = [], []
    for p in policies:
        settings = parse_policy_spec(p) if isinstance(p, str) else dict(p)
        make_policy(settings["name"], settings.get("params"))  # fail before any work
        if settings["name"] == "fixed" and settings["params"].get("arm") not in table.arms:
            raise BanditError(f"policy {p!r}: the table has no reward column r:{settings['params'].get('arm')}")
        results.append(PolicyResult(policy_label(settings), settings))
        priors.append(None)
        if prior is not None:
            results.append(PolicyResult(policy_label(settings) + " +prior", settings))
            priors.append(prior)
    jobs_list = [(i, s) for i in range(len(results)) for s in range(seeds)]
    contexts = table.contexts()
    if jobs > 1 and len(jobs_list) > 1:
        args = [(table, results[i].settings, s, specs, add_arm, new_task, None, passes, priors[i]) for i, s in jobs_list]
        with ProcessPoolExecutor(max_workers=min(jobs, os.cpu_count() or 1)) as pool:
            for (i, _), run in zip(jobs_list, pool.map(_run_job, args, chunksize=max(1, len(args) // (4 * jobs)))):
                results[i].runs.append(run)
                if progress:
                    progress(1)
    else:
        for i, s in jobs_list:
            results[i].runs.append(run_once(table, results[i].settings, s, specs, add_arm, new_task, contexts,
                                            passes, priors[i]))
            if progress:
                progress(1)
    return results


# -- summaries ---------------------------------------------------------------------------
def interval(values: Sequence[float], level: float = 0.95) -> dict[str, float | None]:
    """Mean over seeds with a Student-t interval; NaN values (undefined runs) are skipped."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    m = float(v.mean())
    if len(v) == 1:
        return {"mean": m, "low": m, "high": m, "n": 1}
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": m, "low": m - half, "high": m + half, "n": int(len(v))}


def gap_closure(policy: np.ndarray, fixed: np.ndarray, oracle: np.ndarray) -> float:
    """(policy − fixed) / (oracle − fixed) of the mean rewards; NaN when oracle = fixed."""
    gap = float(oracle.mean() - fixed.mean())
    if gap <= 1e-12:
        return float("nan")
    return float(policy.mean() - fixed.mean()) / gap


def run_metrics(run: Run) -> dict[str, float]:
    half = len(run.reward) // 2
    out = {
        "mean_reward": float(run.reward.mean()),
        "regret": float((run.oracle - run.reward).sum()),
        "gap_closure": gap_closure(run.reward, run.fixed, run.oracle),
        "gap_closure_last_half": gap_closure(run.reward[half:], run.fixed[half:], run.oracle[half:]),
    }
    if run.fixed_best_candidate is not None:
        fb = run.fixed_best_candidate
        out["gap_closure_vs_best_candidate"] = gap_closure(run.reward, fb, run.oracle)
        out["gap_closure_vs_best_candidate_last_half"] = gap_closure(run.reward[half:], fb[half:], run.oracle[half:])
    return out


def _first_reach(hits: np.ndarray, rate: float, window: int) -> int | None:
    """Rounds (from 0) until the trailing-`window` share of hits first reaches `rate`."""
    if len(hits) < window:
        return None
    share = np.convolve(hits.astype(np.float64), np.ones(window), "valid") / window
    reached = np.flatnonzero(share >= rate - 1e-12)
    return None if len(reached) == 0 else int(reached[0] + window)


def add_arm_report(table: OutcomeTable, result: PolicyResult, add_arm: AddArm) -> dict[str, Any]:
    """How fast a late arm is taken up, and the regret once it is there.

    Its fair rate is the share of the rows after its arrival on which it is the oracle's
    choice; "rounds to fair rate" counts rounds from its arrival until its share of the
    last FAIR_WINDOW choices first reaches that rate (None when it never does).
    """
    k = table.arms.index(add_arm.arm)
    BC = table.best_candidate_rewards()
    reach, shares, fair, after, before = [], [], [], [], []
    for run in result.runs:
        a = add_arm.round
        rows_after = run.rows[a:]
        rate = float(np.mean(np.argmax(BC[rows_after], axis=1) == k))
        hits = run.chosen[a:] == k
        fair.append(rate)
        shares.append(float(hits.mean()))
        reach.append(_first_reach(hits, rate, FAIR_WINDOW) if rate > 0 else 0)
        after.append(float((run.oracle[a:] - run.reward[a:]).mean()))
        before.append(float((run.oracle[:a] - run.reward[:a]).mean()) if a > 0 else float("nan"))
    reached = [r for r in reach if r is not None]
    return {
        "arm": add_arm.arm, "round": add_arm.round, "fair_rate": interval(fair), "share_after": interval(shares),
        "rounds_to_fair_rate": {"median": float(np.median(reached)) if reached else None,
                                "reached": len(reached), "seeds": len(reach), "window": FAIR_WINDOW},
        "regret_per_round_before": interval(before), "regret_per_round_after": interval(after),
    }


def new_task_report(table: OutcomeTable, result: PolicyResult, new_task: NewTask) -> dict[str, Any]:
    """Per-round regret on the new task's first requests vs the other tasks' requests in the same rounds."""
    is_new = np.array([t == new_task.task for t in table.request_tasks()])
    n_task = int(is_new.sum())
    first = max(1, min(NEW_TASK_FIRST_ROWS, n_task // 2))
    new_first, new_later, others = [], [], []
    for run in result.runs:
        regret = run.oracle - run.reward
        pos = np.flatnonzero(is_new[run.rows])
        span_end = pos[first - 1] + 1
        span = np.arange(new_task.round, span_end)
        other_pos = span[~is_new[run.rows[span]]]
        new_first.append(float(regret[pos[:first]].mean()))
        new_later.append(float(regret[pos[first:]].mean()) if len(pos) > first else float("nan"))
        others.append(float(regret[other_pos].mean()) if len(other_pos) else float("nan"))
    return {
        "task": new_task.task, "round": new_task.round, "first_rows": first,
        "regret_per_round_first_rows": interval(new_first),
        "regret_per_round_later_rows": interval(new_later),
        "regret_per_round_other_tasks_same_rounds": interval(others),
    }


def summarize(
    table: OutcomeTable, results: Sequence[PolicyResult], add_arm: AddArm | None = None,
    new_task: NewTask | None = None,
) -> dict[str, Any]:
    """The replay report as plain data (what `--json` prints)."""
    from bandit.offline.outcomes import summarize_table

    ts = summarize_table(table)
    out: dict[str, Any] = {
        "rows": len(table), "requests": ts.requests, "arms": list(table.arms),
        "seeds": len(results[0].runs) if results else 0,
        "rounds": len(results[0].runs[0].reward) if results and results[0].runs else 0,
        "best_fixed_arm": ts.best_fixed_arm, "best_fixed_mean": ts.best_fixed_mean,
        "best_fixed_arm_best_candidate": ts.best_fixed_arm_best_candidate,
        "best_fixed_best_candidate_mean": ts.best_fixed_best_candidate_mean,
        "oracle_mean": ts.oracle_mean, "policies": [],
    }
    for res in results:
        per_run = [run_metrics(r) for r in res.runs]
        entry: dict[str, Any] = {"policy": res.label, "settings": res.settings}
        for key in per_run[0] if per_run else ():
            entry[key] = interval([m[key] for m in per_run])
        if add_arm is not None:
            entry["add_arm"] = add_arm_report(table, res, add_arm)
        if new_task is not None:
            entry["new_task"] = new_task_report(table, res, new_task)
        out["policies"].append(entry)
    return out


def regret_curves(results: Sequence[PolicyResult]) -> dict[str, dict[str, np.ndarray]]:
    """Per policy: mean cumulative regret per round over seeds, with a 95 % t band."""
    from scipy import stats

    curves = {}
    for res in results:
        C = np.array([np.cumsum(r.oracle - r.reward) for r in res.runs])
        mean = C.mean(axis=0)
        if len(C) > 1:
            half = stats.t.ppf(0.975, len(C) - 1) * C.std(axis=0, ddof=1) / math.sqrt(len(C))
        else:
            half = np.zeros_like(mean)
        curves[res.label] = {"mean": mean, "low": mean - half, "high": mean + half}
    return curves


def plot_regret(results: Sequence[PolicyResult], path: str | os.PathLike, title: str | None = None,
                add_arm: AddArm | None = None, new_task: NewTask | None = None) -> None:
    """Cumulative-regret curves, one per policy, best (lowest) first in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = regret_curves(results)
    order = sorted(curves, key=lambda k: curves[k]["mean"][-1])
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(order):
        c = curves[label]
        x = np.arange(1, len(c["mean"]) + 1)
        ax.plot(x, c["mean"], color=cmap(i % 10), lw=2, label=f"{label}  ({c['mean'][-1]:.1f})")
        ax.fill_between(x, c["low"], c["high"], color=cmap(i % 10), alpha=0.18, lw=0)
    for marker, text in ((add_arm, "arm {} joins"), (new_task, "task {} starts")):
        if marker is not None:
            ax.axvline(marker.round, color="0.3", ls="--", lw=1)
            ax.annotate(text.format(marker.arm if isinstance(marker, AddArm) else marker.task),
                        (marker.round, ax.get_ylim()[1] * 0.95), xytext=(4, 0), textcoords="offset points",
                        fontsize=9, color="0.3")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative regret vs per-row oracle")
    seeds = len(results[0].runs) if results else 0
    ax.set_title(title or f"Replay: cumulative regret (mean of {seeds} seeds, 95 % band)")
    ax.grid(alpha=0.3)
    ax.legend(title="policy (final regret)", loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replay_outcomes(
    path: str | os.PathLike, policies: Sequence[str], seeds: int = 20, add_arm: AddArm | None = None,
    new_task: NewTask | None = None, known_arms: Mapping[str, ArmSpec] | None = None, jobs: int = 1,
    plot: str | os.PathLike | None = None, progress: Callable[[int], None] | None = None,
    passes: int = 1, group_orders: bool = False, prior_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Read an outcome table, replay the policies on it, and return the report (and plot it).
    `group_orders` makes the two orders of each pair of a version-1 table one request;
    `prior_path` fits a prior on that table and replays every policy with and without it."""
    from bandit.offline.outcomes import group_pair_orders, read_outcomes

    table = read_outcomes(path)
    if group_orders:
        table = group_pair_orders(table)
    prior = None
    if prior_path is not None:
        from bandit.offline.prior import prior_from_outcomes

        prior = prior_from_outcomes(prior_path)
    results = replay(table, policies, seeds, add_arm, new_task, arm_specs_for(table.arms, known_arms), jobs,
                     progress, passes, prior)
    report = summarize(table, results, add_arm, new_task)
    report["source"] = str(path)
    report["passes"] = passes
    if prior is not None:
        report["prior"] = prior.to_dict()
    if plot is not None:
        plot_regret(results, plot, add_arm=add_arm, new_task=new_task)
        report["plot"] = str(plot)
    return report
