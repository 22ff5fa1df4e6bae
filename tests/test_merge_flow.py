"""Models in the catalog, features for candidate pairs, propose over pairs, merge the event."""
import json

import pytest
import torch
from click.testing import CliRunner

from bandit.errors import BanditError
from bandit.service import Service
from cli import main
from feature_models import make_base, make_finetune
from merging.errors import CheckpointError
from store import Store
from tiny_models import load_tensors


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    base = make_base(root / "base", seed=0)
    return {
        "base": base,
        "a": make_finetune(base, root / "a", seed=1),
        "b": make_finetune(base, root / "b", seed=2, scale=0.05),
        "c": make_finetune(base, root / "c", seed=3),
        "other": make_base(root / "other", seed=9, hidden=48),
    }


@pytest.fixture
def svc(tmp_path, family):
    s = Service(str(tmp_path / "m.db"))
    from bandit.service.catalog import add_model

    add_model(s.store, "base", str(family["base"]))
    for n in ("a", "b", "c"):
        add_model(s.store, n, str(family[n]), "base")
    return s


def test_models_registered_with_fingerprints(svc, family):
    rows = {m["name"]: m for m in svc.store.models()}
    assert set(rows) == {"base", "a", "b", "c"}
    assert rows["a"]["base"] == "base" and rows["base"]["base"] is None
    assert rows["a"]["fingerprint"] != rows["b"]["fingerprint"] or rows["a"]["path"] != rows["b"]["path"]


def test_architecture_mismatch_refused(svc, family):
    from bandit.service.catalog import add_model

    with pytest.raises(CheckpointError, match="architecture mismatch"):
        add_model(svc.store, "odd", str(family["other"]), "base")
    assert svc.store.model("odd") is None
    with pytest.raises(BanditError, match="unknown base"):
        add_model(svc.store, "x", str(family["a"]), "nobase")
    with pytest.raises(CheckpointError, match="no such folder"):
        add_model(svc.store, "x", str(family["a"]) + "-missing")


def test_propose_over_ordered_pairs_and_cache(svc):
    p = svc.propose_merge("t", ["a", "b", "c"], seed=1, structural_only=True)
    ev = svc.store.event(p.event_id)
    pairs = [tuple(c) for c in ev["candidates"]]
    assert sorted(pairs) == sorted([(x, y) for x in "abc" for y in "abc" if x != y])
    assert len(ev["actions"]) == 6 * len(svc.arms())
    assert sum(ev["pmf"]) == pytest.approx(1.0)
    assert (p.model_a, p.model_b) == pairs[ev["actions"][ev["chosen"]]["candidate"]]
    # order-sensitive features flip between the two orders of one pair
    ctx = {pair: c for pair, c in zip(pairs, ev["contexts"])}
    assert ctx[("a", "b")]["delta_norm_logratio"] == pytest.approx(-ctx[("b", "a")]["delta_norm_logratio"])
    assert ctx[("a", "b")]["kinship_cos"] == pytest.approx(ctx[("b", "a")]["kinship_cos"])
    # the recipe names the base and the chosen order
    rec = ev["recipe"]
    assert rec["merge_method"] == p.operator and rec["base_model"].endswith("base")
    assert [m["model"].rsplit("/", 1)[-1] for m in rec["models"]] == [p.model_a, p.model_b]
    n_cached = svc.store.conn.execute("SELECT count(*) AS n FROM features").fetchone()["n"]
    assert n_cached == 6
    # second call: every pair from the cache
    from bandit.service.context import pair_features

    assert pair_features(svc.store, "a", "b", None, structural_only=True).cached


def test_changed_checkpoint_misses_cache(svc, family, tmp_path):
    from bandit.service.catalog import add_model
    from bandit.service.context import pair_features

    moved = make_finetune(family["base"], tmp_path / "a2", seed=1)
    add_model(svc.store, "a2", str(moved), "base")
    assert not pair_features(svc.store, "a2", "b", None, structural_only=True).cached
    assert pair_features(svc.store, "a2", "b", None, structural_only=True).cached
    # re-trained in place, same layout, other weights: the fingerprint changes, the cache misses
    make_finetune(family["base"], moved, seed=5)
    assert not pair_features(svc.store, "a2", "b", None, structural_only=True).cached


def test_propose_errors(svc):
    with pytest.raises(BanditError, match="at least two"):
        svc.propose_merge("t", ["a"])
    with pytest.raises(BanditError, match="named twice"):
        svc.propose_merge("t", ["a", "a"])
    with pytest.raises(BanditError, match="unknown model"):
        svc.propose_merge("t", ["a", "zzz"])
    with pytest.raises(BanditError, match="has no base"):
        svc.propose_merge("t", ["a", "base"])
    assert svc.store.count_events() == 0


def test_merge_event_and_cli_flow(svc, tmp_path):
    db = str(svc.store.path)
    runner = CliRunner()
    res = runner.invoke(main, ["propose", "--task", "t", "--models", "a", "b", "--structural-only", "--seed", "4",
                               "--merge-to", str(tmp_path / "merged"), "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)
    assert p["merged"]["tensors"] > 0
    # merging the same event again reproduces the same weights
    res = runner.invoke(main, ["merge", "--event", str(p["event_id"]), "--out", str(tmp_path / "again"), "--db", db])
    assert res.exit_code == 0, res.output
    first, second = load_tensors(tmp_path / "merged"), load_tensors(tmp_path / "again")
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k])
    res = runner.invoke(main, ["reward", str(p["event_id"]), "0.6", "--db", db])
    assert res.exit_code == 0
    assert Store(db).reward_row(p["event_id"])["value"] == 0.6
    # a context-only event has nothing to merge; an unknown one does not exist
    q = svc.propose("t", {"x": 1.0}, seed=0)
    res = runner.invoke(main, ["merge", "--event", str(q.event_id), "--out", str(tmp_path / "none"), "--db", db])
    assert res.exit_code == 1 and "nothing to merge" in res.output
    assert not (tmp_path / "none").exists()
    res = runner.invoke(main, ["merge", "--event", "999", "--out", str(tmp_path / "none"), "--db", db])
    assert res.exit_code == 1 and "no event 999" in res.output


def test_models_cli(tmp_path, family):
    db = str(tmp_path / "c.db")
    runner = CliRunner()
    res = runner.invoke(main, ["models", "add", "base", str(family["base"]), "--db", db])
    assert res.exit_code == 0 and "registered base" in res.output
    res = runner.invoke(main, ["models", "add", "a", str(family["a"]), "--base", "base", "--db", db, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["base"] == "base"
    res = runner.invoke(main, ["models", "add", "odd", str(family["other"]), "--base", "base", "--db", db])
    assert res.exit_code == 1 and "architecture mismatch" in res.output
    res = runner.invoke(main, ["models", "list", "--db", db, "--json"])
    assert [m["name"] for m in json.loads(res.output)] == ["base", "a"]


def test_plugin_operator_becomes_an_arm(svc, tmp_path):
    """A user's own operator: an arm at once, proposed, merged by `merge --event --plugin`."""
    db = str(svc.store.path)
    runner = CliRunner()
    res = runner.invoke(main, ["arms", "add", "mine", "--operator", "test_scaled_mean", "-p", "scale=1.0",
                               "--plugin", "tests.test_operators:scaled_mean", "--db", db])
    assert res.exit_code == 0, res.output
    # without the plugin the operator is unknown: one line, exit 1, nothing added
    res = runner.invoke(main, ["arms", "add", "mine2", "--operator", "no_such_operator_q", "--db", db])
    assert res.exit_code == 1 and "no_such_operator_q" in res.output
    svc2 = Service(db)
    for a in svc2.arms():
        if a["name"] != "mine":
            svc2.retire_arm(a["name"])
    p = svc2.propose_merge("t", ["a", "b"], seed=0, structural_only=True)
    assert p.arm == "mine" and p.operator == "test_scaled_mean"
    res = runner.invoke(main, ["merge", "--event", str(p.event_id), "--plugin", "tests.test_operators:scaled_mean",
                               "--out", str(tmp_path / "mine"), "--db", db])
    assert res.exit_code == 0, res.output
    got, a, b = (load_tensors(tmp_path / "mine"), load_tensors(svc.store.model(p.model_a)["path"]),
                 load_tensors(svc.store.model(p.model_b)["path"]))
    name = "model.norm.weight"
    assert torch.allclose(got[name], (a[name] + b[name]) / 2, atol=1e-6)


def test_propose_with_cached_features_does_not_import_torch(svc):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    svc.propose_merge("t", ["a", "b"], seed=0)  # computes and caches both orders' features
    code = (
        "import sys, runpy\n"
        "sys.argv = ['bandit', 'propose', '--task', 't', '--models', 'a', 'b', '--db', %r, '--json']\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    ) % (str(svc.store.path), str(root / "cli.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
    assert svc.store.count_events() == 2
