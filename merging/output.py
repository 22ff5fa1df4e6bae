"""What a merge writes besides the weights, and how the output folder comes into place.

- config.json from the config source (dtype and layer count updated), the tokenizer and
  generation side files (regular files only: a symlink is never followed, so a linked
  secret cannot end up in the output), the chat template when the recipe sets one;
- the recipe as `mergekit_config.yml` (mergekit's layout, loadable by mergekit-yaml) and
  as `merge_recipe.json` / `merge_recipe.yaml`;
- README.md, a model card: base, models, method, parameters and, when the merge came
  from a bandit proposal, its event id, policy and predicted reward.

PartialFolder builds the output in a hidden sibling folder, fsyncs it and renames it into
place; a lock file next to it, held while the merge runs, tells a later run which partial
folders were abandoned (and may be removed) and which belong to a merge still running.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from merging.chat_templates import template_text
from merging.errors import MergeError

RECIPE_JSON = "merge_recipe.json"
RECIPE_YAML = "merge_recipe.yaml"
MERGEKIT_CONFIG = "mergekit_config.yml"
MODEL_CARD = "README.md"
# Copied from the config source (or the tokenizer source) next to the weights.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "spiece.model",
    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
SIDE_FILES = ("generation_config.json",) + TOKENIZER_FILES
# A partial folder with no lock file is left alone this long (its merge may be starting).
UNLOCKED_GRACE_SECONDS = 60.0


# -- side files --------------------------------------------------------------------------

def copy_regular_file(src: Path, dst: Path) -> bool:
    """Copy src to dst only when src is a regular file itself (not a symlink, device or
    folder); the new file gets the process's default mode (the umask applies)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # absent, a symlink (ELOOP) or unreadable: not copied
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with os.fdopen(fd, "rb", closefd=False) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return True
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _tokenizer_folder(plan, recipe) -> Path | None:
    """Where the tokenizer files are copied from, or None when the merge built its own
    tokenizer (plan.vocabulary.tokenizer, saved instead)."""
    vocabulary = plan.vocabulary
    if vocabulary is not None:
        return vocabulary.copy_from
    settings = recipe.tokenizer_settings
    source = settings.source if settings is not None else None
    if source is None or source == "union":
        # union of inputs without tokenizer files: nothing to align, the config source's files
        return Path(plan.config_source.path)
    if source == "base":
        if plan.resolved.base is None:
            raise MergeError("tokenizer_source: base, but the recipe has no base_model")
        return Path(plan.resolved.base)
    folder = Path(source)
    if not folder.is_dir():
        raise MergeError(f"tokenizer_source: {source!r} is not union, base or a model folder")
    return folder


def _chat_template(plan, recipe) -> str | None:
    """The recipe's chat_template: 'auto' (the template most inputs use), a built-in name
    (merging.chat_templates) or the template text."""
    value = recipe.chat_template
    if not value:
        return None  # mergekit ignores an empty one too
    if value == "auto":
        found = [t.strip() for t in (_input_template(ck.path) for ck in plan.inputs) if t and t.strip()]
        if not found:
            return None
        return Counter(found).most_common(1)[0][0]
    return template_text(value)


def _input_template(folder: Path) -> str | None:
    """A model's own chat template: chat_template.jinja, else tokenizer_config.json's."""
    jinja = Path(folder) / "chat_template.jinja"
    try:
        if jinja.is_file() and not jinja.is_symlink():
            return jinja.read_text()
    except (OSError, UnicodeDecodeError):
        pass
    template = (_read_json(Path(folder) / "tokenizer_config.json") or {}).get("chat_template")
    if isinstance(template, dict):  # several named templates: mergekit takes 'default'
        template = template.get("default")
    return template if isinstance(template, str) else None


def merged_config(plan, recipe) -> dict:
    """The merged model's config.json: the config source's, with the output dtype, the
    vocabulary rows and the layer count this merge produces."""
    config = dict(plan.config_source.config)
    out_dtype = recipe.out_dtype or recipe.dtype
    if out_dtype is not None:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["dtype"]
        for k in keys:
            config[k] = out_dtype
    if plan.vocab_rows is not None and "vocab_size" in config:
        config["vocab_size"] = plan.vocab_rows
    if plan.vocabulary is not None:
        if isinstance(config.get("text_config"), dict) and "vocab_size" not in config:
            config["text_config"] = {**config["text_config"], "vocab_size": plan.vocabulary.rows}
        else:
            config["vocab_size"] = plan.vocabulary.rows
    if plan.layers is not None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in config:
                config[key] = plan.layers
        if isinstance(config.get("layer_types"), list) and config["layer_types"]:
            # One entry per layer; sliced models keep the pattern's first entries.
            pattern = config["layer_types"]
            config["layer_types"] = [pattern[i % len(pattern)] for i in range(plan.layers)]
    return config


def write_side_files(plan, recipe, folder: Path, provenance: Mapping[str, Any] | None = None) -> None:
    source = plan.config_source
    config = merged_config(plan, recipe)
    _write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_from = _tokenizer_folder(plan, recipe)
    for name in SIDE_FILES:
        origin = tokenizer_from if name in TOKENIZER_FILES else source.path
        if origin is not None:
            copy_regular_file(origin / name, folder / name)
    if tokenizer_from is None:
        plan.vocabulary.tokenizer.save_pretrained(str(folder))
    template = _chat_template(plan, recipe)
    if template is not None:
        config_path = folder / "tokenizer_config.json"
        tokenizer_config = _read_json(config_path) or {}
        tokenizer_config["chat_template"] = template
        _write_text(config_path, json.dumps(tokenizer_config, indent=2) + "\n")
        for stale in ("chat_template.jinja", "chat_template.json"):
            (folder / stale).unlink(missing_ok=True)
    _write_text(folder / RECIPE_JSON, recipe.to_json() + "\n")
    _write_text(folder / RECIPE_YAML, recipe.to_yaml())
    _write_text(folder / MERGEKIT_CONFIG, recipe.to_yaml())
    _write_text(folder / MODEL_CARD, model_card(plan, recipe, provenance))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def model_card(plan, recipe, provenance: Mapping[str, Any] | None = None) -> str:
    """A README in the Hugging Face model-card layout: YAML front matter, then prose."""
    import yaml

    resolved = plan.resolved
    models = sorted({str(ck.path) for ck in plan.inputs} - ({resolved.base} if resolved.base else set()))
    front: dict[str, Any] = {}
    if resolved.base is not None:
        front["base_model"] = resolved.base
    front["library_name"] = "transformers"
    front["tags"] = ["merge", "simmerge", recipe.operator]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {recipe.name or Path(plan.config_source.path).name + '-' + recipe.operator}", "",
             f"A merge of pre-trained language models made with simmerge, method `{recipe.operator}` "
             f"({resolved.spec.description}).", "", "## Models", ""]
    if resolved.base is not None:
        lines.append(f"- base: `{resolved.base}`")
    lines += [f"- `{m}`" for m in models]
    lines += ["", "## Parameters", ""]
    for key, value in resolved.params.items():
        lines.append(f"- {key}: {json.dumps(value)}")
    if resolved.varies:
        lines.append("- (some parameters vary by layer or tensor name: see the configuration below)")
    if provenance:
        lines += ["", "## Provenance", "", "This merge was chosen by simmerge's contextual bandit:", ""]
        labels = {"event_id": "event id", "policy": "policy", "predicted_reward": "predicted reward"}
        for key, value in provenance.items():
            lines.append(f"- {labels.get(key, key)}: {value}")
    lines += ["", "## Configuration", "", f"The recipe, as `{MERGEKIT_CONFIG}` (mergekit's layout):", "",
              "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


# -- the partial folder ------------------------------------------------------------------

def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFolder:
    """`.NAME.partial-XXXX` next to the output, with `.NAME.partial-XXXX.lock` held (flock)
    while the merge runs. On entry, abandoned partial folders of the same output (their
    lock free, or no lock and older than a minute) are removed; on failure, this one is."""

    def __init__(self, out: Path):
        self.out = Path(out)
        tag = uuid.uuid4().hex[:8]
        self.path = self.out.parent / f".{self.out.name}.partial-{tag}"
        self.lock_path = self.out.parent / f".{self.out.name}.partial-{tag}.lock"
        self._lock_fd: int | None = None

    def __enter__(self) -> "PartialFolder":
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            remove_abandoned_partials(self.out, keep=self.path)
            self.path.mkdir()
        except OSError as e:
            self._release()
            raise MergeError(f"{self.out.parent}: cannot create the output folder ({e.strerror or e})") from None
        return self

    def commit(self, overwrite: bool) -> None:
        """fsync every file and the folder, then rename it into place."""
        for item in self.path.iterdir():
            if item.is_file():
                _fsync_path(item)
        _fsync_path(self.path, directory=True)
        out = self.out
        if out.exists():
            if any(out.iterdir()):
                if not overwrite:
                    raise MergeError(f"{out}: appeared while merging; the merge is discarded")
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                out.rename(old)
                self.path.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                out.rmdir()
                self.path.rename(out)
        else:
            self.path.rename(out)
        _fsync_path(out.parent, directory=True)

    def __exit__(self, *exc) -> bool:
        shutil.rmtree(self.path, ignore_errors=True)  # gone already when committed
        self._release()
        return False

    def _release(self) -> None:
        if self._lock_fd is not None:
            try:
                self.lock_path.unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None


def remove_abandoned_partials(out: Path, keep: Path | None = None) -> list[Path]:
    """Remove `.NAME.partial-*` folders of this output whose merge is no longer running."""
    removed = []
    prefix = f".{out.name}.partial-"
    for item in out.parent.iterdir():
        if not item.name.startswith(prefix) or item.name.endswith(".lock") or item == keep:
            continue
        if item.is_symlink() or not item.is_dir():
            continue
        lock = item.parent / (item.name + ".lock")
        if lock.exists():
            try:
                fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its merge still runs
            try:
                shutil.rmtree(item, ignore_errors=True)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
            removed.append(item)
        elif time.time() - item.stat().st_mtime > UNLOCKED_GRACE_SECONDS:
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
    return removed
