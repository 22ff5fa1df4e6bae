"""Bad checkpoints, recipes and output situations: one-line errors, nothing written; side
files, permissions and partial folders of interrupted merges."""
from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import torch

from merging.checkpoint import Checkpoint
from merging.engine import run_merge
from merging.errors import MergeError
from merging.output import remove_abandoned_partials
from merging.recipe import Recipe
from tests.tiny_models import make_llama, perturb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard")
    base = make_llama(d / "base", seed=0)
    return {"dir": d, "base": base, "ft": perturb(base, d / "ft", seed=1)}


def rewrite_header(folder: Path, edit) -> Path:
    """Apply edit(header dict) to model.safetensors' header, keeping the data bytes."""
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-(8 + len(new)) % 8)
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return folder


def first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def offsets_as_strings(h):
    name = first_tensor(h)
    h[name]["data_offsets"] = [str(x) for x in h[name]["data_offsets"]]


def negative_offsets(h):
    name = first_tensor(h)
    begin, end = h[name]["data_offsets"]
    h[name]["data_offsets"] = [begin - 8, end - 8] if begin >= 8 else [-4, end - 4]


def overlapping(h):
    # Two tensors of the same size: the second points at the first's bytes.
    names = [k for k in h if k != "__metadata__"]
    sizes = {}
    for n in names:
        sizes.setdefault(tuple(h[n]["data_offsets"][1] - h[n]["data_offsets"][0] for _ in [0]), []).append(n)
    same = next(v for v in sizes.values() if len(v) >= 2)
    h[same[1]]["data_offsets"] = list(h[same[0]]["data_offsets"])


@pytest.mark.parametrize("edit, message", [
    (offsets_as_strings, "corrupt safetensors entry"),
    (negative_offsets, "negative offsets"),
    (overlapping, "overlap"),
])
def test_bad_safetensors_headers_are_refused(pair, tmp_path, edit, message):
    bad = rewrite_header(perturb(pair["base"], tmp_path / "bad", seed=5), edit)
    out = tmp_path / "out"
    with pytest.raises(MergeError) as e:
        run_merge(Recipe.from_arm("ties", {}, [pair["ft"], bad], pair["base"]), out, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_index_entry_outside_the_folder_is_refused(pair, tmp_path):
    outside = make_llama(tmp_path / "other", seed=3, shard_size="20KB")
    inner = perturb(outside, tmp_path / "m" / "inner", seed=1)
    index = inner / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../../other/" + data["weight_map"][name]
    index.write_text(json.dumps(data))
    with pytest.raises(MergeError, match="outside the model folder"):
        Checkpoint(inner)


def test_symlink_loop_is_a_one_line_error(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(MergeError) as e:
        Checkpoint(loop)
    assert "symlink loop" in str(e.value)


def test_side_files_copied_only_when_regular(pair, tmp_path):
    src = perturb(pair["base"], tmp_path / "src", seed=2)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (src / "tokenizer.json").symlink_to(secret)
    (src / "vocab.txt").mkdir()
    out = tmp_path / "out"
    run_merge(Recipe.from_arm("linear", {}, [src, pair["ft"]]), out, progress=False, device="cpu")
    assert not (out / "tokenizer.json").exists() and not (out / "vocab.txt").exists()
    assert (out / "tokenizer_config.json").is_file()  # regular files still come along


def test_output_files_respect_the_umask(pair, tmp_path):
    old = os.umask(0o077)
    try:
        out = tmp_path / "out"
        run_merge(Recipe.from_arm("linear", {}, [pair["ft"]]), out, progress=False, device="cpu")
    finally:
        os.umask(old)
    for f in out.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f.name


def test_abandoned_partial_folders_are_removed_running_ones_kept(pair, tmp_path):
    import fcntl

    out = tmp_path / "merged"
    abandoned = tmp_path / ".merged.partial-dead0001"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".merged.partial-dead0001.lock").write_text("")
    running = tmp_path / ".merged.partial-live0001"
    running.mkdir()
    lock = tmp_path / ".merged.partial-live0001.lock"
    lock.write_text("")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another merge holding its lock
    old_unlocked = tmp_path / ".merged.partial-old00001"
    old_unlocked.mkdir()
    os.utime(old_unlocked, (time.time() - 3600, time.time() - 3600))
    young_unlocked = tmp_path / ".merged.partial-new00001"
    young_unlocked.mkdir()
    other_output = tmp_path / ".elsewhere.partial-dead0002"
    other_output.mkdir()
    try:
        run_merge(Recipe.from_arm("linear", {}, [pair["ft"]]), out, progress=False, device="cpu")
    finally:
        os.close(fd)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["merged", ".merged.partial-live0001", ".merged.partial-live0001.lock",
                           ".merged.partial-new00001", ".elsewhere.partial-dead0002"])
    # Once the other merge is gone, its folder is abandoned too.
    assert remove_abandoned_partials(out) == [running]


def test_recipe_with_models_not_a_list_is_refused_before_any_work(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("merge_method: linear\nmodels: 5\n")
    with pytest.raises(MergeError) as e:
        Recipe.load(path)
    assert "models must be a list" in str(e.value) and "\n" not in str(e.value)


def test_shards_index_and_side_files_are_fsynced_before_the_rename(pair, tmp_path, monkeypatch):
    import merging.output as output

    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    real_rename = Path.rename
    renamed_after: list[int] = []

    def rename(self, target):
        renamed_after.append(len(synced))
        return real_rename(self, target)

    monkeypatch.setattr(output.os, "fsync", record)
    monkeypatch.setattr(Path, "rename", rename)
    out = tmp_path / "m"
    run_merge(Recipe.from_arm("linear", {}, [pair["ft"]]), out, progress=False, device="cpu", shard_size="20KB")
    written = {p.name for p in out.iterdir()}
    assert "model.safetensors.index.json" in written
    before_rename = set(synced[: renamed_after[0]])
    assert written <= before_rename, written - before_rename
    assert any(name.startswith(".m.partial-") for name in before_rename)  # the folder itself
