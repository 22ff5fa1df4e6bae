"""propose with trial merges: action features logged per action, the chosen merge written
without merging again, the budget, and posteriors that rebuild exactly with action features."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bandit.errors import BanditError
from bandit.service import Service
from cli import main

PROBES = ["hello w", "abc", "the quick", "zz top", "a1b2", "one two"]


@pytest.fixture
def family(trial_family):
    return trial_family


def _registered(db: str, family) -> Service:
    """A service whose catalog holds the family: base, and a and b as its fine-tunes."""
    from bandit.service.catalog import add_model

    s = Service(db)
    add_model(s.store, "base", str(family["base"]))
    for n in ("a", "b"):
        add_model(s.store, n, str(family[n]), "base")
    return s


@pytest.fixture
def svc(tmp_path, family, monkeypatch):
    monkeypatch.setenv("SIMMERGE_HOME", str(tmp_path / "home"))
    s = _registered(str(tmp_path / "t.db"), family)
    s.add_task("t", PROBES)
    return s


def test_trial_features_are_logged_per_action_and_match_a_direct_trial(svc, family, tmp_path):
    from features.trial import TrialRunner

    p = svc.propose_merge("t", ["a", "b"], seed=3, structural_only=True, device="cpu", trial_merges=True,
                          keep_merge=True)
    arms = [a.name for a in svc.arms() if a.status == "active"]
    assert p.trial["merges"] == 2 * len(arms)
    event = svc.store.event(p.event_id)
    logged = {(a["candidate"], a["arm"]): a["features"] for a in event["actions"]}
    runner = TrialRunner(family["base"], family["a"], family["b"], PROBES, PROBES, device="cpu",
                         cache_dir=tmp_path / "home" / "cache")
    assert runner.reference_cache_hits == 2  # the propose computed and cached both references
    spec = {a.name: a for a in svc.arms()}
    for arm in ("linear", "ties"):
        want = runner.trial(spec[arm].operator, spec[arm].params).features
        c = event["candidates"].index(["a", "b"])
        assert logged[(c, arm)] == pytest.approx(want, abs=1e-12)

    # The chosen merge is written from memory and equals the merge the event's recipe makes.
    kept = svc.merge_event(p.event_id, str(tmp_path / "kept"), device="cpu")
    assert "reused" in kept.device
    svc._kept_merge = (None, None)
    again = svc.merge_event(p.event_id, str(tmp_path / "again"), device="cpu")
    assert "reused" not in again.device
    from safetensors.torch import load_file

    x = load_file(str(tmp_path / "kept" / "model.safetensors"))
    y = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_budget_trials_only_the_most_promising_actions(svc):
    p = svc.propose_merge("t", ["a", "b"], seed=1, structural_only=True, device="cpu", trial_merges=True,
                          trial_budget=3)
    assert p.trial["merges"] == 3 and p.trial["budget"] == 3
    event = svc.store.event(p.event_id)
    assert sum(1 for a in event["actions"] if a.get("features")) == 3


def test_rebuild_is_exact_with_action_features_and_pooled_learns_them(svc):
    first, again = (svc.propose_merge("t", ["a", "b"], seed=s, structural_only=True, device="cpu",
                                      trial_merges=True, trial_budget=3) for s in (0, 1))
    # Nothing learned in between: the same three actions, their signals from the on-disk cache.
    assert (first.trial["merges"], first.trial["cached"]) == (3, 0)
    assert (again.trial["merges"], again.trial["cached"]) == (0, 3)
    rng = np.random.default_rng(0)
    for i in range(4):
        p = svc.propose_merge("t", ["a", "b"], seed=i, structural_only=True, device="cpu", trial_merges=True,
                              trial_budget=3)
        svc.reward(p.event_id, float(rng.uniform()))
    rep = svc.rebuild(check=True)
    assert rep.clean and rep.max_abs_diff == 0.0
    # The per-arm ridge learned the chosen actions' trial features as `a:` inputs.
    posts = {r["arm"]: r for r in svc.store.posteriors("ridge")}
    assert any("a:trial_exact" in r["schema"] for r in posts.values())

    svc.set_policy("pooled")
    pol = svc.policy()
    assert pol.n == 4 and "trial_exact" in pol.action_names
    p = svc.propose_merge("t", ["a", "b"], seed=9, structural_only=True, device="cpu", trial_merges=True,
                              trial_budget=2)
    assert p.policy == "pooled"


def test_trial_setting_and_cli(svc, tmp_path):
    db = str(svc.store.path)
    svc.store.close()
    runner = CliRunner()
    r = runner.invoke(main, ["policy", "trials", "on", "--budget", "2", "--db", db])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["propose", "-t", "t", "-m", "a", "b", "--structural-only", "--device", "cpu",
                             "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["trial"]["merges"] == 2
    r = runner.invoke(main, ["propose", "-t", "t", "-f", "x=1", "--trial-merges", "--db", db])
    assert r.exit_code != 0 and "needs --models" in r.output


def test_trial_merges_need_probes(tmp_path, family, monkeypatch):
    monkeypatch.setenv("SIMMERGE_HOME", str(tmp_path / "home"))
    s = _registered(str(tmp_path / "np.db"), family)
    with pytest.raises(BanditError, match="need probe texts"):
        s.propose_merge("noprobes", ["a", "b"], structural_only=True, device="cpu", trial_merges=True)
    assert list(s.store.events()) == []
