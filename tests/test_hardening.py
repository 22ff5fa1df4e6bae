"""Inputs that used to end in a traceback or break a database for good: each is now one
line on stderr, exit code 1, and the database exactly as before."""
import json
import os
import sqlite3
import stat

import pytest

from store import Store


def _db_state(db: str):
    with Store(db) as s:
        return (
            list(s.events()), s.count_rewards(), s.posteriors("ridge"), s.arms(), s.tasks(), s.models(),
            s.get_setting("policy"),
        )


@pytest.fixture
def run(cli_run):
    cli_run("propose", "--task", "t", "-f", "a=0.5", "--seed", "0")
    cli_run("reward", "1", "0.9")
    cli_run("propose", "--task", "t", "-f", "a=0.2", "--seed", "1")  # event 2, no reward yet
    return cli_run


def _fails_cleanly(run, args, message):
    before = _db_state(run.db)
    res = run(*args, code=1)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert _db_state(run.db) == before
    return lines[0]


BIG = "1" * 400


@pytest.mark.parametrize(
    "args, message",
    [
        (("propose", "--task", "t", "-f", "a=1e200"), "outside the accepted range"),
        (("propose", "--task", "t", "-f", f"a={BIG}"), "outside the accepted range"),
        (("propose", "--task", "t", "--context-json", f'{{"a": {BIG}}}'), "outside the accepted range"),
        (("propose", "--task", "t", "--context-json", '{"a": 1e308}'), "outside the accepted range"),
        (("propose", "--task", "t", "--context-json", '{"a": true}'), "must be a finite number"),
        (("propose", "--task", "t", "--context-json", json.dumps({f"f{i}": 0.5 for i in range(257)})),
         "at most 256 features"),
        (("reward", "2", "1e308"), "outside the accepted range"),
        (("reward", "2", "-1000001"), "outside the accepted range"),
        (("reward", "2", "1_0"), "not a number"),
        (("reward", "2", "0x10"), "not a number"),
        (("reward", str(2**63), "0.5"), "not an event id"),
        (("reward", "9" * 40, "0.5"), "not an event id"),
        (("reward", "0", "0.5"), "not an event id"),
        (("reward", "1_0", "0.5"), "not an event id"),
        (("propose", "--task", "t", "--seed", "-1"), "not a seed"),
        (("propose", "--task", "t", "--seed", str(2**64)), "not a seed"),
        (("propose", "--task", "t", "--seed", "1_0"), "not a seed"),
        (("policy", "set", "vw", "extra=--readable_model /tmp/x"), "has no parameter 'extra'"),
        (("policy", "set", "vw:extra=-q"), "has no parameter 'extra'"),
        (("arms", "add", "x", "--operator", "ties", "-p", "density=1_0"), "not a number"),
        (("arms", "add", "x", "--operator", "ties", "-p", "density=.inf"), "not a number"),
        (("arms", "add", "x", "--operator", "ties", "--shrink", "nan"), "not a finite number"),
        (("policy", "set", "linucb", "alpha=1:30"), "not a number"),
        (("propose", "--task", "t", "stray"), "model names follow --models"),
    ],
)
def test_bad_values_are_one_line_and_change_nothing(run, args, message):
    _fails_cleanly(run, args, message)


def test_a_reward_at_the_bound_is_accepted_and_rebuild_matches(run):
    out = json.loads(run("reward", "2", "-1e6", "--json").output)  # a negative value, not an option
    assert out["reward"] == -1e6 and out["duplicate"] is False
    assert "match the live posteriors" in run("rebuild", "--check").output


def test_probes_from_a_binary_file_are_refused(run, tmp_path):
    blob = tmp_path / "probes.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    _fails_cleanly(run, ("tasks", "add", "t2", "--probes", str(blob)), "binary")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    _fails_cleanly(run, ("tasks", "add", "t2", "--probes", str(latin)), "not UTF-8")


# -- the database itself failing -------------------------------------------------------------
def _after_open(monkeypatch, pragma: str):
    """Every Store opened from now on runs `pragma` right after opening: a real SQLite
    failure (not a mocked exception) on its next write."""
    from store import store as store_module

    original = store_module.Store.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if pragma == "full":
            pages = self.conn.execute("PRAGMA page_count").fetchone()["page_count"]
            self.conn.execute(f"PRAGMA max_page_count = {pages}")
        else:
            self.conn.execute(pragma)

    monkeypatch.setattr(store_module.Store, "__init__", init)


def _fill_db(run, n=60):
    # enough rows that the next writes need new pages
    for i in range(n):
        run("propose", "--task", "t", "-f", f"f{i}=0.1", "--seed", str(i))


@pytest.mark.parametrize("args", [("reward", "2", "0.5"), ("propose", "--task", "t", "-f", "zz=0.5"),
                                  ("arms", "add", "new_arm", "--operator", "linear")])
def test_read_only_database(run, monkeypatch, args):
    _after_open(monkeypatch, "PRAGMA query_only = ON")
    _fails_cleanly(run, args, "read-only")


def test_full_disk(run, monkeypatch):
    _fill_db(run)
    _after_open(monkeypatch, "full")
    big = json.dumps({f"feature_{i}_" + "x" * 150: 0.5 for i in range(250)})  # within the 256-feature bound
    _fails_cleanly(run, ("propose", "--task", "t", "--context-json", big), "disk is full")


def test_lock_held_past_the_timeout(run, monkeypatch):
    from store import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(run.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        before_rewards = sqlite3.connect(run.db).execute("SELECT count(*) FROM rewards").fetchone()
        res = run("reward", "2", "0.5", code=1)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "locked" in lines[0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sqlite3.connect(run.db).execute("SELECT count(*) FROM rewards").fetchone() == before_rewards


def test_facade_reports_store_failures_with_a_kind(tmp_path, monkeypatch):
    from bandit.errors import BanditError
    from bandit.service import Service

    svc = Service(str(tmp_path / "k.db"))
    p = svc.propose("t", {"a": 0.1}, seed=0)
    svc.store.conn.execute("PRAGMA query_only = ON")
    with pytest.raises(BanditError) as e:
        svc.reward(p.event_id, 0.5)
    assert e.value.kind == "unavailable" and "read-only" in str(e.value)
    svc.store.conn.execute("PRAGMA query_only = OFF")
    with pytest.raises(BanditError) as e:
        svc.reward(99, 0.5)
    assert e.value.kind == "not_found"
    svc.reward(p.event_id, 0.5)
    with pytest.raises(BanditError) as e:
        svc.reward(p.event_id, 0.6)
    assert e.value.kind == "conflict"
    with pytest.raises(BanditError) as e:
        svc.add_arm("linear", "linear")
    assert e.value.kind == "conflict"
    with pytest.raises(BanditError) as e:
        svc.propose("t", {"a": float("nan")})
    assert e.value.kind == "invalid"


# -- rebuild --check and non-finite statistics ----------------------------------------------
def test_rebuild_check_reports_a_nan_posterior(run):
    conn = sqlite3.connect(run.db)
    arm, a_blob = conn.execute("SELECT arm, A FROM posteriors WHERE n > 0").fetchone()
    nan_blob = bytearray(a_blob)
    nan_blob[0:8] = bytes.fromhex("000000000000f87f")  # little-endian NaN
    conn.execute("UPDATE posteriors SET A = ? WHERE arm = ?", (bytes(nan_blob), arm))
    conn.commit()
    conn.close()
    res = run("rebuild", "--check", code=1)
    assert f"DIFFER for {arm}" in res.output
    res = run("rebuild", "--check", "--json", code=1)
    out = json.loads(res.output)
    assert out["mismatched"] == [arm] and out["clean"] is False
    run("rebuild")
    assert "match the live posteriors" in run("rebuild", "--check").output


# -- snapshot files --------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_snapshots_respect_the_umask(tmp_path, umask, mode):
    from bandit.service import Service

    old = os.umask(umask)
    try:
        svc = Service(str(tmp_path / "u.db"))
        svc.set_policy("hybrid", {})
        svc.propose("t", {"a": 0.1}, seed=0)
    finally:
        os.umask(old)
    snapshot = tmp_path / "u.db.hybrid.npz"
    assert stat.S_IMODE(snapshot.stat().st_mode) == mode


# -- the grammar of bandit/inputs.py ---------------------------------------------------------
@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("-3", -3.0), ("1e-4", 1e-4), ("+.5", 0.5), ("5.", 5.0),
                                         (" 2E3 ", 2000.0), ("-0", 0.0)])
def test_plain_decimals_are_numbers(text, value):
    from bandit.inputs import parse_number

    assert parse_number(text, "x") == value


@pytest.mark.parametrize("text", ["1_0", "0x10", "1e", "e5", ".", "--1", "1.2.3", "", " ", "\u0661", "1e+",
                                  "inf", "-nan", "Infinity", "1,5"])
def test_everything_else_is_refused(text):
    from bandit.errors import InvalidInput
    from bandit.inputs import parse_number

    with pytest.raises(InvalidInput):
        parse_number(text, "x")


def test_bounds_ids_seeds_and_params():
    from bandit.errors import InvalidInput
    from bandit.inputs import MAX_ABS_VALUE, parse_event_id, parse_params, parse_reward, parse_seed

    assert parse_reward(str(MAX_ABS_VALUE)) == 1e6 and parse_reward("-1e6") == -1e6
    with pytest.raises(InvalidInput):
        parse_reward("1000000.1")
    assert parse_event_id(str(2**63 - 1)) == 2**63 - 1 and parse_event_id(1) == 1
    assert parse_seed("0") == 0 and parse_seed(2**63 - 1) == 2**63 - 1 and parse_seed(None) is None
    for bad in (True, 2**63, -1):
        with pytest.raises(InvalidInput):
            parse_seed(bad)
    assert parse_params(["w=0.7,0.3", "l=[1, 2]", "n=true", "e=squarecb", "d=operator+params", "k=3"]) == {
        "w": [0.7, 0.3], "l": [1, 2], "n": True, "e": "squarecb", "d": "operator+params", "k": 3}
    with pytest.raises(InvalidInput, match="given twice"):
        parse_params(["a=1", "a=2"])
