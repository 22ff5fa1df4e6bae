"""The exported decision log marks the reward window's default rewards and lists expired
events, checked against the database; OPE reads both and keeps or drops default rewards."""
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from bandit.errors import BanditError
from bandit.offline.decision_log import read_decision_log
from bandit.service import Service
from bandit.service.join_window import JoinWindow, close_overdue
from cli import main


@pytest.fixture
def window_log(tmp_path):
    """A database with one expired event, one default reward and client rewards; (db, ids)."""
    db = str(tmp_path / "w.db")
    svc = Service(db)
    expired = svc.propose("t", {"a": 0.1}, seed=1).event_id
    assert close_overdue(svc, JoinWindow(60, None), time.time() + 61)["expired"] == [expired]
    defaulted = svc.propose("t", {"a": 0.2}, seed=2).event_id
    rng = np.random.default_rng(0)
    client = []
    for i in range(30):
        p = svc.propose("t", {"a": float(rng.uniform(-1, 1))}, seed=10 + i)
        svc.reward(p.event_id, 0.9 if p.arm == "ties" else 0.4)
        client.append(p.event_id)
    assert close_overdue(svc, JoinWindow(60, 0.05), time.time() + 61)["defaulted"] == [defaulted]
    svc.close()
    return db, {"expired": expired, "default": defaulted, "client": client}


def test_export_marks_default_rewards_and_expired_events_as_the_database_holds_them(window_log, tmp_path):
    db, ids = window_log
    out = tmp_path / "log.jsonl"
    res = CliRunner().invoke(main, ["export", "-o", str(out), "--db", db])
    assert res.exit_code == 0, res.output
    records = {r["event_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    store = Service(db, create=False).store
    for eid, rec in records.items():
        row = store.reward_row(eid)
        expiry = store._one("SELECT expired_at FROM expired_events WHERE event_id = ?", (eid,))
        assert rec["reward"] == (None if row is None else row["value"])
        assert rec["reward_source"] == (None if row is None else row["source"])
        assert rec["expired_at"] == (None if expiry is None else expiry["expired_at"])
    assert records[ids["expired"]]["expired_at"] is not None and records[ids["expired"]]["reward"] is None
    assert records[ids["default"]]["reward_source"] == "default" and records[ids["default"]]["reward"] == 0.05
    assert {records[i]["reward_source"] for i in ids["client"]} == {"client"}
    decisions = {d.event_id: d for d in read_decision_log(out)}
    assert decisions[ids["expired"]].expired and decisions[ids["expired"]].reward is None
    assert decisions[ids["default"]].reward_source == "default" and not decisions[ids["default"]].expired
    assert sum(d.expired for d in decisions.values()) == 1


def test_ope_keeps_or_drops_default_rewards_the_same_from_the_file_and_the_database(window_log, tmp_path):
    db, ids = window_log
    out = tmp_path / "log.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["export", "-o", str(out), "--db", db]).exit_code == 0
    reports = {}
    for treatment in ("keep", "drop"):
        for source in ([str(out)], []):
            res = runner.invoke(main, ["replay", "--logged", *source, "--policy", "fixed:ties", "--bootstrap", "50",
                                       "--default-rewards", treatment, "--db", db, "--json"])
            assert res.exit_code == 0, res.output
            reports[treatment, bool(source)] = json.loads(res.output)
        assert reports[treatment, True]["targets"] == reports[treatment, False]["targets"]
    keep, drop = reports["keep", True], reports["drop", True]
    assert keep["default_rewards"] == {"count": 1, "treatment": "kept"} and keep["expired"] == 1
    assert drop["default_rewards"] == {"count": 1, "treatment": "dropped"} and drop["expired"] == 1
    assert keep["targets"][0]["rewarded"] == len(ids["client"]) + 1
    assert drop["targets"][0]["rewarded"] == len(ids["client"])
    client_rewards = [0.9 if a == "ties" else 0.4 for a in _arms(db, ids["client"])]
    assert drop["targets"][0]["logged_mean_reward"] == pytest.approx(np.mean(client_rewards))
    assert keep["targets"][0]["logged_mean_reward"] == pytest.approx(np.mean(client_rewards + [0.05]))
    text = runner.invoke(main, ["replay", "--logged", str(out), "--policy", "fixed:ties", "--bootstrap", "20",
                                "--default-rewards", "drop"]).output
    assert "1 default reward(s) of the reward window (dropped), 1 expired event(s)" in text
    bad = runner.invoke(main, ["replay", "--outcomes", str(out), "--default-rewards", "drop", "--db", db])
    assert bad.exit_code == 1 and "--default-rewards applies to --logged only" in bad.output


def _arms(db, event_ids):
    store = Service(db, create=False).store
    return [store.event(i)["arm"] for i in event_ids]


def _record(**extra):
    rec = {"event_id": 1, "contexts": [{"a": 0.5}], "actions": [{"arm": "x", "candidate": 0, "p": 1.0}],
           "chosen": 0, "reward": 0.5}
    rec.update(extra)
    return rec


@pytest.mark.parametrize("extra, message", [
    ({"reward_source": "server"}, "'reward_source' must be"),
    ({"reward": None, "reward_source": "client"}, "there is no reward"),
    ({"expired_at": "yesterday", "reward": None}, "'expired_at' must be"),
    ({"expired_at": 1.5}, "an expired event cannot have a reward"),
])
def test_bad_window_fields_are_refused_with_the_line(tmp_path, extra, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(event_id=2, **extra)) + "\n")
    with pytest.raises(BanditError, match=message) as err:
        read_decision_log(path)
    assert "line 2" in str(err.value)


def test_a_log_written_before_the_window_fields_reads_as_client_rewards(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(event_id=2, reward=None)) + "\n")
    first, second = read_decision_log(path)
    assert (first.reward_source, first.expired) == ("client", False)
    assert (second.reward_source, second.expired) == (None, False)
