"""`bandit outcomes`: an outcome table for a registered catalog, scored by the user's command."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from bandit.offline.outcomes import read_outcomes
from bandit.service import Service
from cli import main
from feature_models import make_base, make_finetune

# Reward = the sum of every weight of the merged folder (numpy only, so it starts fast);
# the folder's name and the two source names are printed first, so only the last number counts.
SCORE = (f"{sys.executable} -c \"import sys, glob, safetensors.numpy as s; "
         "w = [v.astype('float64').sum() for f in sorted(glob.glob(sys.argv[1] + '/*.safetensors')) "
         "for v in s.load_file(f).values()]; print(sys.argv[2], sys.argv[3], 7, 'score', sum(w))\" {model} {a} {b}")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    base = make_base(root / "base", seed=0)
    db = str(root / "c.db")
    svc = Service(db)
    from bandit.service.catalog import add_model

    add_model(svc.store, "base", str(base))
    for n, seed in (("a", 1), ("b", 2), ("c", 3)):
        add_model(svc.store, n, str(make_finetune(base, root / n, seed=seed)), "base")
    for arm in svc.store.arms():  # two arms keep the test short: 6 ordered pairs x 2 merges
        if arm["name"] not in ("linear", "ties"):
            svc.retire_arm(arm["name"])
    svc.store.close()
    return db


def run(args):
    return CliRunner().invoke(main, args)


def weight_sum(folder) -> float:
    import glob

    import safetensors.numpy as s

    return float(sum(v.astype("float64").sum() for f in sorted(glob.glob(f"{folder}/*.safetensors"))
                     for v in s.load_file(f).values()))


def test_table_rewards_cache_and_resume(catalog, tmp_path):
    out, cache = tmp_path / "t.csv", tmp_path / "cache.json"
    common = ["--evaluate", SCORE, "--out", str(out), "--cache", str(cache), "--structural-only", "--db", catalog,
              "--json"]
    first = run(["outcomes", "--models", "a", "b", *common])
    assert first.exit_code == 0, first.output
    rep = json.loads(first.output)
    assert (rep["rows"], rep["requests"], rep["merges_run"], rep["merges_cached"]) == (2, 1, 4, 0)

    res = run(["outcomes", "--models", "a", "b", "c", *common])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    # only the two new pairs' merges run: (a,c) (c,a) (b,c) (c,b) x 2 arms
    assert (rep["rows"], rep["requests"], rep["merges_run"], rep["merges_cached"]) == (6, 3, 8, 4)
    table = read_outcomes(out)
    assert table.arms == ["linear", "ties"]
    assert table.pairs == [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")]
    assert [list(g) for g in table.request_groups()] == [[0, 1], [2, 3], [4, 5]]
    assert table.features and set(table.tasks) == {"default"}

    # one cell against a merge done by hand with the engine
    from merging.engine import run_merge
    from merging.recipe import Recipe
    from store import Store

    with Store(catalog) as st:
        paths = {m["name"]: m["path"] for m in st.models()}
    ties = [a for a in Store(catalog).arms() if a["name"] == "ties"][0]
    recipe = Recipe.from_arm("ties", ties["params"], [paths["c"], paths["a"]], paths["base"], seed=0)
    run_merge(recipe, tmp_path / "by_hand", device="cpu", progress=False)
    assert table.R[3, 1] == pytest.approx(weight_sum(tmp_path / "by_hand"), rel=1e-9)

    again = run(["outcomes", "--models", "a", "b", "c", *common])
    assert json.loads(again.output)["merges_run"] == 0
    np.testing.assert_array_equal(read_outcomes(out).R, table.R)
    text = run(["outcomes", "--models", "a", "b", "c", *common[:-1]])
    assert "best fixed arm, order as listed" in text.output and "(0 merges run, 12 from the cache)" in text.output


@pytest.mark.parametrize("command, message", [
    ("sh -c 'echo cannot load {a} {b} >&2; exit 3'",
     "error: merge linear of a + b: the evaluation command exited with status 3: cannot load a b"),
    ("echo no reward here", "error: merge linear of a + b: the evaluation command printed no number on stdout"),
    ("echo 1 {nope}", "error: --evaluate: unknown placeholder {nope}"),
    ("echo 1", "error: --evaluate: the command needs {model}"),
])
def test_a_failing_evaluation_is_one_line_naming_the_merge(catalog, tmp_path, command, message):
    out = tmp_path / "t.csv"
    if "{model}" not in command and "{nope}" not in command and "needs" not in message:
        command += " {model}"
    res = run(["outcomes", "-m", "a", "b", "--evaluate", command, "--out", str(out), "--structural-only",
               "--db", catalog])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [message] or res.output.strip().startswith(message), res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_parallel_jobs_give_the_same_table(catalog, tmp_path):
    serial, parallel = tmp_path / "s.csv", tmp_path / "p.csv"
    for out, jobs in ((serial, "1"), (parallel, "2")):
        res = run(["outcomes", "-m", "a", "b", "--evaluate", SCORE, "--out", str(out), "--structural-only",
                   "--jobs", jobs, "--db", catalog, "--json"])
        assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read_outcomes(serial).R, read_outcomes(parallel).R)


def test_unknown_model_task_and_database(catalog, tmp_path):
    base = ["--evaluate", SCORE, "--out", str(tmp_path / "t.csv")]
    res = run(["outcomes", "-m", "a", "zz", *base, "--db", catalog])
    assert res.exit_code == 1 and "unknown model 'zz'" in res.output
    res = run(["outcomes", "-m", "a", "b", "--task", "nope", *base, "--db", catalog])
    assert res.exit_code == 1 and "unknown task 'nope'" in res.output
    res = run(["outcomes", "-m", "a", "b", *base, "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 1 and "no such database" in res.output
    assert not (tmp_path / "none.db").exists()
