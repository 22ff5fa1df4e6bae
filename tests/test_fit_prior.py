"""`bandit fit`: a prior from an outcome table in the live posteriors, exact under rebuild."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bandit.service import Service
from bandit.service.reward import RIDGE
from cli import main

# two tasks that agree: ties is 0.2 above linear, the other default arms have no column
TABLE = "task,r:linear,r:ties\na,0.4,0.6\na,0.6,0.8\nb,0.2,0.4\nb,0.4,0.6\n"


def run(*args):
    return CliRunner().invoke(main, list(args))


def live(db):
    svc = Service(db)
    out = {r["arm"]: (np.frombuffer(r["A"], "<f8").copy(), np.frombuffer(r["b"], "<f8").copy())
           for r in svc.store.posteriors(RIDGE)}
    svc.store.close()
    return out


@pytest.fixture()
def table(tmp_path):
    p = tmp_path / "prior.csv"
    p.write_text(TABLE)
    return str(p)


def test_fit_loads_the_prior_and_rebuild_stays_exact(tmp_path, table):
    db = str(tmp_path / "b.db")
    assert run("policy", "set", "linucb", "--db", db).exit_code == 0  # a per-arm ridge policy uses the prior live
    res = run("fit", "--outcomes", table, "--db", db, "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    # level 0.5 (no live rewards yet), offsets ∓0.1; the tasks agree (τ² = 0) → the cap, 2
    assert rec["prior"]["level"] == pytest.approx(0.5) and rec["prior"]["strength"] == 2.0
    assert rec["applied"] == {"linear": [2.0, pytest.approx(2 * 0.4)], "ties": [2.0, pytest.approx(2 * 0.6)]}
    assert "slerp" in rec["arms_without_column"]
    post = live(db)
    assert post["ties"][0][0] == 1.0 + 2.0 and post["ties"][1][0] == pytest.approx(1.2)
    assert post["slerp"][0][0] == 1.0 and post["slerp"][1][0] == 0.0

    # the live policy sees it: posterior means m·p/(λ + m), widths 1/√(λ + m) at the empty context
    from bandit.policies.base import Action

    svc = Service(db)
    means, bonuses = svc.policy().scores([Action("ties", {}), Action("linear", {}), Action("slerp", {})])
    svc.store.close()
    np.testing.assert_allclose(means, [1.2 / 3, 0.8 / 3, 0.0])
    np.testing.assert_allclose(bonuses, [3 ** -0.5, 3 ** -0.5, 1.0])
    run("propose", "-t", "x", "--context-json", "{}", "--seed", "1", "--db", db)
    for i, r in enumerate((0.3, 0.9, 0.5), start=1):
        if i > 1:
            run("propose", "-t", "x", "--context-json", '{"s": 0.5}', "--db", db)
        assert run("reward", str(i), str(r), "--db", db).exit_code == 0
    check = run("rebuild", "--check", "--db", db, "--json")
    assert check.exit_code == 0, check.output
    assert json.loads(check.output)["mismatched"] == []


def test_second_fit_needs_replace_and_clear_restores_no_prior(tmp_path, table):
    db, plain = str(tmp_path / "b.db"), str(tmp_path / "plain.db")
    for d in (db, plain):
        run("propose", "-t", "x", "--context-json", '{"s": 0.5}', "--seed", "3", "--db", d)
        run("policy", "set", "linucb", "epsilon=0.05", "--db", d)
    assert run("fit", "--outcomes", table, "--db", db).exit_code == 0
    before = live(db)
    again = run("fit", "--outcomes", table, "--db", db)
    assert again.exit_code == 1 and "--replace" in again.output
    after = live(db)
    assert all(np.array_equal(before[a][0], after[a][0]) for a in before)
    res = run("fit", "--outcomes", table, "--strength", "1", "--replace", "--db", db, "--json")
    assert json.loads(res.output)["prior"]["strength"] == 1.0
    assert live(db)["ties"][0][0] == pytest.approx(2.0)
    for d in (db, plain):
        assert run("reward", "1", "0.7", "--db", d).exit_code == 0
    assert run("fit", "--clear", "--db", db).exit_code == 0
    cleared, reference = live(db), live(plain)
    for arm in reference:
        np.testing.assert_allclose(cleared[arm][0], reference[arm][0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cleared[arm][1], reference[arm][1], rtol=0, atol=1e-12)
    assert json.loads(run("rebuild", "--check", "--db", db, "--json").output)["mismatched"] == []


@pytest.mark.parametrize("args, message", [
    (["fit"], "give either --outcomes TABLE (or --zoo) or --clear"),
    (["fit", "--zoo", "--outcomes", "x.csv"], "give either --outcomes TABLE or --zoo"),
    (["fit", "--clear", "--strength", "1"], "--strength and --replace go with --outcomes"),
    (["fit", "--outcomes", "/nonexistent.csv"], "no such file"),
])
def test_fit_errors(tmp_path, args, message):
    res = run(*args, "--db", str(tmp_path / "b.db"))
    assert res.exit_code != 0 and message in res.output


def test_with_a_reward_per_arm_the_prior_is_centred_on_the_live_mean(tmp_path, table):
    db = str(tmp_path / "b.db")
    n_arms = 8
    for i in range(1, n_arms + 1):
        run("propose", "-t", "x", "--context-json", '{"s": 0.5}', "--seed", str(i), "--db", db)
        assert run("reward", str(i), "0.2" if i % 2 else "0.3", "--db", db).exit_code == 0
    rec = json.loads(run("fit", "--outcomes", table, "--db", db, "--json").output)
    assert rec["prior"]["level"] == pytest.approx(0.25)  # the live mean, not the table's 0.5
    assert rec["applied"]["ties"] == [2.0, pytest.approx(2 * 0.35)]
    assert json.loads(run("rebuild", "--check", "--db", db, "--json").output)["mismatched"] == []


def test_the_zoo_table_ships_as_a_prior_for_the_default_arms(tmp_path):
    from bandit.arms import DEFAULT_ARMS
    from bandit.offline.outcomes import read_outcomes
    from zoo.outcomes import PRIOR_TABLE

    shipped = read_outcomes(PRIOR_TABLE)
    rec = json.loads(run("fit", "--zoo", "--db", str(tmp_path / "b.db"), "--json").output)
    assert sorted(rec["applied"]) == sorted(name for name, _, _ in DEFAULT_ARMS)
    assert rec["prior"]["level"] == pytest.approx(shipped.R.mean())
    worst = min(rec["prior"]["offsets"], key=rec["prior"]["offsets"].get)
    assert worst == shipped.arms[int(np.argmin(shipped.R.mean(axis=0)))]


def test_an_arm_added_after_the_fit_starts_from_the_prior(tmp_path):
    db = str(tmp_path / "b.db")
    table = tmp_path / "t.csv"
    # a table with a column for an arm the database does not have yet
    table.write_text("task,r:linear,r:ties_dense\na,0.4,0.7\nb,0.2,0.5\n")
    rec = json.loads(run("fit", "--outcomes", str(table), "--db", db, "--json").output)
    assert sorted(rec["applied"]) == ["linear"]
    assert run("arms", "add", "ties_dense", "-o", "ties", "-p", "density=0.9", "--db", db).exit_code == 0
    assert run("arms", "add", "other", "-o", "ties", "-p", "density=0.3", "--db", db).exit_code == 0
    post = live(db)
    m = rec["prior"]["strength"]
    assert post["ties_dense"][0][0] == pytest.approx(1.0 + m)
    assert post["ties_dense"][1][0] == pytest.approx(m * (0.45 + 0.15))
    assert post["other"][0][0] == 1.0 and post["other"][1][0] == 0.0
    run("propose", "-t", "x", "--context-json", '{"s": 0.5}', "--seed", "2", "--db", db)
    assert run("reward", "1", "0.6", "--db", db).exit_code == 0
    assert json.loads(run("rebuild", "--check", "--db", db, "--json").output)["mismatched"] == []
    assert json.loads(run("fit", "--clear", "--db", db, "--json").output)["cleared"]["applied"]["ties_dense"][0] == m
    from store import Store

    with Store(db) as st:  # its starting statistics are λI again
        assert np.frombuffer(st.arm("ties_dense")["prior_A"], "<f8")[0] == 1.0
        assert np.frombuffer(st.arm("ties_dense")["prior_b"], "<f8")[0] == pytest.approx(0.0, abs=1e-15)


def test_the_default_pooled_policy_uses_the_prior_on_its_intercepts_and_clear_takes_it_back(tmp_path, table):
    """pooled (the default) reads the loaded prior at decision time: the table's arm means
    below its best arm (ties 0, linear −0.2) at the fitted strength 2 (its own
    prior_strength() decides when they count; see test_pooled); the learned sums do not
    change, so rebuild stays exact, and --clear empties it at once."""
    db = str(tmp_path / "b.db")

    def live_prior():
        svc = Service(db)
        try:
            pol = svc.policy()
            assert pol.name == "pooled"
            return dict(pol.intercept_prior), pol.intercept_prior_strength
        finally:
            svc.store.close()

    assert live_prior() == ({}, 0.0)
    res = run("fit", "--outcomes", table, "--db", db)
    assert res.exit_code == 0 and "does not use the prior" not in res.output
    got, strength = live_prior()
    assert set(got) == {"ties", "linear"}
    assert got["ties"] == 0.0 and got["linear"] == pytest.approx(-0.2) and strength == 2.0
    for i, value in enumerate((0.4, 0.6, 0.5), start=1):
        run("propose", "-t", "x", "--context-json", '{"s": 0.5}', "--seed", str(i), "--db", db)
        assert run("reward", str(i), str(value), "--db", db).exit_code == 0
    assert json.loads(run("rebuild", "--check", "--db", db, "--json").output)["mismatched"] == []
    assert run("fit", "--clear", "--db", db).exit_code == 0
    assert live_prior() == ({}, 0.0)
