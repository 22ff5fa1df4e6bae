"""The outcome table and the demo loop end to end on a reduced zoo."""
import csv
import json

import pytest
from click.testing import CliRunner

from cli import main
from store import Store


@pytest.fixture(scope="module")
def table(reduced_zoo, tmp_path_factory):
    built, _ = reduced_zoo
    out = tmp_path_factory.mktemp("outcomes") / "table.csv"
    res = CliRunner().invoke(main, ["zoo", "outcomes", "--dir", str(built.root), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return built, out, json.loads(res.output)


def test_outcome_table_layout_and_summary(table):
    built, out, summary = table
    rows = list(csv.DictReader(open(out)))
    n_tasks = len(built.tasks)
    assert len(rows) == n_tasks * (n_tasks - 1) == summary["rows"]
    arms = summary["arms"]
    assert [c for c in rows[0] if c.startswith("r:")] == [f"r:{a}" for a in arms]
    assert any(c.startswith("f:kinship") for c in rows[0]) and any(c.startswith("f:kl_") for c in rows[0])
    for r in rows:
        a, b = r["model_a"].removeprefix("expert-"), r["model_b"].removeprefix("expert-")
        assert r["task"] == "+".join(sorted((a, b)))
        for arm in arms:
            assert 0.0 <= float(r[f"r:{arm}"]) <= 1.0
    means = {arm: sum(float(r[f"r:{arm}"]) for r in rows) / len(rows) for arm in arms}
    assert means == pytest.approx(summary["arm_means"])
    oracle = sum(max(float(r[f"r:{arm}"]) for arm in arms) for r in rows) / len(rows)
    assert summary["oracle_mean"] == pytest.approx(oracle)
    assert summary["best_fixed_mean"] == pytest.approx(max(means.values()))
    assert summary["merges_run"] + summary["merges_cached"] == len(rows) * len(arms)


def test_outcome_table_rerun_is_cached(table, tmp_path):
    built, _, first = table
    res = CliRunner().invoke(main, ["zoo", "outcomes", "--dir", str(built.root), "--out", str(tmp_path / "t.jsonl"), "--json"])
    again = json.loads(res.output)
    assert again["merges_run"] == 0 and again["arm_means"] == first["arm_means"]
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == first["rows"] and "r:linear" in json.loads(lines[0])


def test_demo_three_rounds_end_to_end(table, tmp_path):
    built, out, summary = table
    db = tmp_path / "demo.db"
    res = CliRunner().invoke(main, ["demo", "--rounds", "3", "--dir", str(built.root), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["rounds"] == 3 and not s["interrupted"]
    # The default tier: the pooled policy with trial merges; the other tier replayed beside it.
    assert s["policy"] == "pooled" and s["trial_merges"] and s["other_tier"] is not None
    assert "without trial merges" in s["other_tier_label"]
    store = Store(db)
    events = list(store.events())
    assert len(events) == 3 and all(e["reward"] is not None for e in events)
    assert s["bandit"] == pytest.approx(sum(e["reward"] for e in events))
    # the demo's real merges use the table's seed: each reward equals the table's cell
    rows = {(r["model_a"], r["model_b"]): r for r in csv.DictReader(open(built.root / "outcomes.csv"))}
    for e, h in zip(events, s["history"]):
        assert (e["model_a"], e["model_b"]) == (h["model_a"], h["model_b"])
        assert e["reward"] == pytest.approx(float(rows[(e["model_a"], e["model_b"])][f"r:{e['arm']}"]), abs=1e-12)
        assert h["oracle"] >= h["best_fixed"] - 1e-12 and h["oracle"] >= h["random"] - 1e-12
    assert s["oracle"] >= s["bandit"] - 1e-12
    assert (tmp_path / "demo-learning-curve.png").stat().st_size > 10_000
    assert CliRunner().invoke(main, ["rebuild", "--check", "--db", str(db)]).exit_code == 0


def test_demo_stops_cleanly_on_ctrl_c(table, tmp_path):
    """Ctrl-C mid-run: the summary covers the finished rounds, and all of them are stored."""
    from zoo.demo import run_demo
    from zoo.outcomes import build_outcomes

    built, _, _ = table
    summary = build_outcomes(built, None)
    seen = []

    def interrupt_after_two(r):
        seen.append(r)
        if len(seen) == 2:
            raise KeyboardInterrupt

    db = str(tmp_path / "ctrl-c.db")
    s = run_demo(built, summary, db, rounds=5, on_round=interrupt_after_two)
    assert s.interrupted and s.rounds == 2
    events = list(Store(db).events())
    assert len(events) == 2 and all(e["reward"] is not None for e in events)
