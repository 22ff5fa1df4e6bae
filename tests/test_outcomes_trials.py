"""`bandit outcomes --trial-merges`: every row carries every arm's trial-merge signals as
a:<arm>:<feature> columns, equal to a direct trial, read back as action features, cached."""
import json

import pytest
from click.testing import CliRunner

from bandit.offline.outcomes import read_outcomes
from bandit.service import Service
from cli import main
from features.trial import ACTION_CACHE, TRIAL_FEATURES

TASK_PROBES = ["hello w", "abc", "the quick", "zz top"]
OWN_PROBES = ["a1b2", "one two", "qwerty"]  # model a's own; b falls back to the task's
REWARD = "test -d {model} && echo 0.5"  # the rewards are not what is tested here
ARMS = ("linear", "ties")


@pytest.fixture
def family(trial_family):
    return trial_family


def catalog(tmp_path, family, *, probes: bool) -> str:
    db = str(tmp_path / "c.db")
    svc = Service(db)
    from bandit.service.catalog import add_model

    add_model(svc.store, "base", str(family["base"]))
    add_model(svc.store, "a", str(family["a"]), "base", OWN_PROBES if probes else None)
    add_model(svc.store, "b", str(family["b"]), "base")
    if probes:
        svc.add_task("t", TASK_PROBES)
    for arm in svc.store.arms():  # two arms: 2 ordered pairs x 2 arms = 4 trials
        if arm["name"] not in ARMS:
            svc.retire_arm(arm["name"])
    svc.store.close()
    return db


def outcomes(db, out, *extra):
    return CliRunner().invoke(main, ["outcomes", "-m", "a", "b", "--evaluate", REWARD, "--out", str(out),
                                     "--structural-only", "--device", "cpu", "--db", db, *extra])


def test_trial_columns_match_a_direct_trial_and_come_from_the_cache_again(tmp_path, family, monkeypatch):
    from features.trial import TrialRunner

    monkeypatch.setenv("SIMMERGE_HOME", str(tmp_path / "home"))
    db, out = catalog(tmp_path, family, probes=True), tmp_path / "t.csv"
    res = outcomes(db, out, "--task", "t", "--trial-merges", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert (rep["trials"]["merges"], rep["trials"]["cached"]) == (4, 0)

    table = read_outcomes(out)
    assert table.arms == list(ARMS) and table.pairs == [("a", "b"), ("b", "a")]
    assert sorted(table.action_features) == sorted(TRIAL_FEATURES)
    header = out.read_text().splitlines()[0].split(",")
    assert all(f"a:{arm}:{f}" in header for arm in ARMS for f in TRIAL_FEATURES)

    # (a, b) under ties: a is scored on its own probes, b on the task's
    cache_dir = tmp_path / "home" / "cache"
    runner = TrialRunner(family["base"], family["a"], family["b"], OWN_PROBES, TASK_PROBES, device="cpu",
                         cache_dir=cache_dir)
    assert runner.reference_cache_hits == 2  # the outcomes run computed and cached both references
    params = {a["name"]: a["params"] for a in Service(db).store.arms()}
    want = runner.trial("ties", params["ties"]).features
    got = table.action_contexts()[0][ARMS.index("ties")]
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.0 <= got["trial_exact"] <= 1.0 and got["trial_exact"] == pytest.approx(
        0.5 * (got["trial_exact_a"] + got["trial_exact_b"]), abs=1e-12)
    # the reverse order swaps which expert is A: its signals are the same experts' other way round
    back = TrialRunner(family["base"], family["b"], family["a"], TASK_PROBES, OWN_PROBES, device="cpu",
                       cache_dir=cache_dir).trial("linear", params["linear"]).features
    assert table.action_contexts()[1][ARMS.index("linear")] == pytest.approx(back, abs=1e-12)

    # a second run merges nothing: rewards and trial features come from their caches
    entries = json.loads((cache_dir / ACTION_CACHE).read_text())
    again = outcomes(db, out, "--task", "t", "--trial-merges", "--json")
    assert again.exit_code == 0, again.output
    rep = json.loads(again.output)
    assert (rep["merges_run"], rep["trials"]["merges"], rep["trials"]["cached"]) == (0, 0, 4)
    assert json.loads((cache_dir / ACTION_CACHE).read_text()) == entries
    assert read_outcomes(out).action_contexts() == table.action_contexts()

    text = outcomes(db, out, "--task", "t", "--trial-merges")
    assert "trial merges: 0 run" in text.output and "4 from the cache" in text.output

    # without the flag, no trial columns
    plain = outcomes(db, tmp_path / "plain.csv", "--task", "t", "--json")
    assert plain.exit_code == 0 and "trials" not in json.loads(plain.output)
    assert read_outcomes(tmp_path / "plain.csv").action_features == []


def test_trial_merges_without_probes_is_one_line_and_writes_nothing(tmp_path, family, monkeypatch):
    monkeypatch.setenv("SIMMERGE_HOME", str(tmp_path / "home"))
    db, out = catalog(tmp_path, family, probes=False), tmp_path / "t.csv"
    res = outcomes(db, out, "--trial-merges")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trial merges need probe texts: register a with --probes")
    assert not out.exists() and not (tmp_path / "t.csv.cache.json").exists()
    assert not (tmp_path / "home" / "cache" / ACTION_CACHE).exists()
