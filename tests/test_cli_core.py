"""The CLI end to end through click's CliRunner, checked against the database."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(cli_run):
    return cli_run


def test_propose_reward_loop_updates_database(run):
    res = run("propose", "--task", "sum", "-f", "kinship=0.4", "--context-json", '{"kl": 0.2}', "--seed", "3", "--json")
    p = json.loads(res.output)
    assert p["event_id"] == 1 and p["task"] == "sum"
    assert sum(e["p"] for e in p["pmf"]) == pytest.approx(1.0)
    res = run("reward", "1", "0.75", "--json")
    out = json.loads(res.output)
    assert out == {"event_id": 1, "arm": p["arm"], "reward": 0.75, "duplicate": False, "pulls": 1}
    store = Store(run.db)
    assert store.reward_row(1)["value"] == 0.75
    post = store.posterior("ridge", p["arm"])
    assert post["n"] == 1 and post["schema"] == ["kl", "kinship"]
    res = run("rebuild", "--check")
    assert "match the live posteriors" in res.output


def test_text_output(run):
    res = run("propose", "--task", "sum", "--seed", "1")
    assert res.output.startswith("event 1: ")
    assert "bandit reward 1 VALUE" in res.output
    res = run("reward", "1", "1")
    assert "reward 1 recorded" in res.output
    res = run("reward", "1", "1")
    assert "recorded already" in res.output
    res = run("stats")
    assert "proposals" in res.output.splitlines()[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (("reward", "1", "nan"), "not a finite number"),
        (("reward", "1", "inf"), "not a finite number"),
        (("reward", "1", "high"), "not a number"),
        (("reward", "77", "0.5"), "no event 77"),
        (("reward", "abc", "0.5"), "not an event id"),
        (("reward", "1", "0.1"), "already has reward"),
        (("propose", "--task", "t", "-f", "x=abc"), "not a number"),
        (("propose", "--task", "t", "-f", "novalue"), "NAME=VALUE"),
        (("propose", "--task", "t", "--context-json", "[1]"), "JSON object"),
        (("propose", "--task", "t", "--context-json", "{bad"), "not valid JSON"),
        (("propose", "--task", "t", "--context-json", '{"a": NaN}'), "finite number"),
        (("arms", "add", "x", "--operator", "ties", "-p", "density"), "key=value"),
        (("arms", "add", "ties", "--operator", "ties"), "exists already"),
        (("arms", "add", "y", "--operator", "ties", "--warm-start-from", "zzz"), "unknown arm"),
        (("arms", "retire", "zzz"), "no arm named"),
    ],
)
def test_bad_input_one_line_exit_1_nothing_changed(run, args, message):
    run("propose", "--task", "t", "--seed", "0")
    run("reward", "1", "0.9")
    before = Store(run.db)
    snapshot = (before.count_events(), before.count_rewards(), before.posteriors("ridge"), before.arms())
    res = run(*args, code=1)
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    after = Store(run.db)
    assert (after.count_events(), after.count_rewards(), after.posteriors("ridge"), after.arms()) == snapshot


def test_usage_errors_exit_2(run):
    res = CliRunner().invoke(main, ["reward", "1"])
    assert res.exit_code == 2


def test_arms_and_tasks_commands(run, tmp_path):
    run("arms", "add", "ties_light", "--operator", "ties", "-p", "density=0.2", "-p", "normalize=true")
    rows = json.loads(run("arms", "list", "--json").output)
    assert rows[-1] == {"name": "ties_light", "operator": "ties", "params": {"density": 0.2, "normalize": True},
                        "status": "active", "warm_start_from": None}
    run("arms", "retire", "slerp")
    assert "slerp" not in run("arms", "list").output
    assert "[retired]" in run("arms", "list", "--all").output
    probes = tmp_path / "p.txt"
    probes.write_text("first probe\n\nsecond probe\n")
    assert "with 2 probes" in run("tasks", "add", "qa", "--probes", str(probes)).output
    listed = json.loads(run("tasks", "list", "--json").output)
    assert listed[0]["name"] == "qa" and listed[0]["n_probes"] == 2
    assert Store(run.db).task("qa")["probes"] == ["first probe", "second probe"]


def test_missing_db_folder_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["stats", "--db", str(tmp_path / "nope" / "x.db")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_reward_never_creates_a_database(tmp_path):
    res = CliRunner().invoke(main, ["reward", "1", "0.5", "--db", str(tmp_path / "typo.db")])
    assert res.exit_code == 1 and "no such database" in res.output
    assert not (tmp_path / "typo.db").exists()


def test_corrupt_db_is_one_line(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    res = CliRunner().invoke(main, ["stats", "--db", str(bad)])
    assert res.exit_code == 1 and "not a usable SQLite database" in res.output


def test_propose_and_reward_do_not_import_torch(tmp_path):
    db = str(tmp_path / "imp.db")
    code = (
        "import sys, runpy\n"
        "sys.argv = ['bandit', *sys.argv[1:]]\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'sqlite_utils') if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy))\n"
    ) % str(ROOT / "cli.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, "propose", "--task", "t", "--db", db], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    heavy = out.stdout.strip().splitlines()[-1]
    assert "torch" not in heavy and "transformers" not in heavy
    out = subprocess.run([sys.executable, "-c", code, "reward", "1", "0.5", "--db", db], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    # the reward path is plain Python: not even numpy or sqlite-utils
    assert out.stdout.strip().splitlines()[-1] == "HEAVY"
