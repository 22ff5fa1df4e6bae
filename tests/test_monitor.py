"""The dashboard's views kept up to date from a cursor: arm shares over time equal a
from-scratch count of the log, and the pending count equals a direct per-event check."""
import random
import time

from bandit.service import Service
from bandit.service.join_window import JoinWindow, close_overdue
from bandit.service.monitor import ArmShares, pending, share_over_time
from bandit.service.reward import record_reward


def shares_from_scratch(arms: list[str], bins: int) -> dict:
    bins = min(bins, len(arms))
    edges = [round(i * len(arms) / bins) for i in range(bins + 1)]
    return {"bins": bins, "edges": edges,
            "shares": {a: [arms[edges[k]:edges[k + 1]].count(a) / (edges[k + 1] - edges[k]) for k in range(bins)]
                       for a in dict.fromkeys(arms)}}


def test_arm_shares_kept_from_a_cursor_equal_a_count_of_the_whole_log(tmp_path):
    svc = Service(str(tmp_path / "m.db"))
    rng = random.Random(3)
    kept = ArmShares(bins=7)
    assert kept.update(svc.store) == {"bins": 0, "edges": [], "shares": {}}
    for step in range(12):
        for i in range(rng.randint(1, 9)):
            svc.propose("t", {"a": rng.uniform(-1, 1)}, seed=100 * step + i)
        arms = [ev["arm"] for ev in svc.store.events()]
        assert kept.update(svc.store) == shares_from_scratch(arms, 7) == share_over_time(svc.store, 7)


def test_pending_count_equals_a_check_of_every_event(tmp_path):
    svc = Service(str(tmp_path / "p.db"))
    ids = [svc.propose("t", {"a": 0.1 * i}, seed=i).event_id for i in range(12)]
    close_overdue(svc, JoinWindow(60, None), time.time() + 61)  # all 12 expire
    record_reward(svc.store, ids[0], 0.5)  # a reward the CLI recorded after the expiry
    more = [svc.propose("t", {"a": 0.5}, seed=50 + i).event_id for i in range(5)]
    svc.reward(more[1], 0.25)
    store = svc.store
    open_events = [e["id"] for e in store.events() if e["reward"] is None and e["expired_at"] is None]
    view = pending(store, limit=3)
    assert open_events == [more[0], *more[2:]]
    assert view["count"] == len(open_events) == 4
    assert [e["id"] for e in view["events"]] == sorted(open_events, reverse=True)[:3]
    for eid in open_events:
        svc.reward(eid, 0.1)
    assert pending(store) == {"count": 0, "events": [], "default_rewards": 0, "expired": 12}
