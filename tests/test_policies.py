"""The policies behind the narrow interface: hybrid LinUCB, LinTS, baselines, VW, and the
service running them live."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bandit.errors import BanditError
from bandit.policies.hybrid import HybridLinUCB
from bandit.policies.linucb import LinUCB
from bandit.policies.lints import LinTS
from bandit.policies.registry import make_policy, parse_policy_spec, policy_label
from bandit.policies.base import Action, ArmSpec

ARMS = [ArmSpec("ties", "ties", {"density": 0.5}), ArmSpec("linear", "linear", {"weight": 0.5}),
        ArmSpec("dare_ties", "dare_ties", {"density": 0.3})]


def _stream(n: int, seed: int = 0):
    """Contexts and rewards; feature `c` only appears half-way (schemas must grow)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        ctx = {"a": float(rng.uniform(-1, 1)), "b": float(rng.uniform(0, 1))}
        if i >= n // 2:
            ctx["c"] = float(rng.uniform(-1, 1))
        yield ctx, rng


def _drive(policy, n: int, seed: int = 0, add_late: ArmSpec | None = None):
    """Run a policy online on a fixed linear problem; returns every decision."""
    out = []
    for i, (ctx, rng) in enumerate(_stream(n, seed)):
        if add_late is not None and i == n // 3:
            policy.add_arm(add_late)
        actions = [Action(a, ctx) for a in policy.arm_names]
        d = policy.decide(actions, rng)
        arm = actions[d.chosen].arm
        r = 0.5 + 0.3 * ctx["a"] * (1 if arm == "ties" else -1) + 0.1 * ctx.get("c", 0) + 0.05 * rng.standard_normal()
        policy.learn_decision(actions, d.chosen, r, d.prob)
        out.append(d)
    return out


def _with_arms(policy, arms=ARMS):
    for a in arms:
        policy.add_arm(a)
    return policy


# -- hybrid -----------------------------------------------------------------------------
def test_hybrid_equals_disjoint_linucb_without_descriptors():
    hyb = _with_arms(HybridLinUCB(alpha=0.7, lam=2.0, epsilon=0.1, descriptor="none"))
    lin = _with_arms(LinUCB(alpha=0.7, lam=2.0, epsilon=0.1))
    for dh, dl in zip(_drive(hyb, 120, add_late=ArmSpec("slerp", "slerp", {"t": 0.5})),
                      _drive(lin, 120, add_late=ArmSpec("slerp", "slerp", {"t": 0.5}))):
        np.testing.assert_allclose(dh.means, dl.means, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(dh.bonuses, dl.bonuses, rtol=1e-9, atol=1e-10)
        np.testing.assert_array_equal(dh.pmf, dl.pmf)
        assert dh.chosen == dl.chosen
    assert hyb.k == 0


def _reference_hybrid(history, arms, descs, lam, d):
    """Li et al. (2010) Algorithm 2 written out with explicit inverses, as a reference."""
    k = d * len(next(iter(descs.values())))
    A0, b0 = lam * np.eye(k), np.zeros(k)
    A = {a: lam * np.eye(d) for a in arms}
    B = {a: np.zeros((d, k)) for a in arms}
    b = {a: np.zeros(d) for a in arms}
    for arm, x, r in history:
        z = np.outer(x, descs[arm]).ravel()
        Ai = np.linalg.inv(A[arm])
        A0 += B[arm].T @ Ai @ B[arm]
        b0 += B[arm].T @ Ai @ b[arm]
        A[arm] += np.outer(x, x)
        B[arm] += np.outer(x, z)
        b[arm] += r * x
        Ai = np.linalg.inv(A[arm])
        A0 += np.outer(z, z) - B[arm].T @ Ai @ B[arm]
        b0 += r * z - B[arm].T @ Ai @ b[arm]
    A0i = np.linalg.inv(A0)
    beta = A0i @ b0

    def score(arm, x):
        z = np.outer(x, descs[arm]).ravel()
        Ai = np.linalg.inv(A[arm])
        theta = Ai @ (b[arm] - B[arm] @ beta)
        s = (z @ A0i @ z - 2 * z @ A0i @ B[arm].T @ Ai @ x + x @ Ai @ x
             + x @ Ai @ B[arm] @ A0i @ B[arm].T @ Ai @ x)
        return z @ beta + x @ theta, math.sqrt(s)

    return score


def test_hybrid_matches_the_papers_algorithm_while_growing():
    """Our incremental hybrid (rank-one A₀ updates, schemas that grow when a feature or an
    arm with new descriptor components appears) against the paper's algorithm run with
    every dimension from the start: past rows had the late ones at 0, so they must agree."""
    from bandit.policies.descriptors import arm_descriptor

    late_arm = ArmSpec("slerp", "slerp", {"t": 0.3})
    pol = _with_arms(HybridLinUCB(alpha=1.0, lam=1.5, epsilon=0.0))
    rng = np.random.default_rng(3)
    history = []
    for i in range(90):
        if i == 30:
            pol.add_arm(late_arm)
        ctx = {"a": float(rng.uniform(-1, 1)), "b": float(rng.uniform(0, 1))}
        if i >= 50:
            ctx["c"] = float(rng.uniform(-1, 1))  # a feature nobody has seen before
        arm = pol.arm_names[i % len(pol.arm_names)]
        r = float(rng.normal(0.5, 0.2))
        pol.learn_one(arm, ctx, r)
        history.append((arm, np.array([1.0, ctx["a"], ctx["b"], ctx.get("c", 0.0)]), r))
    names = sorted({k for s in ARMS + [late_arm] for k in arm_descriptor(s)})
    descs = {s.name: np.array([arm_descriptor(s).get(n, 0.0) for n in names]) for s in ARMS + [late_arm]}
    ref = _reference_hybrid(history, pol.arm_names, descs, 1.5, 4)
    test_ctx = {"a": 0.3, "b": 0.8, "c": -0.2}
    means, widths = pol.scores([Action(a, test_ctx) for a in pol.arm_names])
    for i, arm in enumerate(pol.arm_names):
        m, w = ref(arm, np.array([1.0, 0.3, 0.8, -0.2]))
        assert means[i] == pytest.approx(m, rel=1e-8, abs=1e-10)
        assert widths[i] == pytest.approx(w, rel=1e-8)


def _density_world(policy, grid):
    rng = np.random.default_rng(0)
    for _ in range(300):
        ctx = {"a": float(rng.uniform(-1, 1))}
        spec = grid[rng.integers(len(grid))]
        policy.learn_one(spec.name, ctx, 0.2 + 0.6 * spec.params["density"] + 0.01 * rng.standard_normal())
    return policy


def test_new_arm_under_hybrid_is_informed_at_once():
    """Rewards rise with TIES density (0.32, 0.44, 0.68 at 0.2, 0.4, 0.8). A density never
    pulled (0.6, truly 0.56) is scored from the shared part on its first round, while
    disjoint LinUCB can only give it the prior 0."""
    grid = [ArmSpec(f"ties@{d}", "ties", {"density": d}) for d in (0.2, 0.4, 0.8)]
    new = ArmSpec("ties@0.6", "ties", {"density": 0.6})
    ctx = {"a": 0.1}
    lin = _density_world(_with_arms(LinUCB(), grid), grid)
    lin.add_arm(new)
    assert lin.scores([Action(new.name, ctx)])[0][0] == 0.0
    hyb = _density_world(_with_arms(HybridLinUCB(), grid), grid)
    hyb.add_arm(new)
    mean, bonus = hyb.scores([Action(new.name, ctx)])
    assert 0.4 < mean[0] < 0.68  # between its neighbours, pulled toward the arms' average
    # a larger per-arm λ says arms deviate little from their descriptor: closer, narrower
    tight = _density_world(_with_arms(HybridLinUCB(arm_lam=30.0), grid), grid)
    tight.add_arm(new)
    t_mean, t_bonus = tight.scores([Action(new.name, ctx)])
    assert t_mean[0] == pytest.approx(0.56, abs=0.03)
    assert 0 < t_bonus[0] < bonus[0]


def test_hybrid_warm_start_and_errors():
    pol = _with_arms(HybridLinUCB())
    _drive(pol, 40)
    pol.add_arm(ArmSpec("ties2", "ties", {"density": 0.5}), warm_start_from="ties", shrink=0.5)
    m, _ = pol.scores([Action("ties", {"a": 0.2, "b": 0.5}), Action("ties2", {"a": 0.2, "b": 0.5})])
    assert m[1] != 0.0 and np.isfinite(m).all()
    with pytest.raises(BanditError):
        pol.add_arm(ArmSpec("ties", "ties"))
    with pytest.raises(BanditError):
        pol.add_arm(ArmSpec("x", "ties"), warm_start_from="nope")
    with pytest.raises(BanditError):
        pol.learn_one("nope", {}, 1.0)


# -- LinTS ------------------------------------------------------------------------------
def test_lints_monte_carlo_pmf_matches_the_gaussian_probability():
    """Two arms, one action each: P(arm 0 wins) = Φ((μ0 − μ1)/√(σ0² + σ1²)), σ² = v²xᵀA⁻¹x."""
    pol = LinTS(v=0.5, epsilon=0.0, draws=20000)
    _with_arms(pol, ARMS[:2])
    rng = np.random.default_rng(1)
    for _ in range(8):
        pol.learn_one("ties", {"a": float(rng.uniform(-1, 1))}, 0.6)
        pol.learn_one("linear", {"a": float(rng.uniform(-1, 1))}, 0.5)
    actions = [Action("ties", {"a": 0.4}), Action("linear", {"a": 0.4})]
    means, spreads = pol.scores(actions)
    expected = stats.norm.cdf((means[0] - means[1]) / math.hypot(spreads[0], spreads[1]))
    d = pol.decide(actions, np.random.default_rng(5))
    assert d.pmf[0] == pytest.approx(expected, abs=0.015)


def test_lints_floor_and_minimum_draws():
    pol = _with_arms(LinTS(epsilon=0.1))
    for d in _drive(pol, 60):
        assert d.pmf.min() >= 0.1 / 3 - 1e-12
        assert d.pmf.sum() == pytest.approx(1.0)
    with pytest.raises(BanditError):
        LinTS(draws=100)


# -- baselines ---------------------------------------------------------------------------
def test_egreedy_random_fixed_pmfs():
    eg = _with_arms(make_policy("egreedy", {"epsilon": 0.3}))
    eg.learn_one("linear", {"a": 0.0}, 1.0)
    d = eg.decide([Action(a.name, {"a": 0.0}) for a in ARMS], np.random.default_rng(0))
    np.testing.assert_allclose(d.pmf, [0.1, 0.8, 0.1])
    rnd = _with_arms(make_policy("random"))
    np.testing.assert_allclose(rnd.decide([Action(a.name, {}) for a in ARMS], np.random.default_rng(0)).pmf, [1 / 3] * 3)
    fx = _with_arms(make_policy("fixed", {"arm": "linear"}))
    d = fx.decide([Action(a.name, {}) for a in ARMS], np.random.default_rng(0))
    assert d.chosen == 1 and d.prob == 1.0
    # not offered yet (a scenario adds it later): uniform
    d = fx.decide([Action("ties", {}), Action("dare_ties", {})], np.random.default_rng(0))
    np.testing.assert_allclose(d.pmf, [0.5, 0.5])
    fx_eps = make_policy("fixed", {"arm": "linear", "epsilon": 0.3})
    _with_arms(fx_eps)
    np.testing.assert_allclose(fx_eps.decide([Action(a.name, {}) for a in ARMS], np.random.default_rng(0)).pmf,
                               [0.1, 0.8, 0.1])


@pytest.mark.parametrize("spec", ["linucb", "hybrid", "lints", "egreedy", "random", "fixed:ties", "vw"])
def test_policies_reproducible_under_a_seed_and_keep_the_floor(spec):
    settings = parse_policy_spec(spec)
    runs = []
    for _ in range(2):
        pol = _with_arms(make_policy(settings["name"], settings["params"]))
        runs.append(_drive(pol, 60, seed=11, add_late=ArmSpec("slerp", "slerp", {"t": 0.5})))
    for a, b in zip(*runs):
        assert a.chosen == b.chosen
        np.testing.assert_array_equal(a.pmf, b.pmf)
    eps = pol.params().get("epsilon", 0.0)
    for d in runs[0]:
        assert d.pmf.sum() == pytest.approx(1.0)
        assert d.pmf.min() >= eps / len(d.pmf) - 1e-12


def test_policy_specs():
    assert parse_policy_spec("fixed:ties") == {"name": "fixed", "params": {"arm": "ties"}}
    assert parse_policy_spec("linucb:alpha=0.5,epsilon=0.1")["params"] == {"alpha": 0.5, "epsilon": 0.1}
    assert policy_label(parse_policy_spec("fixed:ties,epsilon=0.1")) == "fixed:ties,epsilon=0.1"
    for bad in ("nope", "linucb:beta=1", "linucb:alpha", "lints:draws=10", "hybrid:descriptor=weird",
                "linucb:alpha=1,alpha=2", "fixed", "vw:explore=magic"):
        with pytest.raises(BanditError):
            parse_policy_spec(bad)


# -- VW ---------------------------------------------------------------------------------
def test_vw_round_trip_gives_the_same_pmf(tmp_path):
    pol = _with_arms(make_policy("vw", {"seed": 3}))
    _drive(pol, 80)
    pol.save(tmp_path / "w.vw", {"note": "x"})
    from bandit.policies.vw import VWPolicy

    back, header = VWPolicy.load(tmp_path / "w.vw")
    assert header["note"] == "x" and back.arm_names == pol.arm_names and back.params() == pol.params()
    for ctx in ({"a": 0.1, "b": 0.2}, {"a": -0.7, "b": 0.9, "c": 0.3}):
        acts = [Action(a, ctx) for a in pol.arm_names]
        np.testing.assert_array_equal(back.vw_pmf(acts), pol.vw_pmf(acts))
    # and both keep learning identically
    d1 = _drive(pol, 20, seed=4)
    d2 = _drive(back, 20, seed=4)
    for a, b in zip(d1, d2):
        np.testing.assert_allclose(a.pmf, b.pmf, rtol=1e-6)
    (tmp_path / "bad.vw").write_bytes(b"not a model")
    with pytest.raises(BanditError):
        VWPolicy.load(tmp_path / "bad.vw")


def test_vw_cold_arm_starts_average_not_starved():
    """Rewards are positive: with raw costs an unseen arm (predicted cost 0) would look worst.
    Centred costs make it look average: above the known-bad arm, below the known-good one."""
    pol = _with_arms(make_policy("vw"), [ArmSpec("good", "linear", {"weight": 0.5}), ArmSpec("bad", "slerp", {"t": 0.5})])
    rng = np.random.default_rng(0)
    for _ in range(300):
        ctx = {"s0": float(rng.uniform(-1, 1))}
        acts = [Action("good", ctx), Action("bad", ctx)]
        d = pol.decide(acts, rng)
        pol.learn_decision(acts, d.chosen, 0.9 if d.chosen == 0 else 0.7, d.prob)
    pol.add_arm(ArmSpec("new", "model_stock", {}))
    p = pol.vw_pmf([Action(a, {"s0": 0.1}) for a in ("good", "bad", "new")])
    assert p[0] > p[2] > p[1]


# -- the live service ---------------------------------------------------------------------
def test_service_policy_set_show_and_log_fed_policies(tmp_path):
    from bandit.service import Service

    db = tmp_path / "b.db"
    svc = Service(db)
    assert svc.show_policy().name == "pooled"  # the default since #10's replays
    with pytest.raises(BanditError, match="epsilon > 0"):
        svc.set_policy("fixed", {"arm": "ties"})
    with pytest.raises(BanditError, match="no arm"):
        svc.set_policy("fixed", {"arm": "nope", "epsilon": 0.1})
    with pytest.raises(BanditError):
        svc.set_policy("hybrid", {"gamma": 1})
    out = svc.set_policy("hybrid", {"alpha": 0.5})
    assert out.label == "hybrid:alpha=0.5" and out.effective["alpha"] == 0.5
    for i in range(12):
        p = svc.propose("t", {"a": i / 12}, seed=i)
        assert p.policy == "hybrid"
        svc.reward(p.event_id, 0.9 if p.arm == "ties" else 0.4)
    # a new process rebuilds the same policy from the log: same proposal for the same seed
    p1 = svc.propose("t", {"a": 0.5}, seed=99)
    p2 = Service(db).propose("t", {"a": 0.5}, seed=99)
    assert (p1.arm, p1.pmf) == (p2.arm, p2.pmf)
    svc.retire_arm("ties")
    assert all(e["arm"] != "ties" for e in svc.propose("t", {"a": 0.5}, seed=1).pmf)


def test_service_vw_workspace_saved_next_to_the_database(tmp_path):
    from bandit.service import Service

    db = tmp_path / "b.db"
    svc = Service(db)
    svc.set_policy("vw", {})
    for i in range(10):
        p = svc.propose("t", {"a": i / 10}, seed=i)
        svc.reward(p.event_id, 0.8 if p.arm == "linear" else 0.3)
    p1 = svc.propose("t", {"a": 0.3}, seed=5)
    assert (tmp_path / "b.db.vw").exists()
    fresh = Service(db)
    p2 = fresh.propose("t", {"a": 0.3}, seed=5)
    assert p2.arm == p1.arm
    np.testing.assert_allclose([e["p"] for e in p2.pmf], [e["p"] for e in p1.pmf], rtol=1e-6)
    assert fresh.live.learned == 10  # loaded from the file, not relearned


def test_service_relearns_a_vw_workspace_that_does_not_match_the_database(tmp_path):
    from bandit.service import Service

    db = tmp_path / "b.db"
    svc = Service(db)
    svc.set_policy("vw", {})
    for i in range(6):
        p = svc.propose("t", {"a": i / 6}, seed=i)
        svc.reward(p.event_id, 0.5)
    svc.propose("t", {"a": 0.1}, seed=1)  # syncs and saves the workspace
    saved = (tmp_path / "b.db.vw").read_bytes()
    # a fresh database with the same file next to it: the file's rewards are not there
    db2 = tmp_path / "c.db"
    (tmp_path / "c.db.vw").write_bytes(saved)
    other = Service(db2)
    other.set_policy("vw", {})
    other.propose("t", {"a": 0.1}, seed=1)
    assert other.live.learned == 0
    # a corrupt file is relearned too, not an error
    (tmp_path / "b.db.vw").write_bytes(b"garbage")
    again = Service(db)
    again.propose("t", {"a": 0.1}, seed=2)
    assert again.live.learned == 6


def test_hybrid_snapshot_round_trip_continues_bit_for_bit(tmp_path):
    from bandit.policies.hybrid import HybridLinUCB as H

    pol = _with_arms(HybridLinUCB(alpha=0.8, arm_lam=3.0))
    _drive(pol, 70, add_late=ArmSpec("slerp", "slerp", {"t": 0.5}))
    pol.save(tmp_path / "h.npz", {"learned_events": [1, 2]})
    back, header = H.load(tmp_path / "h.npz")
    assert header["learned_events"] == [1, 2] and back.params() == pol.params() and back.arm_names == pol.arm_names
    for a, b in zip(_drive(pol, 30, seed=9), _drive(back, 30, seed=9)):
        np.testing.assert_array_equal(a.means, b.means)
        np.testing.assert_array_equal(a.bonuses, b.bonuses)
        assert a.chosen == b.chosen
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(BanditError):
        H.load(tmp_path / "bad.npz")


def test_service_hybrid_loads_its_snapshot_instead_of_relearning(tmp_path):
    from bandit.service import Service

    db = tmp_path / "b.db"
    svc = Service(db)
    svc.set_policy("hybrid", {})
    for i in range(8):
        p = svc.propose("t", {"a": i / 8}, seed=i)
        svc.reward(p.event_id, 0.6)
    svc.propose("t", {"a": 0.2}, seed=0)  # learns the rewards and writes the snapshot
    assert (tmp_path / "b.db.hybrid.npz").exists()
    fresh = Service(db)
    fresh.policy()
    assert fresh.live.learned == 8
    # another reward after the snapshot: the fresh process learns just that one
    p = svc.propose("t", {"a": 0.9}, seed=3)
    svc.reward(p.event_id, 0.1)
    assert fresh.propose("t", {"a": 0.5}, seed=4).pmf == svc.propose("t", {"a": 0.5}, seed=4).pmf


# -- switching policies: relearn once, share the snapshot, then learn incrementally -----------
def _logged_rewards(svc, n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = svc.propose("t", {"a": float(rng.uniform(-1, 1)), "b": float(rng.uniform(-1, 1))}, seed=i)
        svc.reward(p.event_id, float(rng.uniform(0, 1)))


@pytest.mark.parametrize("name", ["hybrid", "vw", "pooled"])
def test_policy_switch_relearns_once_and_matches_a_fresh_relearn(tmp_path, name):
    from bandit.service import Service

    db = str(tmp_path / "s.db")
    svc = Service(db)
    svc.set_policy("linucb", {})  # the log is made under another policy, then switched to `name`
    _logged_rewards(svc, 40)
    svc.set_policy(name, {})
    snapshot = tmp_path / ("s.db" + {"hybrid": ".hybrid.npz", "vw": ".vw", "pooled": ".pooled.npz"}[name])
    assert snapshot.exists()  # the switching process relearned the log and wrote it
    written = snapshot.stat().st_mtime_ns

    other = Service(db)  # another process: loads the snapshot, relearns nothing
    loaded = other.propose("t", {"a": 0.3, "b": -0.2}, seed=7)
    assert other.live.learned == 40 and snapshot.stat().st_mtime_ns == written

    snapshot.unlink()  # a process without the snapshot relearns the whole log itself
    fresh = Service(db)
    relearned = fresh.propose("t", {"a": 0.3, "b": -0.2}, seed=7)
    assert fresh.live.learned == 40
    assert relearned.arm == loaded.arm
    np.testing.assert_allclose([e["p"] for e in relearned.pmf], [e["p"] for e in loaded.pmf], rtol=1e-9, atol=1e-12)
    assert not list(tmp_path.glob("*.lock"))  # the relearn locks are gone once released


def test_snapshot_lock_excludes_while_its_file_is_removed_and_recreated(tmp_path):
    """The relearn lock's holder removes its file before letting go; whoever waited on the
    removed file must lock the new one, never run beside its holder."""
    import threading
    import time

    from bandit.service.live import _exclusive

    path = str(tmp_path / "x.db.hybrid.npz")
    inside, overlaps, entries = [0], [], []
    guard = threading.Lock()

    def worker():
        for _ in range(40):
            with _exclusive(path):
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                time.sleep(0.0005)
                with guard:
                    inside[0] -= 1
                    entries.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(entries) == 160 and max(overlaps) == 1
    assert not (tmp_path / "x.db.hybrid.npz.lock").exists()


def test_a_lock_file_left_by_a_killed_process_is_taken_over_and_removed(tmp_path):
    from bandit.service.live import _exclusive

    stale = tmp_path / "x.db.vw.lock"
    stale.write_text("")
    with _exclusive(str(tmp_path / "x.db.vw")):
        assert stale.exists()
    assert not stale.exists()


def test_log_fed_policy_reads_only_rewards_after_its_cursor(tmp_path, monkeypatch):
    from bandit.service import Service

    db = str(tmp_path / "c.db")
    svc = Service(db)
    svc.set_policy("hybrid", {})
    _logged_rewards(svc, 10)
    seen = []
    original = svc.store.rewarded_decisions_after

    def spy(cursor):
        rows = list(original(cursor))
        seen.append((cursor, len(rows)))
        return iter(rows)

    monkeypatch.setattr(svc.store, "rewarded_decisions_after", spy)
    svc.propose("t", {"a": 0.1, "b": 0.1}, seed=1)
    svc.propose("t", {"a": 0.1, "b": 0.1}, seed=2)
    last = svc.store.last_reward_id()
    # each sync asks only for rewards after the last one learned: the 10th reward (recorded
    # after the proposal that preceded it), then nothing new
    assert seen == [(last - 1, 1), (last, 0)]
    p = svc.propose("t", {"a": 0.2, "b": 0.2}, seed=3)
    svc.reward(p.event_id, 0.5)
    svc.propose("t", {"a": 0.1, "b": 0.1}, seed=4)
    assert seen[-1] == (last, 1) and svc.live.cursor == last + 1 and svc.live.learned == 11


def test_stateless_baselines_skip_the_log(tmp_path, monkeypatch):
    from bandit.service import Service

    db = str(tmp_path / "r.db")
    svc = Service(db)
    _logged_rewards(svc, 5)
    svc.set_policy("random", {})
    fresh = Service(db)
    monkeypatch.setattr(fresh.store, "rewarded_decisions_after",
                        lambda cursor: pytest.fail("a stateless policy read the log"))
    fresh.propose("t", {"a": 0.1}, seed=0)
    assert fresh.live.cursor == fresh.store.last_reward_id() == 5


def test_a_snapshot_of_another_log_with_as_many_rewards_is_relearned(tmp_path):
    from bandit.service import Service

    def logged(db, order):
        svc = Service(str(db))
        svc.set_policy("hybrid", {})
        ids = [svc.propose("t", {"a": i / 6}, seed=i).event_id for i in range(6)]
        for k in order:
            svc.reward(ids[k], 0.1 * k)
        svc.propose("t", {"a": 0.5}, seed=9)  # learns them and writes the snapshot
        return svc

    logged(tmp_path / "a.db", range(6))
    other = logged(tmp_path / "b.db", reversed(range(6)))
    (tmp_path / "b.db.hybrid.npz").write_bytes((tmp_path / "a.db.hybrid.npz").read_bytes())
    fresh = Service(str(tmp_path / "b.db"))
    fresh.propose("t", {"a": 0.5}, seed=9)
    # same settings, same count, but the last reward is of another event: relearned
    assert fresh.live.learned == 6 and fresh.live.cursor_event == other.live.cursor_event == 1
