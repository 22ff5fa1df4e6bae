"""Replay on outcome tables, off-policy estimators on decision logs, export, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bandit.offline.decision_log import LoggedDecision, read_decision_log
from bandit.errors import BanditError
from bandit.offline.ope import evaluate_logged
from bandit.offline.outcomes import OutcomeTable, read_outcomes, synthetic_outcomes, write_outcomes
from bandit.policies.registry import POLICIES
from bandit.policies.base import Decision, Policy
from bandit.offline.replay import AddArm, NewTask, arrival_order, gap_closure, interval, replay, summarize
from cli import main


@pytest.fixture(scope="module")
def table() -> OutcomeTable:
    return synthetic_outcomes(1000, seed=0)


@pytest.fixture(scope="module")
def small() -> OutcomeTable:
    return synthetic_outcomes(200, seed=5)


class Oracle(Policy):
    """Knows the table: picks each row's best arm (test-only, to pin gap closure = 1)."""

    name = "oracle"

    def __init__(self, table: OutcomeTable):
        super().__init__()
        self.best = {tuple(row): table.arms[int(np.argmax(r))] for row, r in zip(table.X, table.R)}
        self.features = table.features

    def add_arm(self, arm, warm_start_from=None, shrink=0.1):
        self.specs[arm.name] = arm

    def learn_one(self, arm, context, reward):
        pass

    def scores(self, actions):
        return np.zeros(len(actions)), np.zeros(len(actions))

    def decide(self, actions, rng):
        best = self.best[tuple(actions[0].context[f] for f in self.features)]
        pmf = np.array([1.0 if a.arm == best else 0.0 for a in actions])
        return Decision(pmf, int(np.argmax(pmf)), *self.scores(actions))

    def params(self):
        return {}


# -- replay on outcome tables ------------------------------------------------------------
def test_gap_closure_is_one_for_the_oracle_and_zero_for_the_best_fixed_arm(table, monkeypatch):
    monkeypatch.setitem(POLICIES, "oracle", lambda params: Oracle(table))
    best = table.arms[table.best_fixed_arm()]
    results = replay(table, ["oracle", f"fixed:{best}"], seeds=2)
    rep = summarize(table, results)
    oracle, fixed = rep["policies"]
    for key in ("gap_closure", "gap_closure_last_half"):
        assert oracle[key]["mean"] == pytest.approx(1.0, abs=1e-12)
        assert fixed[key]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert oracle["regret"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert fixed["mean_reward"]["mean"] == pytest.approx(table.R[:, table.best_fixed_arm()].mean())
    assert rep["best_fixed_arm"] == best


def test_linucb_and_hybrid_close_most_of_the_gap(table):
    """The issue's target: ≥ 70 % of the gap over the last half, on a table whose best arm
    depends on the context."""
    assert len(set(table.best_arm_per_row())) >= 4
    rep = summarize(table, replay(table, ["linucb", "hybrid"], seeds=3))
    for p in rep["policies"]:
        assert p["gap_closure_last_half"]["mean"] >= 0.7, p["policy"]
        assert p["gap_closure"]["mean"] < p["gap_closure_last_half"]["mean"]  # it learns


def test_replay_is_reproducible_and_parallel_matches_serial(small):
    a = summarize(small, replay(small, ["lints", "egreedy"], seeds=2))
    b = summarize(small, replay(small, ["lints", "egreedy"], seeds=2, jobs=2))
    assert a == b


def test_arrival_orders_and_scenarios(small):
    o = arrival_order(small, 3)
    assert sorted(o) == list(range(len(small))) and not np.array_equal(o, arrival_order(small, 4))
    task = small.tasks[0]
    o = arrival_order(small, 3, NewTask(50, task))
    assert all(small.tasks[r] != task for r in o[:50]) and sorted(o) == list(range(len(small)))

    arm = small.arms[2]
    res = replay(small, ["linucb"], seeds=3, add_arm=AddArm(60, arm))
    for run in res[0].runs:
        assert (run.chosen[:60] != 2).all()
        assert (run.chosen[60:] == 2).any()
        # before the arm exists the oracle is over the other arms only
        others = np.delete(small.R[run.rows[:60]], 2, axis=1).max(axis=1)
        np.testing.assert_array_equal(run.oracle[:60], others)
    rep = summarize(small, res, add_arm=AddArm(60, arm))["policies"][0]["add_arm"]
    assert rep["arm"] == arm and 0 <= rep["fair_rate"]["mean"] <= 1
    assert rep["regret_per_round_after"]["mean"] is not None

    res = replay(small, ["linucb"], seeds=2, new_task=NewTask(80, task))
    nt = summarize(small, res, new_task=NewTask(80, task))["policies"][0]["new_task"]
    assert nt["first_rows"] == min(20, sum(t == task for t in small.tasks) // 2)
    per_seed = []
    for run in res[0].runs:
        regret = run.oracle - run.reward
        first = [i for i, r in enumerate(run.rows) if small.tasks[r] == task][: nt["first_rows"]]
        per_seed.append(regret[first].mean())
    assert np.mean(per_seed) == pytest.approx(nt["regret_per_round_first_rows"]["mean"])

    with pytest.raises(BanditError):
        replay(small, ["linucb"], seeds=1, add_arm=AddArm(10, "nope"))
    with pytest.raises(BanditError):
        replay(small, ["linucb"], seeds=1, new_task=NewTask(10, "nope"))
    with pytest.raises(BanditError):
        replay(small, ["linucb:alpha=x"], seeds=1)
    with pytest.raises(BanditError, match="no reward column"):
        replay(small, ["fixed:nope"], seeds=1)


def test_interval_and_gap_closure_by_hand():
    iv = interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653/√3
    assert iv["mean"] == 2.0 and iv["high"] - 2.0 == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert interval([0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    assert gap_closure(np.array([0.6]), np.array([0.5]), np.array([0.9])) == pytest.approx(0.25)
    assert np.isnan(gap_closure(np.array([0.6]), np.array([0.5]), np.array([0.5])))


def test_outcome_tables_round_trip_and_errors(tmp_path, small):
    for name in ("o.csv", "o.jsonl"):
        write_outcomes(small, tmp_path / name)
        back = read_outcomes(tmp_path / name)
        assert back.arms == small.arms and back.features == small.features and back.tasks == small.tasks
        np.testing.assert_array_equal(back.R, small.R)
        np.testing.assert_array_equal(back.X, small.X)
    (tmp_path / "bad.csv").write_text("task,f:x,r:a\nt,0.1,0.5\nt,zero,0.4\n")
    with pytest.raises(BanditError, match="row 2 f:x"):
        read_outcomes(tmp_path / "bad.csv")
    (tmp_path / "noarm.csv").write_text("task,f:x\nt,0.1\n")
    with pytest.raises(BanditError, match="no reward columns"):
        read_outcomes(tmp_path / "noarm.csv")
    (tmp_path / "gap.jsonl").write_text('{"task": "t", "r:a": 1}\n{"task": "t"}\n')
    with pytest.raises(BanditError, match="missing r:a"):
        read_outcomes(tmp_path / "gap.jsonl")
    with pytest.raises(BanditError, match="no such file"):
        read_outcomes(tmp_path / "none.csv")


def test_synthetic_table_knows_its_best_arm():
    t = synthetic_outcomes(300, seed=1, noise=0.0)
    np.testing.assert_array_equal(t.best_arm_per_row(), np.argmax(t.R, axis=1))
    assert np.abs(t.X).max() <= 1.0
    assert len(set(t.best_arm_per_row())) > 1  # the best arm depends on the context


# -- off-policy estimators --------------------------------------------------------------
def _d(i, pmf, chosen, reward, ctx=None):
    return LoggedDecision(i, "t", [ctx or {}], [{"arm": "A", "candidate": 0}, {"arm": "B", "candidate": 0}],
                          pmf, chosen, reward)


def test_estimators_by_hand_on_a_tiny_log():
    log = [_d(1, [0.5, 0.5], 0, 1.0), _d(2, [0.8, 0.2], 1, 0.0), _d(3, [0.5, 0.5], 1, 1.0),
           _d(4, [0.2, 0.8], 0, 0.5)]
    rep = evaluate_logged(log, "fixed:A", bootstrap=50)["estimators"]
    # weights π(a)/p: 2, 0, 0, 5
    assert rep["ips"]["value"] == pytest.approx((2 * 1.0 + 5 * 0.5) / 4)  # 1.125
    assert rep["snips"]["value"] == pytest.approx((2 * 1.0 + 5 * 0.5) / 7)
    # DR, folds {1, 3} and {2, 4}, bias-only ridge (λ = 1) on rewards minus the training mean:
    # events 1, 3 use r̂_A = 0.25 + 0.25/2 = 0.375; events 2, 4 use r̂ = 1 for both arms.
    terms = [0.375 + 2 * (1.0 - 0.375), 1.0, 0.375, 1.0 + 5 * (0.5 - 1.0)]
    assert rep["dr"]["value"] == pytest.approx(sum(terms) / 4)  # 0.375
    assert rep["replay"]["logging"] == "rejection sampling"

    uniform = [_d(1, [0.5, 0.5], 0, 1.0), _d(2, [0.5, 0.5], 1, 0.0), _d(3, [0.5, 0.5], 0, 0.2)]
    rep = evaluate_logged(uniform, "fixed:A", bootstrap=50)["estimators"]["replay"]
    assert rep["logging"] == "uniform" and rep["matched"] == 2 and rep["value"] == pytest.approx(0.6)

    with pytest.raises(BanditError, match="at least 2"):
        evaluate_logged(uniform[:1], "fixed:A")
    with pytest.raises(BanditError, match="never offered"):
        evaluate_logged(uniform, "fixed:C")


def _synthetic_log(t: OutcomeTable, skewed: bool, seed: int) -> list[LoggedDecision]:
    rng = np.random.default_rng(seed)
    K = len(t.arms)
    ctxs = t.contexts()
    out = []
    for i in range(len(t)):
        pmf = np.full(K, 1.0 / K)
        if skewed:  # a context-dependent logging policy
            pmf = np.full(K, 0.3 / K)
            pmf[int(ctxs[i]["s0"] > 0) + 2 * int(ctxs[i]["s1"] > 0)] += 0.7
        a = int(rng.choice(K, p=pmf))
        out.append(LoggedDecision(i + 1, t.tasks[i], [ctxs[i]], [{"arm": arm, "candidate": 0} for arm in t.arms],
                                  list(pmf), a, float(t.R[i, a])))
    return out


@pytest.mark.parametrize("skewed", [False, True])
def test_ips_snips_dr_are_unbiased_on_synthetic_logs(skewed):
    """Over 20 independent logs of the same rows, each estimator averages to the target's
    true value on those rows (Σ_a π(a|x) r(x, a), known from the full table), and its 95 %
    bootstrap interval covers that value in most logs."""
    t = synthetic_outcomes(600, seed=3)
    k = t.arms.index("ties")
    K = len(t.arms)
    targets = {
        "fixed:ties": t.R[:, k].mean(),
        # stochastic target: ties with probability 0.5 + 0.5/K, every other arm 0.5/K
        "fixed:ties,epsilon=0.5": (0.5 * t.R[:, k] + 0.5 * t.R.mean(axis=1)).mean(),
    }
    names = ["ips", "snips", "dr"] + (["replay"] if not skewed else [])
    for target, truth in targets.items():
        values = {n: [] for n in names}
        covered = {n: 0 for n in names}
        for log_seed in range(20):
            rep = evaluate_logged(_synthetic_log(t, skewed, log_seed), target, bootstrap=200)["estimators"]
            for n in names:
                values[n].append(rep[n]["value"])
                covered[n] += rep[n]["low"] <= truth <= rep[n]["high"]
        for n in names:
            v = np.array(values[n])
            assert abs(v.mean() - truth) < 3 * v.std(ddof=1) / np.sqrt(len(v)) + 1e-3, (target, n, truth, v.mean())
            assert covered[n] >= 15, (target, n, covered[n])
        # the reward model takes out most of the variance of IPS
        assert np.std(values["dr"]) < np.std(values["ips"])


# -- the CLI ----------------------------------------------------------------------------
def test_cli_replay_on_a_small_table(tmp_path, small):
    path = tmp_path / "o.csv"
    write_outcomes(small, path)
    best = small.arms[small.best_fixed_arm()]
    runner = CliRunner()
    png = tmp_path / "r.png"
    res = runner.invoke(main, ["replay", "--outcomes", str(path), "--policy", f"fixed:{best}", "--policy", "random",
                               "--policy", "linucb", "--seeds", "3", "--json", "--plot", str(png),
                               "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    fixed, rnd, lin = rep["policies"]
    assert fixed["policy"] == f"fixed:{best}" and fixed["gap_closure"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert fixed["mean_reward"]["mean"] == pytest.approx(small.R[:, small.best_fixed_arm()].mean())
    regret = (small.R.max(axis=1) - small.R[:, small.best_fixed_arm()]).sum()
    assert fixed["regret"]["mean"] == pytest.approx(regret)
    assert rnd["mean_reward"]["low"] <= small.R.mean() + 0.02 and rnd["mean_reward"]["mean"] < lin["mean_reward"]["mean"]
    assert set(lin) >= {"mean_reward", "regret", "gap_closure", "gap_closure_last_half"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "none.db").exists()  # replay on a table creates no database

    res = runner.invoke(main, ["replay", "--outcomes", str(path), "--policy", "linucb", "--seeds", "2",
                               "--add-arm-at", f"50:{small.arms[1]}", "--new-task-at", f"40:{small.tasks[0]}",
                               "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 0, res.output
    assert "gap closure" in res.output and f"arm {small.arms[1]} joins after round 50" in res.output
    assert f"task {small.tasks[0]} starts at round 40" in res.output


@pytest.mark.parametrize("args, message", [
    (["replay"], "exactly one of"),
    (["replay", "--outcomes", "missing.csv"], "no such file"),
    (["replay", "--outcomes", "o.csv", "--policy", "nope"], "unknown policy"),
    (["replay", "--outcomes", "o.csv", "--add-arm-at", "x:ties"], "ROUND:NAME"),
    (["replay", "--logged", "--db", "none.db"], "no such database"),
])
def test_cli_replay_errors_are_one_line(tmp_path, small, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_outcomes(small, tmp_path / "o.csv")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert message in res.output and res.output.count("\n") == 1


def test_cli_policy_export_and_logged_replay(tmp_path):
    from bandit.service import Service

    db = str(tmp_path / "b.db")
    runner = CliRunner()
    res = runner.invoke(main, ["policy", "set", "random", "--db", db])
    assert res.exit_code == 0 and "live policy: random" in res.output
    res = runner.invoke(main, ["policy", "set", "linucb", "beta=2", "--db", db])
    assert res.exit_code == 1 and "no parameter 'beta'" in res.output
    res = runner.invoke(main, ["policy", "show", "--db", db, "--json"])
    assert json.loads(res.output)["name"] == "random"  # the failed set changed nothing

    svc = Service(db)
    rng = np.random.default_rng(0)
    for i in range(60):
        p = svc.propose("t", {"a": float(rng.uniform(-1, 1))}, seed=i)
        if i % 6:  # leave some unrewarded
            svc.reward(p.event_id, 0.8 if p.arm == "ties" else 0.3)
    out = tmp_path / "log.jsonl"
    res = runner.invoke(main, ["export", "--format", "jsonl", "-o", str(out), "--db", db])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 60 and lines[0]["event_id"] == 1
    assert set(lines[0]) >= {"event_id", "contexts", "actions", "chosen", "probability", "reward"}
    assert lines[0]["reward"] is None and lines[1]["reward"] in (0.8, 0.3)
    assert lines[1]["probability"] == lines[1]["actions"][lines[1]["chosen"]]["p"] == pytest.approx(1 / 8)
    assert len(read_decision_log(out)) == 60

    from_db = runner.invoke(main, ["replay", "--logged", "--policy", "fixed:ties", "--db", db, "--json",
                                   "--bootstrap", "200"])
    from_file = runner.invoke(main, ["replay", "--logged", str(out), "--policy", "fixed:ties", "--json",
                                     "--bootstrap", "200"])
    assert from_db.exit_code == 0 and from_file.exit_code == 0, from_db.output + from_file.output
    a, b = json.loads(from_db.output)["targets"][0], json.loads(from_file.output)["targets"][0]
    assert a["estimators"] == b["estimators"] and a["rewarded"] == 50
    # uniform logging, target "always ties": replay, IPS, SNIPS all hit 0.8 exactly
    assert a["estimators"]["replay"]["value"] == pytest.approx(0.8)
    assert a["estimators"]["snips"]["value"] == pytest.approx(0.8)
    text = runner.invoke(main, ["replay", "--logged", str(out), "--policy", "fixed:ties", "--bootstrap", "50"])
    assert "snips" in text.output and "uniform" in text.output
