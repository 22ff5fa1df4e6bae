"""Merges of models with different vocabularies (tokenizer_source union/base/model and the
tokenizer: section): the output tokenizer, and each output embedding / lm_head row
against a reference built by hand, token by token, from mergekit's rule."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from merging.engine import plan_merge, run_merge
from merging.errors import MergeError
from merging.recipe import Recipe
from merging.vocabulary import RowOverride, align_rows
from tests.tiny_models import add_word_tokenizer, load_tensors, make_llama, perturb

torch.set_num_threads(1)

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
BASE_WORDS = ["<unk>"] + [f"w{i}" for i in range(12)]          # 13 words + <|a|> = 14 tokens, 16 rows
B_WORDS = ["<unk>"] + [f"w{i}" for i in range(6)] + ["x0", "x1", "x2"]  # 10 words + <|b|>, 12 rows
C_WORDS = ["<unk>", "w0", "w7", "x1", "y0"]                    # 5 words, 8 rows


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    base = make_llama(d / "base", seed=0, vocab=16)
    add_word_tokenizer(base, BASE_WORDS, ("<|a|>",))
    a = perturb(base, d / "a", seed=1)
    b = make_llama(d / "b", seed=3, vocab=12)
    add_word_tokenizer(b, B_WORDS, ("<|b|>",))
    c = make_llama(d / "c", seed=4, vocab=8)
    add_word_tokenizer(c, C_WORDS)
    return {"dir": d, "base": base, "a": a, "b": b, "c": c}


def vocab_of(folder) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def merge(text: str, out):
    return run_merge(Recipe.from_yaml(textwrap.dedent(text)), out, device="cpu", progress=False)


def rows_by_token(folder, name: str) -> dict[str, torch.Tensor]:
    vocab, tensor = vocab_of(folder), load_tensors(folder)[name]
    return {tok: tensor[i] for tok, i in vocab.items()}


def test_align_rows_follows_each_rule():
    # 3 members, 6 output tokens; member rows hold distinct values so every pick shows.
    t = [torch.arange(12.).reshape(6, 2) + 100 * m for m in range(3)]
    positions = [[0, 1, -1, 3, -1, -1],     # member 0 (the base)
                 [5, -1, 2, -1, -1, 4],
                 [1, -1, 3, 0, -1, 2]]
    out = align_rows(t, positions, 8, base=0)
    row = lambda m, r: t[m][r]  # noqa: E731
    # token 0: everyone has it -> own rows
    for m, r in ((0, 0), (1, 5), (2, 1)):
        assert torch.equal(out[m][0], row(m, r))
    # token 1: only the base -> donor for the others
    assert torch.equal(out[1][1], row(0, 1)) and torch.equal(out[2][1], row(0, 1))
    # token 2: members 1, 2 have it, the base lacks it -> mean of theirs
    assert torch.equal(out[0][2], (row(1, 2) + row(2, 3)) / 2)
    # token 3: base and member 2 have it -> base's row for member 1
    assert torch.equal(out[1][3], row(0, 3))
    # token 4: nobody -> zeros
    assert all(torch.equal(o[4], torch.zeros(2)) for o in out)
    # token 5: members 1 and 2, no base row -> mean for the base
    assert torch.equal(out[0][5], (row(1, 4) + row(2, 2)) / 2)
    # padding rows: each member's mean over its 6 real rows
    for o in out:
        assert torch.allclose(o[6], o[:6].mean(0)) and torch.equal(o[6], o[7])
    # without a base, token 3 (two of three) is the mean of the two
    free = align_rows(t, positions, 6)
    assert torch.equal(free[1][3], (row(0, 3) + row(2, 0)) / 2)
    # a named token: forced row 4 of member 2 for everyone; zero source only where lacking
    named = align_rows(t, positions, 6, base=0, overrides=[RowOverride(0, 2, 4, True), RowOverride(2, None, 0, False)])
    assert all(torch.equal(o[0], row(2, 4)) for o in named)
    assert torch.equal(named[0][2], torch.zeros(2)) and torch.equal(named[1][2], row(1, 2))
    # a named token everyone has, not forced: own rows, and no other token's stand-in touched
    kept = align_rows(t, positions, 6, base=0, overrides=[RowOverride(0, 2, 4, False)])
    for m, r in ((0, 0), (1, 5), (2, 1)):
        assert torch.equal(kept[m][0], row(m, r))
    assert torch.equal(kept[0][5], out[0][5]) and torch.equal(kept[1][4], out[1][4])


def test_union_linear_three_vocabularies(zoo, tmp_path):
    out = tmp_path / "m"
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    merge(f"""
        merge_method: linear
        models:
          - {{model: {zoo['a']}, parameters: {{weight: {w['a']}}}}}
          - {{model: {zoo['b']}, parameters: {{weight: {w['b']}}}}}
          - {{model: {zoo['c']}, parameters: {{weight: {w['c']}}}}}
        tokenizer_source: union
        dtype: float32
        """, out)
    vocab = vocab_of(out)
    # a's tokenizer (the first model), then the new ordinary tokens in model order, then added ones
    expected = BASE_WORDS + ["<|a|>", "x0", "x1", "x2", "y0", "<|b|>"]
    assert sorted(vocab, key=vocab.get) == expected
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(expected)
    got = load_tensors(out)
    for name in VOCAB_TENSORS:
        own = {k: rows_by_token(zoo[k], name) for k in w}
        for token, i in vocab.items():
            have = [k for k in w if token in own[k]]
            if len(have) == 1:
                stand_in = own[have[0]][token]
            else:
                stand_in = sum(own[k][token] for k in have) / len(have)   # no base: the mean
            rows = {k: own[k].get(token, stand_in) for k in w}
            want = sum(w[k] * rows[k] for k in w) / sum(w.values())
            assert torch.allclose(got[name][i], want, atol=1e-6), (name, token)


def _aligned_copy(src, out, vocab: dict[str, int], stand_in: dict[str, dict[str, torch.Tensor]]):
    """src with its vocabulary rows laid out by `vocab` (the reference alignment)."""
    out.mkdir()
    tensors = load_tensors(src)
    own = vocab_of(src)
    for name in VOCAB_TENSORS:
        rows = [tensors[name][own[t]] if t in own else stand_in[name][t] for t in sorted(vocab, key=vocab.get)]
        tensors[name] = torch.stack(rows).contiguous()
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": len(vocab)}))
    return out


def test_union_ties_with_base_matches_the_same_merge_of_hand_aligned_models(zoo, tmp_path):
    recipe = textwrap.dedent("""
        merge_method: ties
        base_model: BASE
        models:
          - {model: A, parameters: {weight: 0.6, density: 0.5}}
          - {model: B, parameters: {weight: 0.4, density: 0.5}}
        dtype: float32
        """)
    paths = lambda m: recipe.replace("BASE", str(m["base"])).replace("A,", f"{m['a']},").replace("B,", f"{m['b']},")  # noqa: E731
    out = tmp_path / "m"
    merge(paths(zoo) + "tokenizer_source: union\n", out)
    vocab = vocab_of(out)
    # Reference: rows the base has come from the base; tokens only b has come from b.
    stand_in = {}
    for name in VOCAB_TENSORS:
        base_rows, b_rows = rows_by_token(zoo["base"], name), rows_by_token(zoo["b"], name)
        stand_in[name] = {t: base_rows[t] if t in base_rows else b_rows[t] for t in vocab}
    hand = {k: _aligned_copy(zoo[k], tmp_path / f"hand-{k}", vocab, stand_in) for k in ("base", "a", "b")}
    reference = tmp_path / "ref"
    merge(paths(hand), reference)
    got, want = load_tensors(out), load_tensors(reference)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # a token only b has: every input's row is b's, so the merge keeps it
    assert torch.equal(got["model.embed_tokens.weight"][vocab["x1"]],
                       rows_by_token(zoo["b"], "model.embed_tokens.weight")["x1"])


def test_tokenizer_of_a_model_and_the_tokenizer_section(zoo, tmp_path):
    out = tmp_path / "m"
    merge(f"""
        merge_method: linear
        models: [{{model: {zoo['a']}, parameters: {{weight: 1}}}}, {{model: {zoo['b']}, parameters: {{weight: 1}}}}]
        dtype: float32
        tokenizer:
          source: {zoo['b']}
          pad_to_multiple_of: 8
          tokens:
            w9: {{source: {{kind: model_token, model: {zoo['a']}, token: w9}}}}
            x0: {{source: {{kind: zero}}, force: true}}
            w1: {{source: {{kind: model_token, model: {zoo['b']}, token_id: 3}}, force: true}}
        """, out)
    vocab = vocab_of(out)
    # b's tokenizer plus the named token it lacks (w9), padded to a multiple of 8
    assert sorted(vocab, key=vocab.get) == B_WORDS + ["<|b|>", "w9"]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 16
    emb = load_tensors(out)["model.embed_tokens.weight"]
    a_rows, b_rows = (rows_by_token(zoo[k], "model.embed_tokens.weight") for k in ("a", "b"))
    assert emb.shape[0] == 16
    assert torch.allclose(emb[vocab["w2"]], (a_rows["w2"] + b_rows["w2"]) / 2, atol=1e-6)
    assert torch.allclose(emb[vocab["w9"]], a_rows["w9"], atol=1e-6)       # a's own row, named as b's stand-in
    assert torch.allclose(emb[vocab["x2"]], b_rows["x2"], atol=1e-6)       # only b: donor
    assert torch.equal(emb[vocab["x0"]], torch.zeros(emb.shape[1]))        # forced zero for both
    b_emb = load_tensors(zoo["b"])["model.embed_tokens.weight"]
    assert torch.allclose(emb[vocab["w1"]], b_emb[3], atol=1e-6)           # forced: b's row of id 3 for both
    real = len(vocab)
    assert torch.allclose(emb[real:], emb[:real].mean(0).expand(16 - real, -1), atol=1e-6)


def test_same_vocabulary_keeps_copying_the_files(zoo, tmp_path):
    out = tmp_path / "m"
    merge(f"merge_method: linear\nmodels: [{{model: {zoo['base']}}}, {{model: {zoo['a']}}}]\ntokenizer_source: union\n",
          out)
    assert (out / "tokenizer.json").read_bytes() == (zoo["base"] / "tokenizer.json").read_bytes()
    # mergekit sizes the vocabulary tensors to the tokenizer: 14 tokens, not the 16 stored rows
    assert load_tensors(out)["model.embed_tokens.weight"].shape[0] == 14


@pytest.mark.parametrize("extra, message", [
    ("tokenizer_source: union\ntokenizer: {source: union}\n", "tokenizer_source or tokenizer, not both"),
    ("tokenizer: {source: union, pad: 8}\n", "unknown key 'pad'"),
    ("tokenizer: {tokens: {w1: {source: {kind: mean}}}}\n", "kind must be one of"),
    ("tokenizer: {tokens: {w1: {force: true}}}\n", "force needs a source"),
    ("tokenizer: {pad_to_multiple_of: 0}\n", "pad_to_multiple_of"),
    ("tokenizer: {tokens: {w1: {source: {kind: model_token, model: m, token: a, token_id: 1}}}}\n", "exactly one of"),
])
def test_bad_tokenizer_sections_are_one_line_errors(extra, message):
    with pytest.raises(MergeError) as e:
        Recipe.from_yaml("merge_method: linear\nmodels: [{model: a}]\n" + extra).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_token_source_outside_the_merge_is_refused_before_writing(zoo, tmp_path):
    recipe = Recipe.from_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}, {{model: {zoo['b']}}}]\n"
                              f"tokenizer: {{tokens: {{x0: {{source: {zoo['c']}}}}}}}\n")
    with pytest.raises(MergeError, match="not an input"):
        run_merge(recipe, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists()


def test_recipe_with_tokenizer_section_round_trips(zoo):
    text = textwrap.dedent("""
        merge_method: linear
        models: [{model: a}, {model: b}]
        tokenizer:
          source: base
          pad_to_multiple_of: 64
          tokens:
            <|im_start|>: {source: a, force: true}
            <|x|>: {source: {kind: zero}}
            <|y|>: {source: {kind: model_token, model: b, token_id: 3}}
        slices: []
        """).replace("slices: []\n", "")
    r = Recipe.from_yaml(text)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.from_dict(json.loads(r.to_json())) == r
    plan = plan_merge(Recipe.from_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}, {{model: {zoo['c']}}}]\n"
                                       "tokenizer_source: union\n"))
    assert plan.vocabulary.rows == 14 + 2  # a's 14 tokens, then c's x1 and y0


def test_bandit_merge_recipe_with_a_union_in_an_intermediate(zoo, tmp_path):
    from click.testing import CliRunner

    from cli import main

    recipe = tmp_path / "multi.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: both
        merge_method: linear
        models: [{{model: {zoo['a']}, parameters: {{weight: 1}}}}, {{model: {zoo['b']}, parameters: {{weight: 1}}}}]
        tokenizer: {{source: union, tokens: {{x0: {{source: {zoo['b']}, force: true}}}}}}
        ---
        merge_method: linear
        models: [{{model: both, parameters: {{weight: 1}}}}, {{model: {zoo['c']}, parameters: {{weight: 1}}}}]
        tokenizer_source: both
        dtype: float32
        """))
    r = CliRunner().invoke(main, ["merge", "--recipe", str(recipe), "--out", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.output
    vocab = vocab_of(tmp_path / "m")
    assert sorted(vocab, key=vocab.get) == BASE_WORDS + ["<|a|>", "x0", "x1", "x2", "<|b|>"]
    got = rows_by_token(tmp_path / "m", "model.embed_tokens.weight")
    b_rows, c_rows = (rows_by_token(zoo[k], "model.embed_tokens.weight") for k in ("b", "c"))
    # x0: b's row forced in the first step (so both inputs carry it), then c lacks it: the intermediate's
    assert torch.allclose(got["x0"], b_rows["x0"], atol=1e-6)
    # x1: in the intermediate (b's, as only b has it there) and in c: their mean
    assert torch.allclose(got["x1"], (b_rows["x1"] + c_rows["x1"]) / 2, atol=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\ntokenizer: {{source: union, pad: 8}}\n")
    r = CliRunner().invoke(main, ["merge", "--recipe", str(bad), "--out", str(tmp_path / "n")])
    assert r.exit_code == 1 and "unknown key 'pad'" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "n").exists()
