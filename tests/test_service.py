"""The propose/reward service against known posteriors and the database after it."""

import numpy as np
import pytest

from bandit.errors import BanditError
from bandit.arms import DEFAULT_ARMS
from bandit.policies.ridge import DTYPE
from bandit.service import Service
from store import Store


@pytest.fixture
def svc(tmp_path):
    return Service(str(tmp_path / "b.db"))


def ridge_row(svc, arm):
    row = svc.store.posterior("ridge", arm)
    d = len(row["schema"]) + 1
    return row, np.frombuffer(row["A"], DTYPE).reshape(d, d), np.frombuffer(row["b"], DTYPE)


def test_default_arms_installed_once(svc, tmp_path):
    names = [a.name for a in svc.arms()]
    assert names == [n for n, _, _ in DEFAULT_ARMS]
    Service(str(tmp_path / "b.db"))  # a second open adds nothing
    assert len(Store(tmp_path / "b.db").arms()) == len(DEFAULT_ARMS)


def test_propose_logs_event_with_pmf(svc):
    p = svc.propose("sum", {"kin": 0.3, "kl": 0.1}, seed=5)
    ev = svc.store.event(p.event_id)
    assert ev["task"] == "sum" and ev["arm"] == p.arm and ev["seed"] == 5
    assert len(ev["pmf"]) == len(DEFAULT_ARMS) == len(ev["actions"])
    assert sum(ev["pmf"]) == pytest.approx(1.0)
    assert min(ev["pmf"]) == pytest.approx(0.05 / len(DEFAULT_ARMS))
    assert ev["prob"] == pytest.approx(ev["pmf"][ev["chosen"]])
    assert ev["contexts"] == [{"kin": 0.3, "kl": 0.1}]
    # The default since issue #10's replays: the pooled ridge (tests/test_pooled.py).
    assert ev["policy"] == "pooled" and ev["policy_params"]["alpha"] == 1.0
    assert svc.store.task("sum") is not None  # a new task needs nothing but its first propose


def test_seeded_proposals_reproduce(tmp_path):
    picks = []
    for i in range(2):
        s = Service(str(tmp_path / f"r{i}.db"))
        picks.append([s.propose("t", {"x": 0.1 * k}, seed=k).arm for k in range(20)])
    assert picks[0] == picks[1]
    assert len(set(picks[0])) > 1  # ties among fresh arms go different ways under different seeds


def test_reward_updates_posterior_to_closed_form(svc):
    svc.set_policy("linucb")  # the per-arm ridge posteriors this checks
    rng = np.random.default_rng(0)
    X, r = {}, {}
    for i in range(40):
        ctx = {"a": float(rng.uniform()), "b": float(rng.uniform(-1, 1))}
        p = svc.propose("t", ctx, seed=i)
        y = float(rng.uniform())
        svc.reward(p.event_id, y)
        X.setdefault(p.arm, []).append([1.0, ctx["a"], ctx["b"]])
        r.setdefault(p.arm, []).append(y)
    for arm in X:
        row, A, b = ridge_row(svc, arm)
        Xa, ra = np.array(X[arm]), np.array(r[arm])
        assert row["schema"] == ["a", "b"]
        assert row["n"] == len(ra)
        np.testing.assert_allclose(A, np.eye(3) + Xa.T @ Xa, atol=1e-9)
        np.testing.assert_allclose(b, Xa.T @ ra, atol=1e-9)
        # the in-memory posterior the service scores with agrees with the stored one
        live = svc.policy().posteriors[arm]
        np.testing.assert_allclose(live.theta, np.linalg.solve(A, b), atol=1e-9)


def test_reward_idempotent_and_refuses_changes(svc):
    p = svc.propose("t", {"a": 0.5}, seed=1)
    first = svc.reward(p.event_id, 0.8)
    assert not first.duplicate and first.pulls == 1
    again = svc.reward(p.event_id, "0.8")
    assert again.duplicate
    before = svc.store.posterior("ridge", p.arm)
    with pytest.raises(BanditError, match="already has reward"):
        svc.reward(p.event_id, 0.3)
    for bad in ("nan", "inf", "-inf", "abc", ""):
        with pytest.raises(BanditError):
            svc.reward(p.event_id, bad)
    with pytest.raises(BanditError, match="no event 999"):
        svc.reward(999, 0.5)
    with pytest.raises(BanditError, match="not an event id"):
        svc.reward("x1", 0.5)
    assert svc.store.posterior("ridge", p.arm) == before
    assert svc.store.count_rewards() == 1
    assert svc.store.reward_row(p.event_id)["value"] == 0.8


def test_bad_context_rejected(svc):
    for ctx in ({"a": float("nan")}, {"a": "x"}, {"": 1.0}):
        with pytest.raises(BanditError):
            svc.propose("t", ctx)
    assert svc.store.count_events() == 0


def test_new_arm_proposable_at_once_and_warm_start(svc):
    for i in range(30):
        p = svc.propose("t", {"a": 0.2}, seed=i)
        svc.reward(p.event_id, 1.0 if p.arm == "ties" else 0.0)
    donor, A_d, b_d = ridge_row(svc, "ties")
    svc.add_arm("ties_sparse", "ties", {"density": 0.2}, warm_start_from="ties", shrink=0.25)
    row, A, b = ridge_row(svc, "ties_sparse")
    lam_eye = np.eye(A_d.shape[0])
    np.testing.assert_allclose(A, lam_eye + 0.25 * (A_d - lam_eye), atol=1e-15)
    np.testing.assert_allclose(b, 0.25 * b_d, atol=1e-15)
    assert row["n"] == 0
    p = svc.propose("t", {"a": 0.2}, seed=99)
    assert "ties_sparse" in [e["arm"] for e in p.pmf]
    svc.add_arm("plain", "linear", {"weight": 0.3})
    row, A, b = ridge_row(svc, "plain")
    assert row["schema"] == [] and A.tolist() == [[1.0]] and b.tolist() == [0.0]
    with pytest.raises(BanditError, match="exists already"):
        svc.add_arm("plain", "linear", {})
    with pytest.raises(BanditError, match="unknown arm"):
        svc.add_arm("other", "linear", {}, warm_start_from="nope")
    with pytest.raises(BanditError, match="bad arm name"):
        svc.add_arm("has space", "linear", {})


def test_retire_stops_proposals_and_keeps_history(svc):
    p = svc.propose("t", {}, seed=0)
    svc.reward(p.event_id, 0.5)
    svc.retire_arm(p.arm)
    for i in range(30):
        assert svc.propose("t", {}, seed=i).arm != p.arm
    assert svc.store.event(p.event_id)["reward"] == 0.5
    assert svc.store.posterior("ridge", p.arm)["n"] == 1
    with pytest.raises(BanditError, match="no arm named"):
        svc.retire_arm("nope")


def test_rebuild_matches_live_and_repairs(svc):
    rng = np.random.default_rng(4)
    for i in range(60):
        ctx = {"a": float(rng.uniform())} if i % 3 else {"a": 0.1, "late": float(rng.uniform())}
        p = svc.propose("t", ctx, seed=i)
        if i % 4:
            svc.reward(p.event_id, float(rng.uniform()))
    svc.add_arm("warm", "ties", {"density": 0.3}, warm_start_from="linear")
    for i in range(10):
        p = svc.propose("t", {"a": 0.5}, seed=100 + i)
        svc.reward(p.event_id, 0.4)
    rep = svc.rebuild(check=True)
    assert rep.clean and rep.max_abs_diff == 0.0 and rep.rewards == svc.store.count_rewards()
    # damage one posterior: check notices, rebuild repairs
    row = svc.store.posterior("ridge", "linear")
    bad = np.frombuffer(row["b"], DTYPE).copy()
    bad[0] += 1.0
    svc.store.put_posterior("ridge", "linear", row["schema"], row["lam"], row["A"], bad.tobytes(), row["n"], row["version"] + 1)
    rep = svc.rebuild(check=True)
    assert rep.mismatched == ["linear"]
    assert svc.rebuild().written
    assert svc.rebuild(check=True).clean


def test_stats(svc):
    for i in range(10):
        p = svc.propose("t", {"a": 1.0}, seed=i)
        svc.reward(p.event_id, 0.5)
    rows = {r.arm: r.to_dict() for r in svc.stats()}
    assert sum(r["proposals"] for r in rows.values()) == 10
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    pulled = [r for r in rows.values() if r["pulls"]]
    for r in pulled:
        assert r["mean_reward"] == pytest.approx(0.5)
        # ridge mean at x = (1, 1) after n rewards of 0.5: θᵀx = 0.5·2n / (1 + 2n)
        n = r["pulls"]
        assert r["posterior_mean"] == pytest.approx(0.5 * 2 * n / (1 + 2 * n))


def test_rebuild_replays_rewards_in_recording_order(svc):
    """Rewards arriving out of event order: rebuild replays them as they were recorded,
    so the recomputed posteriors equal the live ones bit for bit."""
    rng = np.random.default_rng(11)
    ids = [svc.propose("t", {"a": float(rng.uniform()), "b": float(rng.normal())}, seed=i).event_id for i in range(80)]
    for i in rng.permutation(ids):
        svc.reward(int(i), float(rng.uniform()))
    assert [r["event_id"] for r in svc.store.rewards_in_order()] != sorted(ids)
    rep = svc.rebuild(check=True)
    assert rep.clean and rep.max_abs_diff == 0.0


def test_changing_lambda_shifts_posteriors_exactly(svc):
    rng = np.random.default_rng(5)
    for i in range(40):
        p = svc.propose("t", {"a": float(rng.uniform())}, seed=i)
        svc.reward(p.event_id, float(rng.uniform()))
    svc.add_arm("warm", "ties", {"density": 0.3}, warm_start_from="linear", shrink=0.5)
    for i in range(10):
        p = svc.propose("t", {"a": float(rng.uniform())}, seed=100 + i)
        svc.reward(p.event_id, float(rng.uniform()))
    before = {r["arm"]: r for r in svc.store.posteriors("ridge")}
    svc.set_policy("linucb", {"lambda": 3.0})
    for arm, row in before.items():
        new, A, b = ridge_row(svc, arm)
        d = len(row["schema"]) + 1
        old_A = np.frombuffer(row["A"], DTYPE).reshape(d, d)
        assert new["lam"] == 3.0
        np.testing.assert_allclose(A, old_A + 2.0 * np.eye(d), atol=1e-12)
    assert svc.rebuild(check=True).clean
    # the live policy scores with λ = 3: a fresh arm's width is 1/√3 at x = bias only
    svc.add_arm("fresh", "linear", {})
    post = svc.policy().posteriors["fresh"]
    assert post.A.tolist() == [[3.0]]


def test_event_lookup_through_the_facade(svc):
    from bandit.errors import NotFound

    p = svc.propose("t", {"a": 0.25}, seed=3)
    ev = svc.event(str(p.event_id))
    assert ev["arm"] == p.arm and ev["contexts"] == [{"a": 0.25}] and ev["reward"] is None
    svc.reward(p.event_id, 0.5)
    assert svc.event(p.event_id)["reward"] == 0.5
    with pytest.raises(NotFound):
        svc.event(p.event_id + 1)
