"""Trial-merge signals against a direct computation: merge with the engine into a folder,
load it with transformers, run the probes by hand (generate() for the references)."""
import math

import pytest
import torch

from tests.feature_models import char_tokenizer, load_state, make_base, make_finetune, save_state

PROBES_A = ["hello w", "abc", "the quick", "zz top", "a1b2", "one two", "x", "merge me"]
PROBES_B = ["0123", "lorem ipsum", "why?", "cab", "qrs tuv", "hi there", "m", "k-9"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("trial")
    base = make_base(root / "base", seed=0)
    a = make_finetune(base, root / "a", seed=1, scale=0.3)
    b = make_finetune(base, root / "b", seed=2, scale=0.3)
    return root, base, a, b


def _generate(model, tok, prompt, max_new):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return ids[0].tolist(), seq[0, ids.shape[1]:].tolist()


def _direct(merged_folder, expert_folder, probes, max_new):
    """exact / top1 / KL by hand: one probe at a time, no batching, no padding."""
    from transformers import AutoModelForCausalLM

    tok = char_tokenizer()
    expert = AutoModelForCausalLM.from_pretrained(str(expert_folder), dtype=torch.float32).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_folder), dtype=torch.float32).eval()
    exact = hits = n = 0
    kl = 0.0
    with torch.no_grad():
        for text in probes:
            prompt, cont = _generate(expert, tok, text, max_new)
            full = torch.tensor([prompt + cont])
            lp = torch.log_softmax(expert(full).logits[0].double(), -1)[len(prompt) - 1: len(prompt) - 1 + len(cont)]
            lq = torch.log_softmax(merged(full).logits[0].double(), -1)[len(prompt) - 1: len(prompt) - 1 + len(cont)]
            ok = lq.argmax(-1) == torch.tensor(cont)
            exact += int(bool(ok.all()))
            hits += int(ok.sum())
            n += len(cont)
            kl += float((lp.exp() * (lp - lq)).sum())
    return {"exact": exact / len(probes), "top1": hits / n, "kl": 1 - math.exp(-kl / n)}


def test_trial_features_match_a_direct_computation(family, tmp_path):
    from features.trial import TrialRunner
    from merging.engine import run_merge
    from merging.recipe import Recipe

    root, base, a, b = family
    runner = TrialRunner(base, a, b, PROBES_A, PROBES_B, device="cpu", max_new_tokens=6,
                         cache_dir=tmp_path / "cache")
    params = {"density": 0.5}
    got = runner.trial("ties", params, keep=True)

    run_merge(Recipe.from_arm("ties", params, [str(a), str(b)], str(base)), tmp_path / "merged", device="cpu",
              progress=False)
    char_tokenizer().save_pretrained(tmp_path / "merged")
    want_a = _direct(tmp_path / "merged", a, PROBES_A, 6)
    want_b = _direct(tmp_path / "merged", b, PROBES_B, 6)
    f = got.features
    for what in ("exact", "top1", "kl"):
        # log-probabilities are float32 in the model and in the cache: KL agrees to ~1e-5
        tol = 1e-4 if what == "kl" else 0.0
        assert f[f"trial_{what}_a"] == pytest.approx(want_a[what], abs=tol)
        assert f[f"trial_{what}_b"] == pytest.approx(want_b[what], abs=tol)
        assert f[f"trial_{what}"] == pytest.approx((want_a[what] + want_b[what]) / 2, abs=tol)
    # The signals move with the merge: a fine-tune this far from the base is not reproduced whole.
    assert f["trial_kl"] > 0.0 and f["trial_top1"] < 1.0

    # The kept merge writes the same folder as run_merge, with no second merge.
    got.merge.save(tmp_path / "kept")
    from safetensors.torch import load_file
    want = load_file(str(tmp_path / "merged" / "model.safetensors"))
    kept = load_file(str(tmp_path / "kept" / "model.safetensors"))
    assert set(want) == set(kept) and all(torch.equal(want[k], kept[k]) for k in want)


def test_identical_pair_keeps_everything(family, tmp_path):
    from features.trial import TrialRunner

    root, base, a, _ = family
    runner = TrialRunner(base, a, a, PROBES_A, PROBES_B, device="cpu", max_new_tokens=6, cache_dir=tmp_path)
    f = runner.trial("linear", {"weight": 0.5}).features
    assert f["trial_exact"] == 1.0 and f["trial_top1"] == 1.0
    assert f["trial_kl"] == pytest.approx(0.0, abs=1e-9)


def test_references_are_cached_and_reused(family, tmp_path):
    import shutil

    from features.probe_outputs import ProbeOutputCache
    from features.trial import REFERENCE_KIND, TrialRunner, reference_outputs

    root, base, a, b = family
    entries = lambda: sorted((tmp_path / "probe_outputs" / REFERENCE_KIND).rglob("*.npz"))  # noqa: E731
    first, hit = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=5, cache_dir=tmp_path)
    # One entry, in the one probe-output cache (its layout), and no second cache beside it.
    assert not hit and len(entries()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe_outputs"]
    second, hit = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=5, cache_dir=tmp_path)
    assert hit and second.continuations == first.continuations and second.prompts == first.prompts
    assert all(torch.equal(x, y) for x, y in zip(first.top_logp, second.top_logp))
    assert all(torch.equal(x, y) for x, y in zip(first.top_ids, second.top_ids))
    assert ProbeOutputCache(tmp_path).load(_only_key(a, PROBES_A, 5)) is not None
    # Another probe set or cut is another entry, never the cached one.
    _, hit = reference_outputs(a, PROBES_A[:3], device="cpu", max_new_tokens=5, cache_dir=tmp_path)
    assert not hit
    _, hit = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=4, cache_dir=tmp_path)
    assert not hit and len(entries()) == 3
    # The same expert saved again with one weight changed is another checkpoint: a miss.
    changed = tmp_path / "a-changed"
    shutil.copytree(a, changed)
    state = load_state(changed)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1.0
    from transformers import AutoConfig

    save_state(state, AutoConfig.from_pretrained(str(changed)), changed)
    other, hit = reference_outputs(changed, PROBES_A, device="cpu", max_new_tokens=5, cache_dir=tmp_path)
    assert not hit and len(entries()) == 4
    runner = TrialRunner(base, a, b, PROBES_A, PROBES_B, device="cpu", max_new_tokens=5, cache_dir=tmp_path)
    assert runner.reference_cache_hits == 1


def _only_key(folder, probes, max_new_tokens):
    from features.trial import checkpoint_fingerprint, load_tokenizer, reference_key, tokenize_prompts

    prompts = tokenize_prompts(load_tokenizer([folder]), probes)
    return reference_key(checkpoint_fingerprint(folder), probes, prompts, max_new_tokens)


def test_a_damaged_reference_entry_is_recomputed(family, tmp_path):
    from features.trial import REFERENCE_KIND, reference_outputs

    _, _, a, _ = family
    first, _ = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=4, cache_dir=tmp_path)
    (entry,) = (tmp_path / "probe_outputs" / REFERENCE_KIND).rglob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    again, hit = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=4, cache_dir=tmp_path)
    assert not hit and again.continuations == first.continuations
    _, hit = reference_outputs(a, PROBES_A, device="cpu", max_new_tokens=4, cache_dir=tmp_path)
    assert hit


def test_coarse_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise():
    from features.trial import coarse_kl

    gen = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 20, generator=gen) * 2, -1)
    logq = torch.log_softmax(torch.randn(5, 20, generator=gen) * 2, -1)
    full = (logp.double().exp() * (logp.double() - logq.double())).sum(-1)
    vals, ids = logp.topk(20, -1)
    assert torch.allclose(coarse_kl(ids, vals, logq), full, atol=1e-6)
    vals, ids = logp.topk(4, -1)
    part = coarse_kl(ids, vals, logq)
    assert bool((part <= full + 1e-9).all()) and bool((part > 0).all())
