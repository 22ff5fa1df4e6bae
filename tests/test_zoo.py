"""The zoo: tasks and scoring, the tokenizer, the evaluator, a reduced build, the CLI."""
from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from cli import main
from zoo.errors import ZooError
from zoo.evaluate import retained_skill_reward
from zoo.tasks import (
    EVAL_SIZE, HIDDEN_TAG, TASKS, TrainingStream, eval_set, exact_match, get_task, held_out_inputs,
    probe_set, task_names,
)


# -- tasks --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, task_input, answer", [
    ("add", "37+5", "42"),
    ("add", "99+9", "108"),
    ("successor", "199", "200"),
    ("sort", "3141", "1134"),
    ("max", "3841", "8"),
    ("reverse", "abcd", "dcba"),
    ("duplicate", "abc", "aabbcc"),
    ("upper", "abc", "ABC"),
    ("shift", "abz", "bca"),
    ("count", "abba", "2"),
    ("digits_first", "a1b2", "12ab"),
])
def test_task_answers(name, task_input, answer):
    assert get_task(name).solve(task_input) == answer


def test_at_least_eight_tasks_and_prompt_format():
    assert len(TASKS) >= 8
    add = get_task("add")
    assert add.prompt("1+2") == "[add]1+2="
    assert add.solve("1+2") == "3"
    assert add.prompt("1+2", tag_visible=False) == f"{HIDDEN_TAG}1+2="


def test_generated_examples_are_solved_consistently():
    rng = random.Random(5)
    for task in TASKS.values():
        for _ in range(50):
            ex = task.example(rng)
            x = ex.prompt[len(task.tag):-1]
            assert ex.prompt == task.prompt(x) and ex.answer == task.solve(x)
            assert "[" not in x and "=" not in x  # the tag and the `=` stay unambiguous


def test_sets_are_seeded_distinct_and_held_out():
    first = eval_set("sort")
    assert first == eval_set("sort")  # same every call, no global randomness
    assert len(first) == EVAL_SIZE and len({e.prompt for e in first}) == EVAL_SIZE
    assert eval_set("sort", 10) == first[:10]
    # successor has only 999 inputs, so a careless sampler would reuse eval inputs.
    held = held_out_inputs("successor")
    stream = TrainingStream(["successor"], seed=1, tag_visible=True)
    assert not {e.prompt for e in stream.batch(2000)} & held
    probes = probe_set("reverse")
    assert len(probes) == 64 and all(p.startswith("[reverse]") and p.endswith("=") for p in probes)
    assert not set(probes) & held_out_inputs("reverse")


def test_hidden_tag_stream_mixes_tasks():
    batch = TrainingStream(["upper", "max"], seed=0, tag_visible=False).batch(200)
    assert all(e.prompt.startswith(HIDDEN_TAG) for e in batch)
    assert {e.answer.isdigit() for e in batch} == {True, False}


def test_exact_match_and_task_names():
    assert exact_match(["12", "3", "x"], ["12", "30", "x"]) == pytest.approx(2 / 3)
    assert exact_match(["ab"], ["ab "]) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])
    assert task_names("add,sort") == ["add", "sort"]
    assert task_names(["add", "add,max"]) == ["add", "max"]
    assert task_names("all") == list(TASKS)
    with pytest.raises(ZooError, match="unknown task 'nope'"):
        task_names(["add", "nope"])


# -- reward -------------------------------------------------------------------------------

def test_retained_skill_reward():
    experts = {"a": 0.8, "b": 0.5}
    assert retained_skill_reward({"a": 0.4, "b": 0.5}, experts) == pytest.approx((0.5 + 1.0) / 2)
    # Beating an expert is capped at full retention.
    assert retained_skill_reward({"a": 1.0, "b": 0.25}, experts) == pytest.approx((1.0 + 0.5) / 2)
    assert retained_skill_reward({"a": 0.0, "b": 0.0}, experts) == 0.0
    # An expert with no skill has nothing to lose: that task counts as fully retained.
    assert retained_skill_reward({"a": 0.2, "b": 0.0}, {"a": 0.8, "b": 0.0}) == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="tasks differ"):
        retained_skill_reward({"a": 0.1}, experts)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        retained_skill_reward({"a": float("nan"), "b": 0.1}, experts)


# -- tokenizer ----------------------------------------------------------------------------

def test_tokenizer_round_trip_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from zoo.tokenizer import save_tokenizer, vocabulary

    save_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "[digits_first]a1b2=12ab"
    ids = tok(text)["input_ids"]
    vocab = vocabulary()
    # <s>, one id for the tag, then one id per character.
    assert ids == [vocab["<s>"], vocab["[digits_first]"]] + [vocab[c] for c in "a1b2=12ab"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("[nope]x")["input_ids"]) == ["<s>", "<unk>", "x"]
    assert tok.eos_token == "</s>" and tok.pad_token_id == vocab["<pad>"]


# -- a reduced zoo, built once for the tests below ----------------------------------------

# `reduced_zoo` (session-wide, shared with the demo tests) lives in conftest.py.

def test_reduced_zoo_builds_and_experts_beat_base(reduced_zoo):
    from zoo.manifest import load_zoo

    # Its build time is a benchmark figure, not a test: a loaded machine must not fail it.
    built, _ = reduced_zoo
    zoo = load_zoo(built.root)  # the manifest on disk says what build_zoo returned
    assert zoo.manifest["accuracy"] == built.manifest["accuracy"] and zoo.tasks == built.tasks
    assert 2 <= len(zoo.tasks) <= 3 and zoo.base.is_dir()
    base = zoo.accuracy("base")
    for task in zoo.tasks:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (zoo.expert(task) / name).is_file()
        assert zoo.expert_accuracy(task) > base[task] + 0.2, (task, zoo.expert_accuracy(task), base[task])
        assert zoo.probes(task).read_text().splitlines() == probe_set(task)
    assert len(zoo.pairs()) == len(zoo.tasks) * (len(zoo.tasks) - 1)


def test_teacher_forced_scoring_equals_generate(reduced_zoo):
    from zoo.evaluate import generated_answers, load_model, teacher_forced_correct
    from zoo.tokenizer import load_tokenizer

    built, _ = reduced_zoo
    own, other = built.tasks[0], built.tasks[1]
    folder = built.expert(own)
    model, tok = load_model(folder), load_tokenizer(folder)
    # An expert on its own task gets most right, on another task most wrong: both outcomes.
    examples = eval_set(own, 8) + eval_set(other, 8)
    forced = teacher_forced_correct(model, tok, examples, batch_size=7)
    generated = generated_answers(model, tok, [e.prompt for e in examples])
    assert forced == [g == e.answer for g, e in zip(generated, examples)]
    assert True in forced and False in forced


def test_merge_reward_uses_the_manifest_experts(reduced_zoo):
    from zoo.evaluate import merge_reward

    built, _ = reduced_zoo
    a, b = built.tasks[0], built.tasks[1]
    # The expert for `a` standing in for a merge: it keeps all of a and little of b.
    reward, acc = merge_reward(built, built.expert(a), (a, b))
    assert acc == {t: built.accuracy(f"expert-{a}")[t] for t in (a, b)}
    expected = (min(1.0, acc[a] / built.expert_accuracy(a)) + min(1.0, acc[b] / built.expert_accuracy(b))) / 2
    assert reward == pytest.approx(expected) and 0.5 <= reward < 0.75


def test_rebuild_reuses_and_retrains_only_what_is_missing(reduced_zoo, tmp_path):
    import shutil

    from zoo.build import build_zoo, reduced_recipe

    built, _ = reduced_zoo
    root = tmp_path / "copy"
    shutil.copytree(built.root, root)
    again = build_zoo(root, recipe=reduced_recipe(), progress=False)
    assert set(again.manifest["reused"]) == {"base"} | {f"expert-{t}" for t in built.tasks}
    assert again.manifest["accuracy"] == built.manifest["accuracy"]
    # A full reuse still reports what the zoo cost to build, not the seconds of the reuse.
    assert again.manifest["build_seconds"]["total"] == built.manifest["build_seconds"]["total"]
    assert again.manifest["build_seconds"]["this_run"] < built.manifest["build_seconds"]["total"]

    task = built.tasks[0]
    weights = (built.expert(task) / "model.safetensors").read_bytes()
    shutil.rmtree(root / f"expert-{task}")
    third = build_zoo(root, recipe=reduced_recipe(), progress=False)
    assert f"expert-{task}" not in third.manifest["reused"] and "base" in third.manifest["reused"]
    # Seeded training: the retrained expert is the same checkpoint as before — and the one
    # expert is trained in this process, where the fixture's were trained in worker
    # processes (one per core), so the two paths give the same bytes.
    assert (third.expert(task) / "model.safetensors").read_bytes() == weights

    # A changed recipe is not silently reused.
    changed = build_zoo(root, recipe=reduced_recipe(finetune_steps=5), progress=False)
    assert changed.manifest["reused"] == ["base"]


# -- CLI ----------------------------------------------------------------------------------

def test_cli_eval(reduced_zoo):
    built, _ = reduced_zoo
    runner = CliRunner()
    task = built.tasks[1]
    folder = str(built.expert(task))
    result = runner.invoke(main, ["eval", folder, "--task", f"{built.tasks[0]},{task}", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["accuracy"] == {t: built.manifest["accuracy"][f"expert-{task}"][t] for t in built.tasks[:2]}

    text = runner.invoke(main, ["eval", folder, "--task", task])
    assert text.exit_code == 0 and text.output == f"{task}\t{built.expert_accuracy(task):.4f}\n"

    bad = runner.invoke(main, ["eval", folder, "--task", "nope"])
    assert bad.exit_code == 1 and bad.output.startswith("error: unknown task 'nope'")
    missing = runner.invoke(main, ["eval", str(built.root / "nothing"), "--task", task])
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_cli_zoo_build_reuses_a_built_zoo(reduced_zoo):
    built, _ = reduced_zoo
    result = CliRunner().invoke(main, ["zoo", "build", "--dir", str(built.root), "--size", "reduced", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["root"] == str(built.root) and out["accuracy"] == built.manifest["accuracy"]
    assert len(out["reused"]) == 1 + len(built.tasks)

    text = CliRunner().invoke(main, ["zoo", "build", "--dir", str(built.root), "--size", "reduced"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith(f"zoo (reduced, {built.manifest['parameters']:,} parameters per model)")
    assert "reused: base, expert-" in lines[1]
    assert lines[1].startswith(f"build time {built.manifest['build_seconds']['total']:.1f} s")
    row = next(line for line in lines if line.startswith("base "))
    assert row.split()[1:] == [f"{built.accuracy('base')[t]:.3f}" for t in built.tasks]


def test_unknown_size_recipe_and_missing_zoo_are_user_errors(tmp_path):
    from zoo.build import recipe_for, reduced_recipe
    from zoo.manifest import load_zoo

    with pytest.raises(ZooError, match="unknown zoo size 'huge'"):
        recipe_for("huge")
    with pytest.raises(ZooError, match="unknown task"):
        reduced_recipe(tasks=("upper", "nope"))
    with pytest.raises(ZooError, match="at least two tasks"):
        reduced_recipe(tasks=("upper",))
    with pytest.raises(ZooError, match="no zoo at"):
        load_zoo(tmp_path)


def test_a_second_build_in_the_same_folder_is_refused(tmp_path):
    import fcntl

    from zoo.build import build_zoo, reduced_recipe

    (tmp_path / ".building-base-1").mkdir()  # as an interrupted build leaves it
    with open(tmp_path / ".build.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ZooError, match="another zoo build is running"):
            build_zoo(tmp_path, recipe=reduced_recipe(), progress=False)
        assert (tmp_path / ".building-base-1").is_dir()  # not touched while another build runs


def test_expert_jobs_follow_the_cores_and_the_environment(monkeypatch):
    from zoo.build import expert_jobs
    from zoo.errors import ZooError

    monkeypatch.delenv("SIMMERGE_ZOO_JOBS", raising=False)
    assert 1 <= expert_jobs() <= 4
    monkeypatch.setenv("SIMMERGE_ZOO_JOBS", "1")
    assert expert_jobs() == 1
    monkeypatch.setenv("SIMMERGE_ZOO_JOBS", "two")
    with pytest.raises(ZooError, match="SIMMERGE_ZOO_JOBS must be a whole number"):
        expert_jobs()
