"""Outcome tables version 2 (requests with several candidates, action features), replay over
(candidate, arm) with the two fixed-arm baselines, and the intercept-only prior."""
from __future__ import annotations

import numpy as np
import pytest

from bandit.errors import BanditError
from bandit.offline.outcomes import (
    group_pair_orders, read_outcomes, summarize_table, synthetic_outcomes, write_outcomes,
)
from bandit.offline.prior import apply_prior, fit_prior
from bandit.offline.replay import replay, run_once, summarize
from bandit.policies.base import ArmSpec
from bandit.policies.registry import make_policy

# Two requests, two candidates each (both orders), two arms. By hand:
# first-listed candidates: q1 row 0 (x .5, y .2), q2 row 2 (x .3, y .25) → means x .4, y .225
#   → best fixed arm x, mean .4
# best candidate per arm: q1 x .6, y .3; q2 x .3, y .9 → means x .45, y .6 → y, mean .6
# oracle: q1 .6 (x on B+A), q2 .9 (y on D+C) → .75
HAND = """request,task,model_a,model_b,f:s,r:x,r:y,a:x:t,a:y:t
q1,t,A,B,0.1,0.5,0.2,0.6,0.1
q1,t,B,A,-0.1,0.6,0.3,0.8,0.2
q2,u,C,D,0.3,0.3,0.25,0.0,0.5
q2,u,D,C,-0.3,0.2,0.9,0.1,0.9
"""


@pytest.fixture()
def hand(tmp_path):
    p = tmp_path / "hand.csv"
    p.write_text(HAND)
    return read_outcomes(p)


def test_hand_table_requests_oracle_and_both_fixed_baselines(hand):
    assert hand.n_requests == 2
    assert [list(g) for g in hand.request_groups()] == [[0, 1], [2, 3]]
    assert hand.action_features == ["t"]
    assert hand.A[1, 0, 0] == 0.8 and hand.A[3, 1, 0] == 0.9
    np.testing.assert_allclose(hand.first_candidate_rewards(), [[0.5, 0.2], [0.3, 0.25]])
    np.testing.assert_allclose(hand.best_candidate_rewards(), [[0.6, 0.3], [0.3, 0.9]])
    np.testing.assert_allclose(hand.oracle_rewards(), [0.6, 0.9])
    s = summarize_table(hand)
    assert (s.best_fixed_arm, s.best_fixed_arm_best_candidate) == ("x", "y")
    assert s.best_fixed_mean == pytest.approx(0.4)
    assert s.best_fixed_best_candidate_mean == pytest.approx(0.6)
    assert s.oracle_mean == pytest.approx(0.75)
    assert s.wins == {"x": 1, "y": 1}


def test_hand_table_replay_credits_the_chosen_candidate(hand):
    # fixed:y takes arm y on a uniformly drawn candidate: its reward is always one of y's cells
    run = run_once(hand, {"name": "fixed", "params": {"arm": "y"}}, 0, {a: ArmSpec(a, a) for a in hand.arms},
                   passes=50)
    groups = hand.request_groups()
    np.testing.assert_allclose(run.reward, [hand.R[groups[q][c], 1] for q, c in zip(run.rows, run.candidate)])
    np.testing.assert_allclose(run.oracle, [0.6 if q == 0 else 0.9 for q in run.rows])
    np.testing.assert_allclose(run.fixed, [0.5 if q == 0 else 0.3 for q in run.rows])  # x, first-listed
    np.testing.assert_allclose(run.fixed_best_candidate, [0.3 if q == 0 else 0.9 for q in run.rows])  # y, best
    assert set(run.candidate) == {0, 1}  # both orders were taken
    assert len(run.rows) == 100 and sorted(np.bincount(run.rows[:2])) == [1, 1]  # each pass holds each request once


def test_round_trip_keeps_requests_and_action_features(hand, tmp_path):
    for name in ("t.csv", "t.jsonl"):
        write_outcomes(hand, tmp_path / name)
        back = read_outcomes(tmp_path / name)
        assert back.requests == hand.requests and back.action_features == ["t"]
        np.testing.assert_array_equal(back.A, hand.A)
        np.testing.assert_array_equal(back.R, hand.R)


@pytest.mark.parametrize("text, message", [
    ("request,task,r:x,r:y,a:x:t\nq,t,1,2,3\n", r"has no column for arm\(s\) y"),
    ("request,task,r:x,a:z:t\nq,t,1,3\n", "names arm 'z'"),
    ("request,task,r:x,r:y\nq,t,1,2\nq,u,1,2\n", "share its task"),
    ("request,task,r:x,r:y\n,t,1,2\n", "missing request"),
])
def test_bad_v2_tables_are_one_line_errors(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(BanditError, match=message):
        read_outcomes(p)


def test_a_v1_table_is_one_request_per_row_and_grouping_joins_both_orders(tmp_path):
    v1 = synthetic_outcomes(40, seed=3)
    assert v1.requests is None and v1.n_requests == 40
    assert v1.best_fixed_arm() == int(np.argmax(v1.R.mean(axis=0)))
    np.testing.assert_array_equal(v1.oracle_rewards(), v1.R.max(axis=1))
    p = tmp_path / "zoo.csv"
    p.write_text("task,model_a,model_b,f:s,r:x,r:y\nt,A,B,0,1,2\nt,B,A,0,3,4\nt,A,C,0,5,6\n")
    grouped = group_pair_orders(read_outcomes(p))
    assert [list(g) for g in grouped.request_groups()] == [[0, 1], [2]]
    np.testing.assert_allclose(grouped.first_candidate_rewards(), [[1, 2], [5, 6]])


def test_two_candidates_a_policy_learns_the_better_order():
    """Synthetic: the second candidate is the reversed pair (order-dependent features change
    sign), so which order is better is known from the noiseless rewards."""
    t = synthetic_outcomes(150, candidates=2, action_features=1, seed=4, noise=0.02)
    assert t.n_requests == 150 and len(t) == 300
    groups = t.request_groups()
    # action features: the noiseless reward plus small noise
    assert np.corrcoef(t.A[:, :, 0].ravel(), t.expected.ravel())[0, 1] > 0.9
    best_order = np.array([int(np.argmax(t.expected[g].max(axis=1))) for g in groups])
    assert 0 < best_order.mean() < 1  # both orders win somewhere
    res = replay(t, ["linucb", "random"], seeds=3, passes=4)
    rep = summarize(t, res)
    lin, rnd = rep["policies"]
    assert lin["gap_closure_last_half"]["mean"] > 0.5
    assert rnd["gap_closure_last_half"]["mean"] < 0.1
    half = len(res[0].runs[0].rows) // 2
    # for the arm it chose, did it merge the pair in that arm's better order?
    hits = [np.mean([t.expected[groups[q][c], j] >= t.expected[groups[q][1 - c], j]
                     for q, c, j in zip(r.rows[half:], r.candidate[half:], r.chosen[half:])]) for r in res[0].runs]
    assert np.mean(hits) > 0.8  # a uniform choice of order would be 0.5


def test_prior_fit_by_hand_and_applied_to_a_ridge_arm(tmp_path):
    p = tmp_path / "p.csv"
    # two tasks; x beats y by 0.2 in both: between-task variance of the offsets is 0
    p.write_text("task,r:x,r:y\na,0.6,0.4\na,0.8,0.6\nb,0.3,0.1\nb,0.5,0.3\n")
    tab = read_outcomes(p)
    pr = fit_prior(tab)
    assert pr.level == pytest.approx(0.45)
    assert pr.offsets == pytest.approx({"x": 0.1, "y": -0.1})
    # σ² around the arm means: 2 · (.05² + .25² + .25² + .05²) / (8 − 2) = 0.26 / 6; τ² ≤ 0 → the cap
    assert pr.sigma2 == pytest.approx(0.26 / 6)
    assert pr.tau2 == 0.0 and pr.strength == 2.0 and pr.centre == "live"
    pol = make_policy("linucb", {"lambda": 2.0})
    for a in ("x", "y", "z"):
        pol.add_arm(ArmSpec(a, a))
    assert apply_prior(pol, pr, ["x", "y", "z"]) == ["x", "y"]
    assert pol.posteriors["x"].A[0, 0] == 4.0 and pol.posteriors["x"].b[0] == pytest.approx(2 * 0.55)
    assert pol.posteriors["z"].A[0, 0] == 2.0 and pol.posteriors["z"].b[0] == 0.0
    assert pol.posteriors["y"].theta[0] == pytest.approx(2 * 0.35 / 4)


def test_prior_strength_is_weak_when_tasks_disagree(tmp_path):
    p = tmp_path / "p.csv"
    # x is better on task a, y on task b: the offsets do not transfer between tasks
    p.write_text("task,r:x,r:y\na,0.9,0.1\na,0.8,0.2\nb,0.1,0.9\nb,0.2,0.8\n")
    pr = fit_prior(read_outcomes(p))
    # σ² = 2 · (.4² + .3² + .4² + .3²) / 6 = 1/6; task offsets ±.35 → between-task variance
    # .245, minus the sampling noise σ²/2 → τ² = .245 − 1/12; m = σ²/τ² ≈ 1.03, below the cap
    assert pr.sigma2 == pytest.approx(1 / 6)
    assert pr.tau2 == pytest.approx(0.245 - 1 / 12)
    assert pr.strength == pytest.approx((1 / 6) / (0.245 - 1 / 12)) and pr.strength < 2.0
    assert fit_prior(read_outcomes(p), strength=0).strength == 0.0


def test_a_zero_strength_prior_replays_exactly_like_none():
    t = synthetic_outcomes(60, seed=6)
    pr = fit_prior(synthetic_outcomes(60, seed=7), strength=0)
    res = replay(t, ["linucb"], seeds=2, prior=pr)
    assert [r.label for r in res] == ["linucb", "linucb +prior"]
    for a, b in zip(res[0].runs, res[1].runs):
        np.testing.assert_array_equal(a.reward, b.reward)


def test_a_live_centred_prior_is_applied_after_one_reward_per_arm_around_their_mean():
    t = synthetic_outcomes(40, seed=8)
    pr = fit_prior(synthetic_outcomes(40, seed=9))
    k = len(t.arms)
    seen = {}

    import bandit.offline.prior as prior_module

    original = prior_module.apply_prior

    def spy(policy, prior, arms):
        seen["level"], seen["arms"] = prior.level, list(arms)
        return original(policy, prior, arms)

    prior_module.apply_prior = spy
    try:
        run = run_once(t, {"name": "linucb", "params": {}}, 0, {a: ArmSpec(a, a) for a in t.arms}, prior=pr)
    finally:
        prior_module.apply_prior = original
    assert seen["arms"] == t.arms
    assert seen["level"] == pytest.approx(run.reward[:k].mean())


def test_replay_cli_passes_prior_and_grouping(tmp_path):
    import json

    from click.testing import CliRunner

    from cli import main

    table = tmp_path / "hand.csv"
    table.write_text(HAND)
    v1 = tmp_path / "v1.csv"
    v1.write_text("task,model_a,model_b,r:x,r:y\nt,A,B,0.5,0.2\nt,B,A,0.6,0.3\nu,C,D,0.3,0.25\nu,D,C,0.2,0.9\n")
    args = ["replay", "--outcomes", str(table), "-p", "fixed:x", "--seeds", "2", "--passes", "3",
            "--prior", str(v1), "--db", str(tmp_path / "none.db"), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert (rep["requests"], rep["rounds"], rep["passes"]) == (2, 6, 3)
    assert [p["policy"] for p in rep["policies"]] == ["fixed:x", "fixed:x +prior"]
    assert rep["best_fixed_arm_best_candidate"] == "y"
    assert rep["prior"]["offsets"]["x"] == pytest.approx(0.4 - 0.40625)  # x .4, y .4125 on the prior table
    grouped = CliRunner().invoke(main, ["replay", "--outcomes", str(v1), "--group-orders", "-p", "random",
                                        "--seeds", "2", "--db", str(tmp_path / "none.db"), "--json"])
    assert json.loads(grouped.output)["requests"] == 2
    bad = CliRunner().invoke(main, ["replay", "--logged", "x.jsonl", "--passes", "2", "--db", str(tmp_path / "n.db")])
    assert bad.exit_code == 1 and "apply to --outcomes only" in bad.output
    assert not (tmp_path / "none.db").exists()
