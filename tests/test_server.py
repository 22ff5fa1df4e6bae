"""The HTTP API against the database: every endpoint, every error code, nothing changed by a
refused request."""
import json
import math
import os

import pytest
from fastapi.testclient import TestClient

from server_helpers import make_app, wait_job
from store import Store


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "s.db")


@pytest.fixture
def client(db):
    with TestClient(make_app(db)) as c:
        yield c


def _counts(db):
    with Store(db) as st:
        return st.count_events(), st.count_rewards()


def _propose(client, x=0.5, seed=1, task="t"):
    r = client.post("/v1/propose", json={"task": task, "context": {"a": x, "b": 1 - x}, "seed": seed})
    assert r.status_code == 200, r.text
    return r.json()


# -- propose, events, reward -------------------------------------------------------------------
def test_propose_logs_the_event_it_returns(client, db):
    p = _propose(client, 0.25, seed=7)
    with Store(db) as st:
        ev = st.event(p["event_id"])
    assert ev["arm"] == p["arm"] and ev["seed"] == 7 and ev["task"] == "t"
    assert ev["contexts"] == [{"a": 0.25, "b": 0.75}]
    assert [e["p"] for e in p["pmf"]] == pytest.approx(ev["pmf"])
    assert math.isclose(sum(ev["pmf"]), 1.0) and ev["prob"] == pytest.approx(p["prob"])
    got = client.get(f"/v1/events/{p['event_id']}").json()
    assert got["id"] == p["event_id"] and got["reward"] is None and got["reward_source"] is None
    # The same seed on the same state picks the same arm (the seed is honoured).
    assert _propose(client, 0.25, seed=7)["arm"] == p["arm"]


def test_reward_idempotent_and_conflict(client, db):
    p = _propose(client)
    r = client.post(f"/v1/events/{p['event_id']}/reward", json={"value": 0.75})
    assert r.status_code == 200 and r.json() == {"event_id": p["event_id"], "arm": p["arm"], "reward": 0.75,
                                                 "duplicate": False, "pulls": 1}
    again = client.post(f"/v1/events/{p['event_id']}/reward", json={"value": "0.75"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    clash = client.post(f"/v1/events/{p['event_id']}/reward", json={"value": 0.5})
    assert clash.status_code == 409 and "already has reward 0.75" in clash.json()["error"]
    with Store(db) as st:
        assert st.reward_row(p["event_id"])["value"] == 0.75 and st.count_rewards() == 1
        assert st.posterior("ridge", p["arm"])["n"] == 1
    assert client.get("/v1/rebuild").json()["clean"] is True


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/events/999/reward", {"value": 1}, 404, "no event 999"),
    ("/v1/events/abc/reward", {"value": 1}, 422, "not an event id"),
    ("/v1/events/9223372036854775808/reward", {"value": 1}, 422, "event id"),
    ("/v1/events/1/reward", {"value": "1_0"}, 422, "plain decimal"),
    ("/v1/events/1/reward", {"value": 1e300}, 422, "outside the accepted range"),
    ("/v1/events/1/reward", {"value": "nan"}, 422, "reward"),
    ("/v1/events/1/reward", {"valu": 1}, 422, "value"),
    ("/v1/events/1/reward", {"value": 1, "extra": 2}, 422, "extra"),
    ("/v1/propose", {"task": "t", "context": {"a": 1e200}}, 422, "outside the accepted range"),
    ("/v1/propose", {"task": "t", "context": {"a": 1}, "seed": -1}, 422, "seed"),
    ("/v1/propose", {"task": "t", "context": {f"f{i}": 0.5 for i in range(257)}}, 422, "at most 256"),
    ("/v1/propose", {"task": "t", "context": {"a": 1}, "models": ["x", "y"]}, 422, "not both"),
    ("/v1/propose", {"task": "  ", "context": {"a": 1}}, 422, "task"),
    ("/v1/propose", {"task": "t", "models": ["nope1", "nope2"]}, 404, "nope1"),
])
def test_bad_requests_are_json_errors_and_change_nothing(client, db, path, body, status, words):
    _propose(client)
    before = _counts(db)
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]
    assert "Traceback" not in r.text
    assert _counts(db) == before


def test_malformed_json_is_400_oversized_413_unknown_path_404(client, db):
    before = _counts(db)
    r = client.post("/v1/propose", content=b'{"task": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = json.dumps({"task": "t", "context": {"a": 0.5}, "pad": "x" * (1 << 20)})
    r = client.post("/v1/propose", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(40):
            yield b" " * 50000

    r = client.post("/v1/propose", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json() == {"error": "no such path: /v1/nothing"}
    assert _counts(db) == before


# -- arms, policy, stats, catalog --------------------------------------------------------------
def test_arms_add_list_retire(client, db):
    names = [a["name"] for a in client.get("/v1/arms").json()]
    with Store(db) as st:
        assert names == [a["name"] for a in st.arms("active")]
    r = client.post("/v1/arms", json={"name": "ties9", "operator": "ties", "params": {"density": 0.9}})
    assert r.status_code == 201 and r.json()["params"] == {"density": 0.9}
    assert client.post("/v1/arms", json={"name": "ties9", "operator": "ties"}).status_code == 409
    r = client.post("/v1/arms", json={"name": "bad", "operator": "ties", "params": {"density": 7}})
    assert r.status_code == 422 and "density" in r.json()["error"]
    assert client.post("/v1/arms", json={"name": "x", "operator": "no_such_op"}).status_code == 422
    assert client.post("/v1/arms", json={"name": "w", "operator": "ties", "warm_start_from": "ghost"}).status_code == 404
    assert client.post("/v1/arms/ghost/retire").status_code == 404
    assert client.post("/v1/arms/ties9/retire").json() == {"name": "ties9", "status": "retired"}
    assert "ties9" not in [a["name"] for a in client.get("/v1/arms").json()]
    assert "ties9" in [a["name"] for a in client.get("/v1/arms", params={"all": "true"}).json()]
    with Store(db) as st:
        assert st.arm("ties9")["status"] == "retired" and st.arm("bad") is None


def test_policy_show_set(client, db):
    assert client.get("/v1/policy").json()["name"] == "pooled"  # the default since #10
    r = client.put("/v1/policy", json={"name": "lints", "params": {"epsilon": 0.1}})
    assert r.status_code == 200 and r.json()["name"] == "lints"
    with Store(db) as st:
        assert st.get_setting("policy") == {"name": "lints", "params": {"epsilon": 0.1}}
    for bad in ({"name": "lints", "params": {"epsilon": 0}}, {"name": "nope"},
                {"name": "vw", "params": {"extra": "--readable_model /tmp/x"}}, {"name": "fixed", "params": {"arm": "ghost"}}):
        r = client.put("/v1/policy", json=bad)
        assert r.status_code in (404, 422), (bad, r.text)
    with Store(db) as st:
        assert st.get_setting("policy")["name"] == "lints"


def test_stats_match_the_database(client, db):
    events = [_propose(client, x / 10, seed=x) for x in range(6)]
    for p in events[:4]:
        client.post(f"/v1/events/{p['event_id']}/reward", json={"value": 0.1 * p["event_id"]})
    rows = {r["arm"]: r for r in client.get("/v1/stats").json()}
    with Store(db) as st:
        for r in st.arm_stats():
            assert rows[r["arm"]]["proposals"] == r["proposals"] and rows[r["arm"]]["pulls"] == r["pulls"]
            if r["mean_reward"] is not None:
                assert rows[r["arm"]]["mean_reward"] == pytest.approx(r["mean_reward"])
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)


def test_tasks_and_models(client, db, tmp_path):
    from feature_models import make_base, make_finetune

    r = client.post("/v1/tasks", json={"name": "code", "probes": ["def f():", "  ", "x = 1"]})
    assert r.json() == {"name": "code", "new": True, "probes": 2}
    assert client.post("/v1/tasks", json={"name": "code", "probes": []}).status_code == 422
    assert [t["n_probes"] for t in client.get("/v1/tasks").json() if t["name"] == "code"] == [2]
    base = make_base(tmp_path / "base", seed=0)
    ft = make_finetune(base, tmp_path / "ft", seed=1)
    assert client.post("/v1/models", json={"name": "base", "path": str(base)}).status_code == 201
    r = client.post("/v1/models", json={"name": "ft", "path": str(ft), "base": "base"})
    assert r.status_code == 201
    with Store(db) as st:
        assert st.model("ft")["fingerprint"] == r.json()["fingerprint"]
    # the facade's payload as is: a model registered without probes has no "probes" key
    assert set(r.json()) == {"name", "path", "base", "fingerprint", "model_type", "architectures", "tensors", "bytes"}
    listed = client.get("/v1/models").json()
    assert [m["name"] for m in listed] == ["base", "ft"] and set(listed[0]) == {"name", "path", "base", "fingerprint",
                                                                               "created_at"}
    assert client.post("/v1/models", json={"name": "x", "path": str(tmp_path / "none")}).status_code == 422
    assert client.post("/v1/models", json={"name": "y", "path": str(ft), "base": "ghost"}).status_code in (404, 422)


def test_export_is_the_decision_log(client, db):
    for x in range(3):
        _propose(client, x / 3, seed=x)
    client.post("/v1/events/2/reward", json={"value": 0.5})
    lines = client.get("/v1/events").text.splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [1, 2, 3]
    rewarded = client.get("/v1/events", params={"rewarded_only": "true"}).text.splitlines()
    assert [json.loads(line)["reward"] for line in rewarded] == [0.5]


def test_health(client):
    _propose(client)
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["events"] == 1 and h["rewards"] == 0 and h["pending_rewards"] == 1
    assert h["schema_version"] == 4 and h["reward_window"] is None


# -- reward join window ---------------------------------------------------------------------
def _close_window(client, now_offset: float):
    import time

    from bandit.service.join_window import close_overdue

    rt = client.app.state.runtime
    return rt.service.call_sync(close_overdue, rt.window, time.time() + now_offset)


def test_window_default_reward_is_a_real_reward_that_rebuild_replays(db):
    with TestClient(make_app(db, reward_window=60, default_reward=0.2)) as client:
        old, fresh = _propose(client, 0.1, seed=1), _propose(client, 0.9, seed=2)
        client.post(f"/v1/events/{fresh['event_id']}/reward", json={"value": 0.9})
        assert _close_window(client, 0) == {"defaulted": [], "expired": []}  # nothing is 60 s old
        closed = _close_window(client, 61)
        assert closed == {"defaulted": [old["event_id"]], "expired": []}
        ev = client.get(f"/v1/events/{old['event_id']}").json()
        assert ev["reward"] == 0.2 and ev["reward_source"] == "default"
        late = client.post(f"/v1/events/{old['event_id']}/reward", json={"value": 0.7})
        assert late.status_code == 409 and "default reward" in late.json()["error"]
        assert client.post(f"/v1/events/{old['event_id']}/reward", json={"value": 0.2}).json()["duplicate"]
        assert client.get("/v1/rebuild").json() == {"arms": 8, "rewards": 2, "max_abs_diff": 0.0, "mismatched": [],
                                                    "written": False, "clean": True}
        assert client.get("/v1/health").json()["pending_rewards"] == 0
        exported = {r["event_id"]: r for r in map(json.loads, client.get("/v1/events").text.splitlines())}
        assert exported[old["event_id"]]["reward_source"] == "default"
        assert exported[fresh["event_id"]]["reward_source"] == "client"
    with Store(db) as st:
        assert st.posterior("ridge", old["arm"])["n"] >= 1
        assert st.reward_row(fresh["event_id"])["source"] == "client"


def test_window_expiry_closes_the_event_and_teaches_nothing(db):
    with TestClient(make_app(db, reward_window=60)) as client:
        p = _propose(client)
        with Store(db) as st:
            before = st.posterior("ridge", p["arm"])
        assert _close_window(client, 61) == {"defaulted": [], "expired": [p["event_id"]]}
        r = client.post(f"/v1/events/{p['event_id']}/reward", json={"value": 0.5})
        assert r.status_code == 409 and "expired" in r.json()["error"]
        expired_at = client.get(f"/v1/events/{p['event_id']}").json()["expired_at"]
        assert expired_at is not None
        (line,) = client.get("/v1/events").text.splitlines()
        assert json.loads(line)["expired_at"] == expired_at and json.loads(line)["reward"] is None
    with Store(db) as st:
        assert st.count_rewards() == 0 and st.posterior("ridge", p["arm"]) == before


def test_window_options_are_checked():
    from bandit.errors import InvalidInput
    from bandit.service.join_window import JoinWindow

    for seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidInput):
            JoinWindow(seconds, None)
    with pytest.raises(InvalidInput):
        JoinWindow(10, "1e300")


# -- auth -----------------------------------------------------------------------------------
def test_token_required_and_constant_time(db):
    token = "s3cret-token-0123456789"
    with TestClient(make_app(db, token=token)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
            r = client.post("/v1/propose", json={"task": "t", "context": {"a": 1}}, headers=headers)
            assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token"}
            assert client.get("/", headers=headers).status_code == 401
        assert _counts(db) == (0, 0)
        # liveness stays open, but says nothing about the data without the token
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
            r = client.get("/v1/health", headers=headers)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
        full = client.get("/v1/health", headers={"Authorization": f"Bearer {token}"}).json()
        assert full["status"] == "ok" and full["events"] == 0 and full["schema_version"] == 4 and "version" in full
        ok = client.post("/v1/propose", json={"task": "t", "context": {"a": 1}},
                         headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and _counts(db) == (1, 0)


def test_non_loopback_needs_a_token(tmp_path):
    from bandit.errors import InvalidInput
    from bandit.server.auth import is_loopback, load_token, require_token_off_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(InvalidInput, match="needs a token"):
        require_token_off_loopback("0.0.0.0", None)
    with pytest.raises(InvalidInput, match="too short"):
        require_token_off_loopback("0.0.0.0", "short")
    require_token_off_loopback("127.0.0.1", None)
    f = tmp_path / "tok"
    f.write_text("  abcdefabcdefabcdef\n")
    assert load_token(str(f), env={}) == "abcdefabcdefabcdef"
    assert load_token(None, env={"BANDIT_TOKEN": "fromenv-0123456789"}) == "fromenv-0123456789"
    assert load_token(None, env={}) is None
    f.write_text("\n")
    with pytest.raises(InvalidInput, match="empty"):
        load_token(str(f), env={})


# -- jobs ----------------------------------------------------------------------------------------
def test_replay_job_on_an_uploaded_table(client, tmp_path):
    from bandit.offline.outcomes import synthetic_outcomes, write_outcomes
    from bandit.offline.replay import replay_outcomes

    path = tmp_path / "o.csv"
    write_outcomes(synthetic_outcomes(n_rows=60, seed=3), path)
    r = client.post("/v1/replays", json={"table": path.read_text(), "policies": ["linucb", "random"], "seeds": 2})
    assert r.status_code == 202 and r.json()["state"] == "queued"
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    assert job["done"] == job["total"] == 4
    local = replay_outcomes(path, ["linucb", "random"], 2)
    assert json.dumps(job["result"]["policies"], sort_keys=True, default=float) == \
        json.dumps(json.loads(json.dumps(local["policies"], default=float)), sort_keys=True, default=float)
    bad = client.post("/v1/replays", json={"table": "task,model_a\n", "seeds": 2})
    assert bad.status_code == 422
    assert client.post("/v1/replays", json={"table": path.read_text(), "seeds": 0}).status_code == 422
    assert client.get("/v1/jobs/999").status_code == 404
    assert client.get("/v1/jobs/x").status_code == 422
    assert [j["id"] for j in client.get("/v1/jobs").json()] == [job["id"]]


def test_the_running_server_sweeps_the_window_itself(db):
    import time

    with TestClient(make_app(db, reward_window=0.3, default_reward=0.25, sweep_every=0.1)) as client:
        p = _propose(client)
        deadline = time.monotonic() + 10
        while client.get(f"/v1/events/{p['event_id']}").json()["reward"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        ev = client.get(f"/v1/events/{p['event_id']}").json()
        assert ev["reward"] == 0.25 and ev["reward_source"] == "default"
        assert client.get("/v1/health").json()["reward_window"] == {"seconds": 0.3, "default_reward": 0.25,
                                                                     "on_timeout": "default_reward"}


def test_response_models_are_the_facade_records():
    """The OpenAPI document's response shapes are made from bandit/service/records.py: a
    field added to a record is documented at once."""
    import dataclasses

    from bandit.server import schemas
    from bandit.service import records

    pairs = {schemas.Proposal: records.Proposal, schemas.Arm: records.Arm, schemas.PolicyView: records.PolicyInfo,
             schemas.ArmStats: records.ArmStats, schemas.ModelAdded: records.Model,
             schemas.ModelRow: records.ModelRow, schemas.TaskRow: records.TaskRow,
             schemas.TaskAdded: records.Task, schemas.Rebuild: records.RebuildReport}
    for model, record in pairs.items():
        names = [f.name for f in dataclasses.fields(record)]
        assert list(model.model_fields)[:len(names)] == names
        for f in dataclasses.fields(record):
            field = model.model_fields[f.name]
            assert field.is_required() == (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    assert list(schemas.Rebuild.model_fields) == [*(f.name for f in dataclasses.fields(records.RebuildReport)), "clean"]
    assert schemas.Proposal.model_fields["pmf"].annotation == list[schemas.PmfEntry]
