"""`Service.stats()` kept as a summary with cursors over the log: on random logs it equals a
from-scratch computation with exact fractions, field for field and bit for bit, whichever
process computed it, in how many steps, and with or without a stored summary."""
from fractions import Fraction
import random
import sqlite3

import pytest

from bandit.policies.ridge import Posterior
from bandit.service import Service
from bandit.service.records import ArmStats
from bandit.service.stats import exact, exact_mean


def from_scratch(store) -> list[ArmStats]:
    """The statistics of the whole log, read event by event and added up with Fractions."""
    events = list(store.events())
    context_sums: dict[str, Fraction] = {}
    proposals: dict[str, int] = {}
    rewards: dict[str, list[float]] = {}
    for ev in events:
        action = ev["actions"][ev["chosen"]]
        chosen = dict(ev["contexts"][action.get("candidate", 0)])
        chosen.update({"a:" + k: v for k, v in (action.get("features") or {}).items()})
        for k, v in chosen.items():
            context_sums[k] = context_sums.get(k, Fraction(0)) + Fraction(v)
        proposals[ev["arm"]] = proposals.get(ev["arm"], 0) + 1
        if ev["reward"] is not None:
            rewards.setdefault(ev["arm"], []).append(ev["reward"])
    avg = {k: float(s / len(events)) for k, s in context_sums.items()}
    out = []
    for arm in store.arms():
        name = arm["name"]
        row = store.posterior("ridge", name)
        post_mean = None
        if row is not None:
            post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"])
            post_mean = float(post.mean_and_width([avg])[0][0])
        got = rewards.get(name, [])
        out.append(ArmStats(name, arm["operator"], arm["status"], proposals.get(name, 0), len(got),
                            float(sum(map(Fraction, got)) / len(got)) if got else None, post_mean,
                            proposals.get(name, 0) / len(events) if events else 0.0))
    return out


def random_log(svc: Service, rng: random.Random, n: int, check) -> None:
    """n proposals with contexts of varying features (some with action features), rewards
    for most of them in a shuffled order, an arm added and one retired half way; `check()`
    is called at random points."""
    pending = []
    for i in range(n):
        ctx = {f"f{j}": rng.choice([rng.uniform(-5, 5), rng.randint(-3, 3), 1e-300, 1e6])
               for j in rng.sample(range(6), rng.randint(1, 4))}
        if rng.random() < 0.3:
            arms = [a.name for a in svc.arms(include_retired=False)]
            p = svc.propose("t", [ctx], seed=i, action_features=[
                {a: {"trial_exact": rng.uniform(0, 1)} for a in rng.sample(arms, 3)}])
        else:
            p = svc.propose("t", ctx, seed=i)
        pending.append(p.event_id)
        if rng.random() < 0.6:
            rng.shuffle(pending)
            for _ in range(rng.randint(1, len(pending))):
                svc.reward(pending.pop(), rng.choice([rng.uniform(-1, 1), 0.1, rng.uniform(-1e6, 1e6) * 1e-6]))
        if i == n // 2:
            svc.add_arm("late", "ties", {"density": 0.4})
            svc.retire_arm("slerp")
        if rng.random() < 0.15:
            check()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_equal_a_from_scratch_computation_on_random_logs(tmp_path, seed):
    db = str(tmp_path / "s.db")
    svc = Service(db)
    rng = random.Random(seed)
    checks = []

    def check():
        assert svc.stats() == from_scratch(svc.store)
        checks.append(1)

    random_log(svc, rng, 120, check)
    assert len(checks) >= 5  # the summary was caught up in many steps
    final = from_scratch(svc.store)
    assert svc.stats() == final
    assert Service(db).stats() == final  # another process, from the stored summary
    svc.store.conn.execute("DELETE FROM stats_summary")
    assert Service(db).stats() == final  # from no summary: the whole log at once
    # today's SQL aggregates agree: counts exactly, means to rounding (SQLite's avg adds up in
    # its own order; the summary's mean is the exact mean rounded once)
    sql = {r["arm"]: r for r in svc.store.arm_stats()}
    for r in final:
        assert (r.proposals, r.pulls) == (sql[r.arm]["proposals"], sql[r.arm]["pulls"])
        if r.pulls:
            assert r.mean_reward == pytest.approx(sql[r.arm]["mean_reward"], rel=1e-12, abs=1e-300)
    assert sum(r.pulls for r in final) == svc.store.count_rewards()
    assert {r.arm for r in final if r.status == "retired"} == {"slerp"}


def test_the_summary_covers_the_log_and_counts_rows_written_by_others(tmp_path):
    db = str(tmp_path / "s.db")
    svc = Service(db)
    for i in range(6):
        svc.reward(svc.propose("t", {"a": 0.25 * i}, seed=i).event_id, 0.5)
    svc.stats()
    row = svc.store.stats_summary()
    assert (row["events_upto"], row["rewards_upto"]) == (6, svc.store.last_reward_id())
    # rows another writer added without going through the service (a bulk import, an older
    # process): the cursors find them
    with svc.store.transaction():
        eid = svc.store.insert_event({"created_at": 0.0, "task": "t", "contexts": [{"a": 2.0, "z": -1.0}],
                                      "actions": [{"arm": "ties", "candidate": 0}], "pmf": [1.0], "chosen": 0,
                                      "arm": "ties", "prob": 1.0, "seed": 0})
        svc.store.insert_reward(eid, -0.75)
    stats = {r.arm: r for r in svc.stats()}
    assert stats == {r.arm: r for r in from_scratch(svc.store)}
    assert stats["ties"].proposals >= 1 and svc.store.stats_summary()["events_upto"] == eid


def test_stats_never_wait_for_a_busy_writer(tmp_path):
    """The summary is a cache: with the write lock held elsewhere the stats are still
    exact, the summary is simply not stored this time."""
    db = str(tmp_path / "s.db")
    svc = Service(db)
    for i in range(4):
        svc.reward(svc.propose("t", {"a": 0.1 * i}, seed=i).event_id, 0.2 * i)
    svc.stats()
    svc.reward(svc.propose("t", {"a": 0.9}, seed=9).event_id, 1.0)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert svc.stats() == from_scratch(svc.store)
        assert svc.store.stats_summary()["events_upto"] == 4  # not stored: the lock was busy
    finally:
        other.execute("ROLLBACK")
        other.close()
    svc.stats()
    assert svc.store.stats_summary()["events_upto"] == 5


def test_exact_sums_are_exact():
    values = [0.1, 1e6, -1e6, 5e-324, 2.5, -0.1, 1 / 3, 7]
    total = sum(map(exact, values))
    assert Fraction(total, 1 << 1074) == sum(map(Fraction, values))
    assert exact_mean(total, len(values)) == float(sum(map(Fraction, values)) / len(values))
    assert exact_mean(exact(0.1) * 3, 3) == 0.1


def test_stats_of_a_database_that_cannot_be_written(tmp_path):
    """`bandit stats` reads: on a read-only database or a full disk it still answers,
    exactly, and only the summary is not stored."""
    svc = Service(str(tmp_path / "r.db"))
    for i in range(5):
        svc.reward(svc.propose("t", {"a": 0.3 * i}, seed=i).event_id, 0.1 * i)
    svc.store.conn.execute("PRAGMA query_only = ON")
    assert svc.stats() == from_scratch(svc.store)
    assert svc.store.stats_summary() is None

    full = Service(str(tmp_path / "f.db"))
    wide = {f"feature_{i}_" + "x" * 150: 0.5 + i for i in range(40)}  # a summary of several pages
    for i in range(3):
        full.reward(full.propose("t", wide, seed=i).event_id, 0.2)
    pages = full.store.conn.execute("PRAGMA page_count").fetchone()["page_count"]
    full.store.conn.execute(f"PRAGMA max_page_count = {pages}")
    assert full.stats() == from_scratch(full.store)
    assert full.store.stats_summary() is None
