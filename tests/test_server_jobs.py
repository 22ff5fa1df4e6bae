"""Merge jobs on the server's device, the queue across a restart, the CLI's --server and
the dashboard page."""
import json
import time

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from server_helpers import make_app, running_server, wait_job
from store import Store
from tiny_models import load_tensors, make_llama, perturb


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    base = make_llama(root / "base", seed=0)
    return {"base": base, "a": perturb(base, root / "a", seed=1), "b": perturb(base, root / "b", seed=2)}


def _register(client, family):
    for name in ("base", "a", "b"):
        body = {"name": name, "path": str(family[name])} | ({} if name == "base" else {"base": "base"})
        assert client.post("/v1/models", json=body).status_code == 201


def test_merge_job_of_an_event_writes_what_the_engine_writes(tmp_path, family):
    from merging.engine import run_merge
    from merging.recipe import Recipe

    db = str(tmp_path / "s.db")
    with TestClient(make_app(db, device="cpu")) as client:
        _register(client, family)
        p = client.post("/v1/propose", json={"task": "t", "models": ["a", "b"], "structural_only": True,
                                             "seed": 3}).json()
        assert {p["model_a"], p["model_b"]} == {"a", "b"}
        out = tmp_path / "merged"
        r = client.post("/v1/merges", json={"event_id": p["event_id"], "out": str(out)})
        assert r.status_code == 202 and r.json()["state"] == "queued" and r.json()["device"] == "cpu"
        job = wait_job(client, r.json()["id"])
        assert job["state"] == "done", job
        assert job["output"] == str(out) and job["done"] == job["total"] == job["result"]["tensors"]
        reference = run_merge(Recipe.from_dict(p["recipe"]), tmp_path / "reference", device="cpu", progress=False)
        got, want = load_tensors(out), load_tensors(reference.path)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)

        # a recipe instead of an event
        recipe = {"merge_method": "linear", "models": [{"model": str(family["a"]), "parameters": {"weight": 0.5}},
                                                       {"model": str(family["b"]), "parameters": {"weight": 0.5}}]}
        job = wait_job(client, client.post("/v1/merges", json={"recipe": recipe, "out": str(tmp_path / "lin")}).json()["id"])
        assert job["state"] == "done", job
        merged = load_tensors(tmp_path / "lin")
        a, b = load_tensors(family["a"]), load_tensors(family["b"])
        name = next(iter(a))
        assert torch.allclose(merged[name], 0.5 * a[name] + 0.5 * b[name], atol=1e-6)

        # refused before queueing: nothing enters the table
        ctx_only = client.post("/v1/propose", json={"task": "t", "context": {"x": 1}}).json()
        for body, status in [({"event_id": ctx_only["event_id"], "out": str(tmp_path / "m2")}, 422),
                             ({"event_id": 999, "out": str(tmp_path / "m2")}, 404),
                             ({"event_id": p["event_id"], "out": "relative/dir"}, 422),
                             ({"event_id": p["event_id"], "out": str(out)}, 422),  # not empty
                             ({"out": str(tmp_path / "m3")}, 422),
                             ({"recipe": {"merge_method": "no_such"}, "out": str(tmp_path / "m3")}, 422)]:
            r = client.post("/v1/merges", json=body)
            assert r.status_code == status, (body, r.text)
        assert len(client.get("/v1/jobs").json()) == 2


def test_a_failed_merge_is_a_failed_job_with_its_error(tmp_path, family):
    import shutil

    db = str(tmp_path / "s.db")
    gone = tmp_path / "gone"
    shutil.copytree(family["b"], gone)
    recipe = {"merge_method": "linear", "models": [{"model": str(family["a"]), "parameters": {"weight": 0.5}},
                                                   {"model": str(gone), "parameters": {"weight": 0.5}}]}
    app = make_app(db, device="cpu", start_workers=False)
    with TestClient(app) as client:
        job = client.post("/v1/merges", json={"recipe": recipe, "out": str(tmp_path / "o")}).json()
        shutil.rmtree(gone)  # the input vanishes between queueing and running
        from bandit.service.jobs import run_next

        with Store(db) as st:
            assert run_next(st, "merge") == job["id"]
        failed = client.get(f"/v1/jobs/{job['id']}").json()
        assert failed["state"] == "failed" and str(gone) in failed["error"]
        assert not (tmp_path / "o").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.partial")] == []


def test_queue_survives_a_restart(tmp_path, family):
    from store import jobs as job_sql

    db = str(tmp_path / "s.db")
    recipe = {"merge_method": "linear", "models": [{"model": str(family["a"]), "parameters": {"weight": 0.5}},
                                                   {"model": str(family["b"]), "parameters": {"weight": 0.5}}]}
    with TestClient(make_app(db, device="cpu", start_workers=False)) as client:
        first = client.post("/v1/merges", json={"recipe": recipe, "out": str(tmp_path / "one")}).json()
        second = client.post("/v1/merges", json={"recipe": recipe, "out": str(tmp_path / "two")}).json()
    with Store(db) as st:  # as if the server died while merging the first
        with st.transaction():
            assert job_sql.start_job(st, first["id"], 10)
    with TestClient(make_app(db, device="cpu")) as client:
        crashed = client.get(f"/v1/jobs/{first['id']}").json()
        assert crashed["state"] == "failed" and "interrupted" in crashed["error"]
        resumed = wait_job(client, second["id"])
        assert resumed["state"] == "done" and (tmp_path / "two" / "config.json").exists()
    assert not (tmp_path / "one").exists()


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 9)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def test_cli_server_prints_what_the_local_command_prints(tmp_path):
    from cli import main

    db_local, db_remote = str(tmp_path / "local.db"), str(tmp_path / "remote.db")
    runner = CliRunner()

    def both(args_local, url):
        local = runner.invoke(main, args_local + ["--db", db_local])
        remote = runner.invoke(main, args_local + ["--server", url])
        return local, remote

    with running_server(db_remote) as url:
        for args in (["propose", "-t", "t", "-f", "a=0.25", "-f", "b=1", "--seed", "5"],
                     ["reward", "1", "0.5"], ["reward", "1", "0.5"], ["stats"], ["stats", "--json"],
                     ["propose", "-t", "t", "--context-json", '{"a": 0.9}', "--seed", "6", "--json"]):
            local, remote = both(args, url)
            assert local.exit_code == remote.exit_code == 0, (args, local.output, remote.output)
            if "--json" in args:
                # The server's live posterior learned the reward by a rank-one update, a fresh
                # local process refactored it: the same numbers to rounding.
                assert _rounded(json.loads(remote.output)) == _rounded(json.loads(local.output)), args
            else:
                assert remote.output == local.output, args
        local, remote = both(["reward", "1", "0.7"], url)
        assert local.exit_code == remote.exit_code == 1
        assert local.output == remote.output and "already has reward 0.5" in remote.output
        local, remote = both(["reward", "99", "0.7"], url)
        assert remote.exit_code == 1 and remote.output == local.output == "error: no event 99\n"
    with Store(db_remote) as st:
        assert st.count_events() == 2 and st.count_rewards() == 1
    dead = runner.invoke(main, ["stats", "--server", url])
    assert dead.exit_code == 1 and "cannot reach the server" in dead.output


def test_dashboard_shows_arms_curve_events_pending_and_jobs(tmp_path):
    db = str(tmp_path / "s.db")
    with TestClient(make_app(db)) as client:
        for i in range(40):
            p = client.post("/v1/propose", json={"task": "t", "context": {"a": i / 40}, "seed": i}).json()
            if i < 37:
                client.post(f"/v1/events/{p['event_id']}/reward", json={"value": (i % 3) / 2})
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        data = client.get("/v1/dashboard").json()
    with Store(db) as st:
        arms = [a["name"] for a in st.arms()]
        rewards = [r["value"] for r in st.rewards_in_order()]
    assert html.count('<tr class="arm">') == len(arms) and all(f"<td>{a}" in html for a in arms)
    assert html.count('class="series"') == 3 and 'http-equiv="refresh"' in html
    assert html.count('<tr class="event">') == 15 and "pending" in html
    running = [sum(rewards[:k]) / k for k in range(1, len(rewards) + 1)]
    assert data["curves"]["policy"] == pytest.approx(running)
    assert data["pending"]["count"] == 3
    # share over time: 20 slices of 2 events each; each slice's shares sum to 1
    with Store(db) as st:
        chosen = [e["arm"] for e in st.events()]
    share = data["share"]
    assert share["bins"] == 20 and share["edges"][-1] == 40
    for arm, values in share["shares"].items():
        assert values[3] == pytest.approx(chosen[6:8].count(arm) / 2)
    assert all(sum(v[k] for v in share["shares"].values()) == pytest.approx(1.0) for k in range(20))
    assert html.count('class="share-over-time"') == len(set(chosen))
    # SNIPS of uniform random over K actions: Σ w·r / Σ w with w = (1/K)/p over the log
    with Store(db) as st:
        ev = [st.event(r["event_id"]) for r in st.rewards_in_order()]
    w = [(1 / len(e["actions"])) / e["prob"] for e in ev]
    assert data["curves"]["random"][-1] == pytest.approx(sum(wi * e["reward"] for wi, e in zip(w, ev)) / sum(w))
    # a fixed arm (one candidate per event here): its own rewards weighted by 1/p
    best = data["curves"]["best_fixed_arm"]
    own = [(e["reward"], 1 / e["prob"]) for e in ev if e["arm"] == best]
    assert len(own) >= 3
    assert data["curves"]["fixed_final"][best] == pytest.approx(sum(r * w for r, w in own) / sum(w for _, w in own))
    assert data["curves"]["fixed_final"][best] == max(
        v for a, v in data["curves"]["fixed_final"].items() if data["curves"]["fixed_pulls"][a] >= 3)


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "needs a token"),
    (["--default-reward", "0"], "need --reward-window"),
    (["--reward-window", "60"], "exactly one of --default-reward X or --expire"),
    (["--reward-window", "60", "--expire", "--default-reward", "0"], "exactly one of"),
    (["--reward-window", "0", "--expire"], "positive number of seconds"),
    (["--reward-window", "60", "--default-reward", "1_0"], "plain decimal"),
])
def test_serve_refuses_bad_options_in_one_line(tmp_path, args, words, monkeypatch):
    from cli import main

    monkeypatch.delenv("BANDIT_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "s.db"), "--port", "1"] + args)
    assert r.exit_code == 1 and words in r.output, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")


def test_dashboard_curves_follow_new_rewards_incrementally(tmp_path):
    from bandit.service.monitor import reward_curves

    db = str(tmp_path / "s.db")
    with TestClient(make_app(db)) as client:
        for round_ in range(3):
            for i in range(10):
                p = client.post("/v1/propose", json={"task": "t", "context": {"a": i / 10}, "seed": 10 * round_ + i}).json()
                client.post(f"/v1/events/{p['event_id']}/reward", json={"value": ((i + round_) % 5) / 4})
            seen = client.get("/v1/dashboard").json()["curves"]
            with Store(db) as st:
                fresh = reward_curves(st)
            assert seen["rewards"] == 10 * (round_ + 1)
            assert seen == json.loads(json.dumps(fresh))
