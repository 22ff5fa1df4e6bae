"""Similarity features against direct numpy computations on tiny Llama checkpoints."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import feature_models as fm
from features import (FEATURE_NAMES, FUNCTIONAL_FEATURES, STRUCTURAL_FEATURES, FeatureError,
                      compute_features, feature_names, probe_hash)
from features.functional import (entropy_rows, functional_features, generic_probes, js_rows, kl_rows,
                                 linear_cka, row_cos)
from features.structural import structural_features

PROBES = [
    "hello world, this is a probe.",
    "abc def ghi",
    "the quick brown fox jumps over the lazy dog!",
    "1 2 3 4 5 6 7 8 9",
    "a",
    "Question: is it? answer: yes.",
    "mixed CASE and digits 42",
]
# Features where A<->B changes sign, and pairs that trade places.
FLIPS = ("delta_norm_logratio", "entropy_gap")
SWAPS = (("kl_base_a", "kl_base_b"),)
ASYMMETRIC = ("kl_mean", "kl_median", "kl_p90")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on shared cores: a second intra-op thread only waits on the other
    processes (measured 2-3x slower), so these tests run single-threaded."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    base = fm.make_base(root / "base", seed=0)
    models = {
        "base": base,
        # Fine-tunes large enough that their outputs differ visibly, partly kin (share).
        "a": fm.make_finetune(base, root / "a", seed=1, scale=0.5, share=0.5),
        "b": fm.make_finetune(base, root / "b", seed=2, scale=0.3, share=0.5, sparsity=0.5),
    }
    models["same"] = root / "same"  # a fine-tune that changed nothing
    shutil.copytree(base, models["same"])
    models["wide"] = fm.make_base(root / "wide", seed=3, hidden=48)
    models["deep"] = fm.make_base(root / "deep", seed=4, layers=3)
    return models


# -- numpy references ----------------------------------------------------------------------
def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in fm.load_state(path).items()}


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def np_topk_mask(delta: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    mag = np.abs(delta)
    k = math.ceil(fraction * mag.size)
    threshold = np.partition(mag, mag.size - k)[mag.size - k]
    return (mag >= threshold) & (mag > 0)


def np_topk_overlap(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    num = den = 0.0
    for da, db in pairs:
        ma, mb = np_topk_mask(da), np_topk_mask(db)
        union = np.sum(ma | mb)
        if union:
            num += da.size * np.sum(ma & mb) / union
            den += da.size
    return num / den if den else 1.0


def numpy_structural(base: Path, a: Path, b: Path) -> dict[str, float]:
    """Every structural feature from whole flattened models, the way the docs define it."""
    t0, ta, tb = _arrays(base), _arrays(a), _arrays(b)
    names = sorted(t0)
    flat = {k: np.concatenate([m[n].astype(np.float64).ravel() for n in names]) for k, m in
            (("0", t0), ("a", ta), ("b", tb))}
    da, db = flat["a"] - flat["0"], flat["b"] - flat["0"]
    out = {
        "kinship_pcc": float(np.corrcoef(da, db)[0, 1]),
        "kinship_cos": _cos(da, db),
        "kinship_ed": float(np.linalg.norm(da - db) / (np.linalg.norm(da) + np.linalg.norm(db))),
        "weight_cos": _cos(flat["a"], flat["b"]),
        "delta_norm_logratio": math.tanh(math.log(np.linalg.norm(da) / np.linalg.norm(db))),
        "sign_agreement": float(np.sum(da * db > 0) / np.sum((da != 0) & (db != 0))),
    }
    blocks: dict[int, list] = {}
    groups: dict[tuple[int, str], list] = {}
    tensor_deltas = []
    for n in names:
        pair = ((ta[n].astype(np.float64) - t0[n]).ravel(), (tb[n].astype(np.float64) - t0[n]).ravel())
        tensor_deltas.append(pair)
        blk = re.search(r"layers\.(\d+)\.", n)
        if blk:
            blocks.setdefault(int(blk.group(1)), []).append(pair)
            grp = "attn" if "self_attn." in n else "mlp" if ".mlp." in n else None
            if grp:
                groups.setdefault((int(blk.group(1)), grp), []).append(pair)
    out["topk_overlap"] = np_topk_overlap(tensor_deltas)

    def spread(parts) -> list[float]:
        cosines = [_cos(np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps])) for ps in parts]
        return [min(cosines), float(np.mean(cosines)), max(cosines)]

    for prefix, parts in (("layer", blocks.values()),
                          ("attn", [v for (_, g), v in groups.items() if g == "attn"]),
                          ("mlp", [v for (_, g), v in groups.items() if g == "mlp"])):
        out.update(zip((f"{prefix}_cos_min", f"{prefix}_cos_mean", f"{prefix}_cos_max"), spread(list(parts))))
    return out


def _direct_outputs(folder: Path, texts: list[str]):
    """Per text, unbatched and unpadded: float64 log-probabilities and hidden states."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    logps, hiddens = [], []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            out = model(input_ids=ids, output_hidden_states=True)
            logits = out.logits[0].double().numpy()
            logps.append(logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                         - logits.max(-1, keepdims=True))
            hiddens.append([h[0].double().numpy() for h in out.hidden_states[1:]])
    n_layers = len(hiddens[0])
    return np.concatenate(logps), [np.concatenate([h[l] for h in hiddens]) for l in range(n_layers)]


def _np_kl(lp, lq):
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def _np_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def numpy_functional(base: Path, a: Path, b: Path, texts: list[str]) -> dict[str, float]:
    lp_a, h_a = _direct_outputs(a, texts)
    lp_b, h_b = _direct_outputs(b, texts)
    lp_0, _ = _direct_outputs(base, texts)
    kl = _np_kl(lp_a, lp_b)
    lm = np.log((np.exp(lp_a) + np.exp(lp_b)) / 2)
    js = 0.5 * _np_kl(lp_a, lm) + 0.5 * _np_kl(lp_b, lm)
    ent = lambda lp: -np.sum(np.exp(lp) * lp, axis=-1)  # noqa: E731
    per_layer = [float(np.mean(np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))))
                 for x, y in zip(h_a, h_b)]
    sq = lambda x: 1 - math.exp(-x)  # noqa: E731
    return {
        "kl_mean": sq(kl.mean()), "kl_median": sq(np.median(kl)), "kl_p90": sq(np.quantile(kl, 0.9)),
        "js_mean": float(js.mean() / math.log(2)),
        "top1_agreement": float(np.mean(lp_a.argmax(-1) == lp_b.argmax(-1))),
        "entropy_gap": math.tanh(ent(lp_a).mean() - ent(lp_b).mean()),
        "hidden_cos_mean": float(np.mean(per_layer)), "hidden_cos_min": min(per_layer),
        "hidden_cos_last": per_layer[-1], "cka_last": _np_cka(h_a[-1], h_b[-1]),
        "kl_base_a": sq(_np_kl(lp_a, lp_0).mean()), "kl_base_b": sq(_np_kl(lp_b, lp_0).mean()),
    }


# -- structural ----------------------------------------------------------------------------
def test_structural_matches_numpy_on_whole_models(zoo):
    got = structural_features(zoo["base"], zoo["a"], zoo["b"], device="cpu")
    want = numpy_structural(zoo["base"], zoo["a"], zoo["b"])
    assert list(got) == list(STRUCTURAL_FEATURES)
    for name in STRUCTURAL_FEATURES:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    # The fixture makes partly kin fine-tunes: the features must see it, not sit at 0 or 1.
    assert 0.1 < got["kinship_cos"] < 0.9 and 0.3 < got["sign_agreement"] < 0.9


def test_streaming_in_small_chunks_equals_whole_tensors(zoo):
    whole = structural_features(zoo["base"], zoo["a"], zoo["b"], device="cpu", chunk=1 << 24)
    # Tiny chunks, and a sample small enough that even these tensors get a bracketed threshold.
    chunked = structural_features(zoo["base"], zoo["a"], zoo["b"], device="cpu", chunk=7, topk_sample=16)
    for name in STRUCTURAL_FEATURES:
        assert chunked[name] == pytest.approx(whole[name], abs=1e-12), name


@pytest.mark.parametrize("sample, margin", [(64, 6.0), (64, 0.0), (16, 1.0)])
def test_topk_threshold_bracketing_is_exact(sample, margin):
    """Large tensors get their top-k threshold bracketed from a sample; whether the bracket
    holds (margin 6) or misses (margin 0), the overlap is the exact one. Sparse deltas with
    fewer non-zero entries than k, and ties, are included."""
    import torch

    from features.structural import DeltaStats

    rng = np.random.default_rng(sample + int(margin))
    pairs, stats = [], DeltaStats(chunk=300, topk_sample=sample, topk_margin=margin)
    for i, (n, density_a, density_b) in enumerate([(5000, 1.0, 1.0), (4096, 0.1, 1.0), (3000, 0.05, 0.3),
                                                   (2000, 1.0, 1.0), (6000, 0.5, 0.5)]):
        base = rng.normal(size=n)
        da = rng.normal(size=n) * (rng.random(n) < density_a)
        db = 0.5 * da + rng.normal(size=n) * (rng.random(n) < density_b)
        if i == 3:
            da, db = np.round(da, 1), np.round(db, 1)  # many ties at every threshold
        a, b = base + da, base + db
        pairs.append((a - base, b - base))  # the deltas as float64 computes them
        stats.add(f"t{i}", *(torch.from_numpy(x) for x in (base, a, b)))
    assert stats.features()["topk_overlap"] == pytest.approx(np_topk_overlap(pairs), abs=1e-12)
    if margin == 0.0:
        assert stats.topk_second_passes > 0  # the fallback was exercised
    if margin == 6.0:
        assert stats.topk_second_passes < 5  # and the bracket normally holds


def test_identical_models_are_fully_kin(zoo):
    got = structural_features(zoo["base"], zoo["a"], zoo["a"], device="cpu")
    for name in ("kinship_pcc", "kinship_cos", "weight_cos", "sign_agreement", "topk_overlap",
                 "layer_cos_min", "attn_cos_min", "mlp_cos_min"):
        assert got[name] == pytest.approx(1.0, abs=1e-12), name
    assert got["kinship_ed"] == pytest.approx(0.0, abs=1e-12)
    assert got["delta_norm_logratio"] == 0.0


def test_zero_delta_gives_defined_bounded_values(zoo):
    got = structural_features(zoo["base"], zoo["same"], zoo["b"], device="cpu")
    assert all(math.isfinite(v) for v in got.values())
    assert got["kinship_pcc"] == 0.0 and got["kinship_cos"] == 0.0 and got["layer_cos_mean"] == 0.0
    assert got["kinship_ed"] == 1.0 and got["delta_norm_logratio"] == -1.0
    assert got["sign_agreement"] == 0.5 and got["topk_overlap"] == 0.0
    both = structural_features(zoo["base"], zoo["same"], zoo["same"], device="cpu")
    assert both["kinship_cos"] == 1.0 and both["kinship_ed"] == 0.0 and both["sign_agreement"] == 1.0


def test_structural_order_sensitivity(zoo):
    ab = structural_features(zoo["base"], zoo["a"], zoo["b"], device="cpu")
    ba = structural_features(zoo["base"], zoo["b"], zoo["a"], device="cpu")
    assert ab["delta_norm_logratio"] > 0.1  # A's delta is the larger one by construction
    for name in STRUCTURAL_FEATURES:
        want = -ab[name] if name in FLIPS else ab[name]
        assert ba[name] == pytest.approx(want, abs=1e-12), name


@pytest.mark.parametrize("other, expect", [("wide", r"architecture mismatch: tensor '[^']+' has shape \[\d+(, \d+)*\] in \S*wide"),
                                            ("deep", r"architecture mismatch: tensor 'model\.layers\.2\.[^']+' is in \S*deep")])
def test_architecture_mismatch_names_the_tensor(zoo, other, expect):
    with pytest.raises(FeatureError, match=expect) as err:
        structural_features(zoo["base"], zoo["a"], zoo[other], device="cpu")
    assert "\n" not in str(err.value)


def test_unreadable_checkpoint_is_a_feature_error(tmp_path, zoo):
    with pytest.raises(FeatureError, match="no such folder"):
        compute_features(zoo["base"], zoo["a"], tmp_path / "missing", structural_only=True)


# -- functional math -----------------------------------------------------------------------
def test_divergences_entropy_and_cosine_match_numpy():
    import torch

    rng = np.random.default_rng(0)
    logits_p, logits_q = rng.normal(size=(50, 17)) * 2, rng.normal(size=(50, 17)) * 2
    lp = logits_p - np.log(np.exp(logits_p).sum(-1, keepdims=True))
    lq = logits_q - np.log(np.exp(logits_q).sum(-1, keepdims=True))
    tp, tq = torch.from_numpy(lp), torch.from_numpy(lq)
    np.testing.assert_allclose(kl_rows(tp, tq).numpy(), _np_kl(lp, lq), atol=1e-12)
    lm = np.log((np.exp(lp) + np.exp(lq)) / 2)
    np.testing.assert_allclose(js_rows(tp, tq).numpy(), 0.5 * _np_kl(lp, lm) + 0.5 * _np_kl(lq, lm), atol=1e-12)
    np.testing.assert_allclose(entropy_rows(tp).numpy(), -np.sum(np.exp(lp) * lp, -1), atol=1e-12)
    assert float(kl_rows(tp, tp).max()) == 0.0
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    y[0] = 0.0
    want = np.sum(x * y, -1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-300)
    np.testing.assert_allclose(row_cos(torch.from_numpy(x), torch.from_numpy(y)).numpy(), want, atol=1e-12)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    assert row_cos(zero, zero).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("n, d", [(40, 6), (6, 40)])  # both Gram forms
def test_linear_cka_matches_numpy(n, d):
    import torch

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) + rng.normal(size=(n, d))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(_np_cka(x, y), abs=1e-12)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(3 * x + 1)) == pytest.approx(1.0, abs=1e-12)


# -- functional on models ------------------------------------------------------------------
@pytest.fixture(scope="module")
def functional_ab(zoo) -> dict[str, float]:
    # batch_size 3 forces padding inside batches, which the reference never has.
    return functional_features(zoo["base"], zoo["a"], zoo["b"], PROBES, device="cpu", batch_size=3)


def test_functional_matches_direct_numpy(zoo, functional_ab):
    want = numpy_functional(zoo["base"], zoo["a"], zoo["b"], PROBES)
    assert list(functional_ab) == list(FUNCTIONAL_FEATURES)
    for name in FUNCTIONAL_FEATURES:
        assert functional_ab[name] == pytest.approx(want[name], abs=1e-6), name
    # The fine-tunes disagree visibly, so the comparison above is not between zeros.
    assert functional_ab["kl_mean"] > 0.01 and functional_ab["top1_agreement"] < 1.0


def test_functional_identical_models(zoo):
    got = functional_features(zoo["base"], zoo["a"], zoo["a"], PROBES[:3], device="cpu")
    assert got["kl_mean"] == 0.0 and got["kl_p90"] == 0.0 and got["js_mean"] == 0.0
    assert got["top1_agreement"] == 1.0 and got["entropy_gap"] == 0.0
    assert got["hidden_cos_min"] == pytest.approx(1.0, abs=1e-12)
    assert got["cka_last"] == pytest.approx(1.0, abs=1e-12)
    assert got["kl_base_a"] == got["kl_base_b"] > 0.0


def test_functional_order_sensitivity(zoo, functional_ab):
    ba = functional_features(zoo["base"], zoo["b"], zoo["a"], PROBES, device="cpu", batch_size=3)
    ab = functional_ab
    for name in FUNCTIONAL_FEATURES:
        if name in FLIPS:
            assert ba[name] == pytest.approx(-ab[name], abs=1e-9) and ab[name] != 0.0, name
        elif name in ASYMMETRIC:
            continue
        elif any(name in pair for pair in SWAPS):
            continue
        else:
            assert ba[name] == pytest.approx(ab[name], abs=1e-9), name
    for x, y in SWAPS:
        assert ba[x] == pytest.approx(ab[y], abs=1e-9) and ba[y] == pytest.approx(ab[x], abs=1e-9)
    assert ba["kl_mean"] != pytest.approx(ab["kl_mean"], abs=1e-9)


def test_missing_tokenizer_is_a_clear_error(zoo, tmp_path):
    bare = {}
    for key in ("base", "a", "b"):
        bare[key] = tmp_path / key
        bare[key].mkdir()
        for f in ("config.json", "model.safetensors"):
            shutil.copy(zoo[key] / f, bare[key] / f)
    with pytest.raises(FeatureError, match="no tokenizer in"):
        compute_features(bare["base"], bare["a"], bare["b"], PROBES, device="cpu")
    # A tokenizer folder given explicitly is enough.
    got = functional_features(bare["base"], bare["a"], bare["b"], PROBES[:2], device="cpu", tokenizer=zoo["a"])
    assert set(got) == set(FUNCTIONAL_FEATURES)


def test_empty_probes_are_a_clear_error(zoo):
    with pytest.raises(FeatureError, match="no probe texts"):
        functional_features(zoo["base"], zoo["a"], zoo["b"], ["", "  "], device="cpu")


# -- the entry point -----------------------------------------------------------------------
def test_compute_features_full_vector_is_bounded(zoo):
    got = compute_features(zoo["base"], zoo["a"], zoo["b"], None, device="cpu")  # built-in probes
    assert tuple(got) == FEATURE_NAMES == feature_names()
    for name, value in got.items():
        low = 0.0 if name in ("kinship_ed", "sign_agreement", "topk_overlap", "js_mean", "top1_agreement",
                              "cka_last") or name.startswith("kl_") else -1.0
        assert math.isfinite(value) and low <= value <= 1.0, name
    only = compute_features(zoo["base"], zoo["a"], zoo["b"], structural_only=True, device="cpu")
    assert tuple(only) == feature_names(structural_only=True) == STRUCTURAL_FEATURES
    assert only == {k: got[k] for k in STRUCTURAL_FEATURES}


def test_probe_hash_follows_the_texts():
    generic = generic_probes()
    assert len(generic) >= 20
    assert probe_hash(None) == probe_hash(generic) == probe_hash(generic + ["", "   "])
    assert probe_hash(["one", "two"]) != probe_hash(["two", "one"]) != probe_hash(None)


def test_importing_features_stays_light():
    code = "import sys, features; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False"]


def test_both_orders_equal_two_separate_computations(tmp_path):
    """(B, A) derived from the passes of (A, B) equals computing (B, A) directly."""
    import torch

    from features import compute_features, compute_features_both_orders
    from feature_models import make_base, make_finetune

    torch.set_num_threads(1)
    base = make_base(tmp_path / "base", seed=0)
    a = make_finetune(base, tmp_path / "a", seed=1)
    b = make_finetune(base, tmp_path / "b", seed=2, scale=0.05)
    probes = ["hello there", "a b c d", "zzz"]
    ab, ba = compute_features_both_orders(str(base), str(a), str(b), probes, device="cpu")
    direct_ab = compute_features(str(base), str(a), str(b), probes, device="cpu")
    direct_ba = compute_features(str(base), str(b), str(a), probes, device="cpu")
    assert list(ab) == list(direct_ab) and list(ba) == list(direct_ba)
    for k in direct_ab:
        assert ab[k] == pytest.approx(direct_ab[k], abs=1e-9), k
        assert ba[k] == pytest.approx(direct_ba[k], abs=1e-6), k
    assert ba["kl_mean"] != pytest.approx(ab["kl_mean"], abs=1e-6)  # KL really is asymmetric here
