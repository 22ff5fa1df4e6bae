"""Features of every pair of a catalog: the one-pass and cached paths against the pairwise code."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import feature_models as fm
from features import FEATURE_NAMES, STRUCTURAL_FEATURES, FeatureError, compute_all_pairs, compute_features_both_orders
from features.structural import structural_features
from features.structural_all import scan_catalog

PROBES = ["hello world, this is a probe.", "abc def ghi", "the quick brown fox jumps over the lazy dog!",
          "1 2 3 4 5 6 7 8 9", "a", "Question: is it? answer: yes."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _catalog(root: Path, dtype=None) -> tuple[str, dict[str, str]]:
    """A base and fine-tunes: partly kin, sparse, one equal to the base (zero delta), and two
    identical ones."""
    base = fm.make_base(root / "base", seed=0)
    models = {
        "a": fm.make_finetune(base, root / "a", seed=1, scale=0.5, share=0.5),
        "b": fm.make_finetune(base, root / "b", seed=2, scale=0.3, share=0.5, sparsity=0.5),
        "c": fm.make_finetune(base, root / "c", seed=3, scale=0.1),
    }
    models["same"] = root / "same"
    shutil.copytree(base, models["same"])
    models["a_copy"] = root / "a_copy"
    shutil.copytree(models["a"], models["a_copy"])
    if dtype is not None:
        import torch

        for folder in [base, *models.values()]:
            state = {k: v.to(getattr(torch, dtype)) for k, v in fm.load_state(folder).items()}
            from transformers import AutoConfig

            fm.save_state(state, AutoConfig.from_pretrained(str(folder)), folder, tokenizer=False)
    return str(base), {k: str(v) for k, v in models.items()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return _catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="module")
def pairwise(catalog) -> dict[tuple[str, str], dict[str, float]]:
    base, models = catalog
    return {(a, b): structural_features(base, models[a], models[b], device="cpu")
            for a in models for b in models if a != b}


def _assert_close(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for pair, values in want.items():
        assert list(got[pair]) == list(values), pair
        for name, value in values.items():
            assert got[pair][name] == pytest.approx(value, abs=tol), (pair, name)


def test_one_pass_equals_pairwise_for_every_ordered_pair(catalog, pairwise):
    base, models = catalog
    scan = scan_catalog(base, models, device="cpu")
    _assert_close(scan.all_pairs(), pairwise, 1e-9)
    # The catalog really has the cases that need care, and the features see them.
    assert pairwise[("same", "b")]["kinship_cos"] == 0.0 and pairwise[("same", "b")]["delta_norm_logratio"] == -1.0
    got = scan.all_pairs()
    assert got[("a", "a_copy")]["kinship_ed"] == 0.0 and got[("a", "a_copy")]["kinship_cos"] == 1.0
    assert 0.1 < got[("a", "b")]["kinship_cos"] < 0.9
    # One read of each checkpoint: base and five models.
    sizes = sum(os.path.getsize(Path(p) / "model.safetensors") for p in [base, *models.values()])
    assert scan.bytes_read <= sizes and scan.bytes_read > 0.95 * sizes


@pytest.mark.parametrize("options", [
    {"chunk": 7},                                           # tiny chunks
    {"chunk": 100, "topk_sample": 16},                      # thresholds bracketed from a sample
    {"chunk": 50, "topk_sample": 16, "topk_margin": 0.0},   # brackets that miss and are widened
    {"memory_budget": 60_000, "topk_sample": 32},           # big tensors read in parts, re-read per pass
])
def test_chunked_and_bracketed_equal_unchunked(catalog, options):
    base, models = catalog
    whole = scan_catalog(base, models, device="cpu", chunk=1 << 22).all_pairs()
    scan = scan_catalog(base, models, device="cpu", **options)
    _assert_close(scan.all_pairs(), whole, 1e-12)
    if "memory_budget" in options:
        assert scan.tensors_read_in_parts > 0
        assert scan.bytes_read > sum(os.path.getsize(Path(p) / "model.safetensors") for p in [base, *models.values()])
    if options.get("topk_margin") == 0.0:
        assert scan.stats.topk_widenings > 0


def test_bf16_catalog_equals_pairwise(tmp_path):
    base, models = _catalog(tmp_path, dtype="bfloat16")
    models = {k: models[k] for k in ("a", "b", "same")}
    want = {(a, b): structural_features(base, models[a], models[b], device="cpu")
            for a in models for b in models if a != b}
    got = scan_catalog(base, models, device="cpu", topk_sample=64).all_pairs()
    _assert_close(got, want, 1e-9)
    assert 0.0 < got[("a", "b")]["kinship_cos"] < 1.0


def test_catalog_architecture_mismatch_names_the_model(tmp_path, catalog):
    base, models = catalog
    wide = fm.make_base(tmp_path / "wide", seed=3, hidden=48)
    with pytest.raises(FeatureError, match=r"model 'wide': architecture mismatch: .* has shape \[\d+(, \d+)*\]"):
        scan_catalog(base, {"a": models["a"], "wide": str(wide)}, device="cpu")
    with pytest.raises(FeatureError, match="at least two models"):
        scan_catalog(base, {"a": models["a"]}, device="cpu")


def test_tensor_range_reads_the_named_entries(catalog):
    import torch

    from merging.checkpoint import Checkpoint

    _, models = catalog
    with Checkpoint(models["a"]) as ck:
        name = max(ck.tensors, key=lambda n: ck.tensors[n].numel)
        whole = ck.tensor(name).reshape(-1)
        assert torch.equal(ck.tensor_range(name, 5, 1234), whole[5:1234])
        assert torch.equal(ck.tensor_range(name, whole.numel() - 3, whole.numel() + 10), whole[-3:])


# -- functional, through the probe-output cache ---------------------------------------------
@pytest.fixture()
def cache(tmp_path):
    from features.probe_outputs import ProbeOutputCache

    return ProbeOutputCache(tmp_path / "cache")


def test_all_pairs_equal_pairwise_features_with_one_load_per_model(catalog, cache):
    from features.functional_all import functional_all_pairs

    base, models = catalog
    models = {k: models[k] for k in ("a", "b", "c")}
    first = functional_all_pairs(base, models, PROBES, device="cpu", cache=cache)
    assert first.model_loads == 4  # the base and three models, not three per pair
    full = compute_all_pairs(base, models, PROBES, device="cpu", cache=cache)
    assert cache.hits == 4  # the second call ran no model
    for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
        ab, ba = compute_features_both_orders(base, models[a], models[b], PROBES, device="cpu")
        for pair, want in (((a, b), ab), ((b, a), ba)):
            assert list(full[pair]) == list(FEATURE_NAMES)
            for name, value in want.items():
                assert full[pair][name] == pytest.approx(value, abs=1e-9), (pair, name)
    assert full[("a", "b")]["kl_mean"] != pytest.approx(full[("b", "a")]["kl_mean"], abs=1e-6)
    # Another batch size lays the inputs out otherwise: a separate entry, the same values.
    result = functional_all_pairs(base, models, PROBES, device="cpu", cache=cache, batch_size=4)
    assert result.model_loads == 4
    for pair, values in result.pairs.items():
        for name, value in values.items():
            assert full[pair][name] == pytest.approx(value, abs=1e-6), (pair, name)


def test_probe_output_cache_misses_when_a_checkpoint_or_the_probes_change(tmp_path, catalog, cache):
    from features.functional_all import functional_all_pairs

    base, models = catalog
    work = {name: tmp_path / name for name in ("a", "b")}
    for name, folder in work.items():
        shutil.copytree(models[name], folder)
    work = {k: str(v) for k, v in work.items()}
    first = functional_all_pairs(base, work, PROBES, device="cpu", cache=cache)
    assert first.model_loads == 3
    assert functional_all_pairs(base, work, PROBES, device="cpu", cache=cache).model_loads == 0
    # Model b retrained and saved in place: only b runs again, and its features change.
    fm.make_finetune(base, tmp_path / "b", seed=7, scale=0.4)
    changed = functional_all_pairs(base, work, PROBES, device="cpu", cache=cache)
    assert changed.model_loads == 1
    assert changed.pairs[("a", "b")]["kl_mean"] != pytest.approx(first.pairs[("a", "b")]["kl_mean"], abs=1e-6)
    # Other probes: everything runs again.
    assert functional_all_pairs(base, work, PROBES[:3], device="cpu", cache=cache).model_loads == 3
    leftovers = [p for p in Path(cache.root).rglob("*") if p.is_file() and not p.name.endswith(".npz")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_probe_output_cache_entries_round_trip_and_corruption_is_a_miss(cache):
    import numpy as np

    from features.probe_outputs import ProbeOutputKey

    key = ProbeOutputKey("f" * 32, "p" * 32, "continuations", 1, variant="greedy max_new=16")
    assert cache.load(key) is None and cache.misses == 1
    arrays = {"tokens": np.arange(12, dtype=np.int64).reshape(3, 4), "lengths": np.array([4, 2, 3])}
    path = cache.store(key, arrays, {"max_new_tokens": 16})
    arrays_back, meta = cache.load(key)
    assert cache.hits == 1 and meta["max_new_tokens"] == 16
    assert all(np.array_equal(arrays_back[k], v) for k, v in arrays.items()) and set(arrays_back) == set(arrays)
    # Another version or variant is another entry.
    assert cache.load(ProbeOutputKey("f" * 32, "p" * 32, "continuations", 2, variant="greedy max_new=16")) is None
    assert cache.load(ProbeOutputKey("f" * 32, "p" * 32, "continuations", 1, variant="greedy max_new=8")) is None
    path.write_bytes(path.read_bytes()[:40])  # truncated by something else
    assert cache.load(key) is None
    with pytest.raises(ValueError, match="not a plain name"):
        cache.path(ProbeOutputKey("../x", "p", "functional", 1))


def test_cache_root_follows_simmerge_home_or_the_database(tmp_path, monkeypatch):
    from features.probe_outputs import default_cache_root

    monkeypatch.setenv("SIMMERGE_HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / "cache"
    assert default_cache_root(tmp_path / "db" / "bandit.db") == (tmp_path / "db" / "cache").resolve()
    monkeypatch.delenv("SIMMERGE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "simmerge" / "cache"


def test_structural_only_all_pairs(catalog, pairwise):
    base, models = catalog
    got = compute_all_pairs(base, models, structural_only=True, device="cpu")
    assert all(tuple(v) == STRUCTURAL_FEATURES for v in got.values())
    _assert_close(got, pairwise, 1e-9)


# -- the command --------------------------------------------------------------------------------
def test_cli_features_all_fills_the_cache_for_every_pair(cli_run, catalog, pairwise):
    import json

    from store import Store

    base, models = catalog
    run, db = cli_run, cli_run.db

    run("models", "add", "base", base)
    for name in ("a", "b", "same"):
        run("models", "add", name, models[name], "--base", "base")
    out = json.loads(run("features", "--all", "--structural-only", "--device", "cpu", "--json").output)
    pairs = {(p["model_a"], p["model_b"]): p for p in out["pairs"]}
    assert set(pairs) == {(x, y) for x in ("a", "b", "same") for y in ("a", "b", "same") if x != y}
    assert not any(p["cached"] for p in pairs.values())
    for pair, p in pairs.items():
        for name, value in pairwise[pair].items():
            assert p["features"][name] == pytest.approx(value, abs=1e-9), (pair, name)
    with Store(db) as store:
        assert store._one("SELECT COUNT(*) AS n FROM features")["n"] == 6
    # The single-pair command and a second --all now read the cache.
    one = json.loads(run("features", "a", "b", "--structural-only", "--json").output)
    assert one["cached"] and one["features"] == pairs[("a", "b")]["features"]
    again = json.loads(run("features", "--all", "--models", "b", "a", "--structural-only", "--json").output)
    assert [(p["model_a"], p["model_b"], p["cached"]) for p in again["pairs"]] == [("b", "a", True), ("a", "b", True)]
    text = run("features", "--all", "--structural-only").output
    assert "6 ordered pairs: 0 computed, 6 from the cache" in text
    # Mistakes: one line, exit 1, nothing stored.
    for args in (("features", "a", "b", "--all"), ("features", "a"), ("features", "a", "b", "--models", "c"),
                 ("features", "--all", "--memory-budget", "lots", "--structural-only")):
        res = run(*args, code=1)
        assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    with Store(db) as store:
        assert store._one("SELECT COUNT(*) AS n FROM features")["n"] == 6


# -- the compact (top-k) form for large vocabularies ----------------------------------------
@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for both top-k cases, so the exact outputs are computed once."""
    from features.probe_outputs import ProbeOutputCache

    return ProbeOutputCache(tmp_path_factory.mktemp("shared-cache"))


@pytest.mark.parametrize("k", [6, 64])
def test_topk_cache_gives_the_stated_bounds_around_the_exact_values(catalog, shared_cache, k):
    """Cached as top-k (forced on the 64-token vocabulary): per position, KL and the JS lower
    bound are <= the exact values <= the JS upper bound, the entropy lies in its interval; with
    k = vocabulary everything is exact again. top-1 and hidden-state features stay exact."""
    import torch

    from features.functional_all import (compact_divergences, compact_entropy_bounds, functional_all_pairs,
                                         model_outputs, pair_from_outputs, prepare_inputs)
    from features.functional import entropy_rows, js_rows, kl_rows

    base, models = catalog
    inputs = prepare_inputs(PROBES, [base])
    cache = shared_cache
    dev = torch.device("cpu")
    exact = {m: model_outputs(models[m], inputs, dev, cache)[0] for m in ("a", "b")}
    compact = {m: model_outputs(models[m], inputs, dev, cache, exact_vocab_max=0, topk=k)[0] for m in ("a", "b")}
    assert exact["a"].exact and not compact["a"].exact and compact["a"].top_ids.shape[1] == k
    kl_lo, js_lo, js_hi = compact_divergences(compact["a"], compact["b"])
    kl, js = kl_rows(exact["a"].logp, exact["b"].logp), js_rows(exact["a"].logp, exact["b"].logp)
    assert bool((kl_lo <= kl + 1e-9).all()) and bool((js_lo <= js + 1e-9).all()) and bool((js <= js_hi + 1e-9).all())
    h_lo, h_hi = compact_entropy_bounds(compact["a"])
    h = entropy_rows(exact["a"].logp)
    assert bool((h_lo <= h + 1e-6).all()) and bool((h <= h_hi + 1e-6).all())
    if k == 64:
        for got, want in ((kl_lo, kl), (js_lo, js), (js_hi, js), (h_lo, h), (h_hi, h)):
            assert float((got - want).abs().max()) < 1e-5
    else:
        assert float((kl - kl_lo).max()) > 1e-4  # the bound is a bound here, not the value
    numbers = dict(kl_base_a=0.1, kl_base_b=0.2, entropy_a=1.0, entropy_b=1.5)
    want, _ = pair_from_outputs(exact["a"], exact["b"], **numbers)
    got, _ = pair_from_outputs(compact["a"], compact["b"], **numbers)
    for name in ("top1_agreement", "hidden_cos_mean", "hidden_cos_min", "hidden_cos_last", "cka_last"):
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    for name in ("kl_mean", "kl_median", "kl_p90", "js_mean"):
        assert got[name] <= want[name] + 1e-9, name
    # Through the catalog entry point the forms are separate cache entries, not mixed up.
    pairs = functional_all_pairs(base, {m: models[m] for m in ("a", "b")}, PROBES, device="cpu", cache=cache,
                                 exact_vocab_max=0, topk=k)
    assert pairs.model_loads == 1  # a and b were cached in this form above: only the base runs
    assert pairs.pairs[("a", "b")]["kl_mean"] <= want["kl_mean"] + 1e-9


def test_outputs_over_the_memory_budget_are_read_back_per_pair(catalog, shared_cache):
    """With a budget too small to hold them, the models' outputs go back to the cache and are
    read per pair: the same features, no model run twice."""
    from features.functional_all import functional_all_pairs

    base, models = catalog
    models = {k: models[k] for k in ("a", "b", "c")}
    held = functional_all_pairs(base, models, PROBES, device="cpu", cache=shared_cache)
    before = shared_cache.hits
    spilled = functional_all_pairs(base, models, PROBES, device="cpu", cache=shared_cache, memory_budget=1)
    assert spilled.model_loads == 0
    # Four entries read for the per-model numbers, then a, b, c (row a) and b, c (row b) again.
    assert shared_cache.hits - before == 4 + 5
    assert spilled.pairs == held.pairs


@pytest.mark.parametrize("width", [1, 63, 64, 200, 1000])
def test_numpy_and_torch_counting_kernels_agree_with_direct_counts(width):
    """The CPU kernels (bit-packed popcounts, numpy selections) and the torch ones (float32
    products, on any device) give the same exact counts as counting entry by entry."""
    import torch

    from features.pair_counts import NumpyCounts, TorchCounts

    gen = torch.Generator().manual_seed(width)
    n = 5
    ds = torch.randn(n, width, generator=gen, dtype=torch.float64)
    ds[torch.rand(n, width, generator=gen) < 0.2] = 0.0   # unchanged entries
    ds[3] = ds[1]                                          # identical rows
    ds[4] = 0.0                                            # a model equal to the base
    mags = ds.abs().round(decimals=1)                      # ties at the thresholds
    thr = torch.tensor([[0.5], [0.0], [1.0], [0.5], [0.3]], dtype=torch.float64).clamp(min=5e-324)
    lo, hi = torch.full((n, 1), 0.3, dtype=torch.float64), torch.full((n, 1), 0.8, dtype=torch.float64)
    sign = ds.sign()
    want_same = ((sign[:, None] == sign[None]) & (sign[:, None] != 0)).sum(-1).double()
    want_both = ((sign[:, None] != 0) & (sign[None] != 0)).sum(-1).double()
    mask = mags >= thr
    want_inter = (mask[:, None] & mask[None]).sum(-1).double()
    band = (mags >= lo) & (mags <= hi)
    for kernels in (NumpyCounts(), TorchCounts()):
        dtype = kernels.scratch_dtype(width)
        counts = None if dtype is None else torch.empty(n, width, dtype=dtype)
        flags = (torch.empty(n, width, dtype=torch.bool), torch.empty(n, width, dtype=torch.bool))
        same, both = kernels.signs(ds, torch.empty_like(ds), counts, flags)
        assert torch.equal(same, want_same) and torch.equal(both, want_both), kernels
        assert torch.equal(kernels.mask_products(mags, thr, counts, flags[0]), want_inter), kernels
        above, values, per_row = kernels.split_band(mags, lo, hi, *flags)
        assert above.tolist() == (mags > hi).sum(1).tolist()
        assert per_row.tolist() == band.sum(1).tolist() and torch.equal(values, mags[band])


def test_one_pass_with_the_torch_kernels_equals_pairwise(catalog, pairwise, monkeypatch):
    """The kernels a GPU runs, here on the CPU: the whole pass still equals the reference."""
    import features.structural_all as structural_all
    from features.pair_counts import TorchCounts

    monkeypatch.setattr(structural_all, "counts_for", lambda device: TorchCounts())
    base, models = catalog
    _assert_close(scan_catalog(base, models, device="cpu", topk_sample=32).all_pairs(), pairwise, 1e-9)
