"""The streaming merge engine: reads, schedules, moves to the device and writes.

It never knows which operator runs: it checks the inputs, walks the tensors one at a time
(a background thread reads tensor i+1 while tensor i is merged, another writes tensor
i-1), hands each tensor's inputs to the operator and streams the result into safetensors
shards. Output is built in a temporary sibling folder and renamed into place only when
complete, so an interrupted merge never leaves a folder that looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from merging.checkpoint import Checkpoint
from merging.errors import MergeError
from merging.recipe import Recipe, ResolvedRecipe
from merging.registry import OperatorParams, load_plugin
from merging.writer import PlannedTensor, ShardWriter, parse_size, plan_shards

DEFAULT_SHARD_SIZE = "5GB"
# The next tensor is read while the current one merges only when its inputs (in the
# working dtype) fit in this; the few huge ones (embeddings, lm_head) are read in turn,
# so peak memory is set by one of them, not two.
READ_AHEAD_BYTES = 256 * 1024 * 1024
RECIPE_JSON = "merge_recipe.json"
RECIPE_YAML = "merge_recipe.yaml"
LM_HEAD = "lm_head.weight"
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
# Tensors whose first dimension is the vocabulary: the only ones --allow-vocab-mismatch cuts.
VOCAB_SUFFIXES = EMBEDDING_SUFFIXES + (LM_HEAD, "embed_out.weight")
# Copied from the config source next to the weights.
SIDE_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
)
FLOAT_ST = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_OF = {v: k for k, v in FLOAT_ST.items()}


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: what to read from each input and what to write."""

    name: str
    sources: tuple[str, ...]  # the name read from each input (lm_head may come from tied embeddings)
    shape: tuple[int, ...]
    rows: int | None          # inputs cut to their first `rows` rows (vocab mismatch)
    st_dtype: str             # output dtype, safetensors spelling
    floating: bool            # False: copied from the first input, no math


@dataclass(frozen=True)
class MergeResult:
    path: str
    operator: str
    tensors: int
    shards: int
    bytes_written: int
    seconds: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MergePlan:
    resolved: ResolvedRecipe
    inputs: list[Checkpoint]       # base first when the operator uses it, then the models
    uses_base: bool
    config_source: Checkpoint
    jobs: list[TensorJob]
    vocab_rows: int | None         # set when --allow-vocab-mismatch cut the vocabulary


def _embedding_name(ckpt: Checkpoint) -> str | None:
    for name in ckpt.tensors:
        if name.endswith(EMBEDDING_SUFFIXES):
            return name
    return None


def plan_merge(recipe: Recipe, *, allow_vocab_mismatch: bool = False) -> MergePlan:
    """Everything checked before any work: the recipe against the registry, every input
    folder and safetensors header, tensor names and shapes across inputs. Opens no tensor."""
    resolved = recipe.resolve()
    spec = resolved.spec
    uses_base = resolved.base is not None and spec.base != "unused"
    opened: dict[str, Checkpoint] = {}

    def open_checkpoint(path: str) -> Checkpoint:
        key = os.path.realpath(path)
        if key not in opened:
            opened[key] = Checkpoint(path)
        return opened[key]

    models = [open_checkpoint(p) for p in resolved.models]
    base = open_checkpoint(resolved.base) if resolved.base is not None else None
    inputs = ([base] if uses_base else []) + models
    config_source = base if base is not None else models[0]
    reference = inputs[0]
    out_ties = config_source.tie_word_embeddings

    # Names: every input holds the reference's tensors; lm_head may be absent where tied.
    ref_names = [n for n in sorted(reference.tensors, key=lambda n: (reference.tensors[n].file, reference.tensors[n].offset))
                 if n != LM_HEAD]
    wanted = set(ref_names)
    for ckpt in inputs[1:]:
        names = set(ckpt.tensors) - {LM_HEAD}
        missing = sorted(wanted - names)
        if missing:
            raise MergeError(f"{ckpt.path} has no tensor {missing[0]!r} (present in {reference.path})")
        extra = sorted(names - wanted)
        if extra:
            raise MergeError(f"{ckpt.path} has tensor {extra[0]!r}, which {reference.path} lacks")
    sources_of = {n: tuple(n for _ in inputs) for n in ref_names}
    out_names = list(ref_names)
    if not out_ties:
        lm_sources = []
        for ckpt in inputs:
            if LM_HEAD in ckpt.tensors:
                lm_sources.append(LM_HEAD)
            elif ckpt.tie_word_embeddings and _embedding_name(ckpt) is not None:
                lm_sources.append(_embedding_name(ckpt))
            else:
                lm_sources = None
                if any(LM_HEAD in c.tensors for c in inputs):
                    raise MergeError(f"{ckpt.path} has no {LM_HEAD} and its config does not tie word embeddings")
                break
        if lm_sources is not None:
            sources_of[LM_HEAD] = tuple(lm_sources)
            out_names.append(LM_HEAD)

    jobs = []
    vocab_rows = None
    for name in out_names:
        sources = sources_of[name]
        infos = [ckpt.tensors[src] for ckpt, src in zip(inputs, sources)]
        shapes = [i.shape for i in infos]
        rows = None
        if len(set(shapes)) > 1:
            same_tail = len({s[1:] for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1
            if allow_vocab_mismatch and same_tail and name.endswith(VOCAB_SUFFIXES) and shapes[0]:
                rows = min(s[0] for s in shapes)
                vocab_rows = rows
            else:
                k = next(i for i, s in enumerate(shapes) if s != shapes[0])
                hint = " (--allow-vocab-mismatch merges embeddings over the common rows)" if name.endswith(VOCAB_SUFFIXES) else ""
                raise MergeError(f"tensor {name!r} is {list(shapes[0])} in {inputs[0].path} but {list(shapes[k])} in {inputs[k].path}{hint}")
        ref_dtype = infos[0].dtype
        floating = ref_dtype in FLOAT_ST
        if floating:
            out_dtype = _ST_OF[resolved_out_dtype(recipe, ref_dtype)]
        else:
            out_dtype = ref_dtype
        shape = (rows,) + tuple(shapes[0][1:]) if rows is not None else tuple(shapes[0])
        jobs.append(TensorJob(name, sources, shape, rows, out_dtype, floating))
    if not jobs:
        raise MergeError(f"{reference.path}: no tensors to merge")
    return MergePlan(resolved, inputs, uses_base, config_source, jobs, vocab_rows)


def resolved_out_dtype(recipe: Recipe, reference_st_dtype: str) -> str:
    """--out-dtype when given, else the reference (base) tensor's own dtype."""
    return recipe.out_dtype or FLOAT_ST[reference_st_dtype]


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise MergeError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise MergeError(f"{out}: already exists and is not empty (choose another --out)")


def run_merge(recipe: Recipe, out_dir: str | os.PathLike, *, device: str = "auto",
              shard_size: str | int = DEFAULT_SHARD_SIZE, progress: bool | None = None,
              allow_vocab_mismatch: bool = False, plugins: Sequence[str] = (),
              overwrite: bool = False, on_tensor: Callable[[str], None] | None = None) -> MergeResult:
    """Merge the recipe's models into out_dir (a Hugging Face folder).

    device: auto | cpu | cuda | cuda:N. shard_size: bytes or '5GB'. progress: a tqdm bar
    over tensors (None: only when stderr is a terminal). plugins: `module:function`
    operators to register first. on_tensor: called with each tensor's name after it is
    merged (for callers that report progress their own way).
    Raises MergeError (one line) for anything a user can cause; no output folder is left
    behind on any failure."""
    for ref in plugins:
        load_plugin(ref)
    started = time.perf_counter()
    shard_bytes = parse_size(shard_size)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    plan = plan_merge(recipe, allow_vocab_mismatch=allow_vocab_mismatch)

    import torch

    from merging.device import resolve_device

    dev = resolve_device(device)
    compute = torch.float64 if recipe.dtype == "float64" else torch.float32
    planned = [PlannedTensor(j.name, j.st_dtype, j.shape) for j in plan.jobs]
    shards = plan_shards(planned, shard_bytes)

    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise MergeError(f"{out.parent}: cannot create the output folder ({e.strerror or e})") from None
    writer = ShardWriter(tmp, shards)
    try:
        _stream(plan, writer, dev, compute, recipe.seed, progress, on_tensor)
        writer.close()
        _write_side_files(plan, recipe, tmp)
        _move_into_place(tmp, out, overwrite)
    except BaseException as e:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise MergeError(f"{out}: write failed ({e.strerror or e})") from None
        raise
    finally:
        for ckpt in plan.inputs:
            ckpt.close()
    return MergeResult(path=str(out), operator=recipe.operator, tensors=len(plan.jobs), shards=len(shards),
                       bytes_written=writer.bytes_written, seconds=round(time.perf_counter() - started, 3),
                       device=str(dev))


class _StateDictSink:
    """The engine's writer interface into a plain dict: the in-memory output of a trial merge."""

    def __init__(self) -> None:
        self.tensors: dict = {}
        self.bytes_written = 0

    def write(self, name: str, tensor) -> None:
        self.tensors[name] = tensor
        self.bytes_written += tensor.numel() * tensor.element_size()


@dataclass
class InMemoryMerge:
    """A merge held in memory (CPU tensors), with what writing it as a folder needs."""

    state: dict
    config: dict
    config_source: str
    recipe: Recipe
    seconds: float

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the folder `run_merge` would have written (one safetensors file, config,
        side files, the recipe), atomically; no second merge."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        _check_out_dir(out, overwrite)
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in self.state.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
            source = Path(self.config_source)
            for name in SIDE_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
            (tmp / RECIPE_JSON).write_text(self.recipe.to_json() + "\n")
            (tmp / RECIPE_YAML).write_text(self.recipe.to_yaml())
            _move_into_place(tmp, out, overwrite)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MergeError(f"{out}: write failed ({e.strerror or e})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def run_merge_to_state_dict(recipe: Recipe, *, device: str = "auto", allow_vocab_mismatch: bool = False,
                            plugins: Sequence[str] = ()) -> InMemoryMerge:
    """Merge the recipe's models in memory, with no folder: the same planning, checks and
    streaming as `run_merge`, the tensors collected into a state dict (on the CPU, in the
    output dtype). For trial merges, which load the result straight into a model."""
    for ref in plugins:
        load_plugin(ref)
    started = time.perf_counter()
    plan = plan_merge(recipe, allow_vocab_mismatch=allow_vocab_mismatch)

    import torch

    from merging.device import resolve_device

    dev = resolve_device(device)
    compute = torch.float64 if recipe.dtype == "float64" else torch.float32
    sink = _StateDictSink()
    try:
        _stream(plan, sink, dev, compute, recipe.seed, False, None)
    finally:
        for ckpt in plan.inputs:
            ckpt.close()
    return InMemoryMerge(sink.tensors, _merged_config(plan, recipe), str(plan.config_source.path), recipe,
                         time.perf_counter() - started)


def _stream(plan: MergePlan, writer: ShardWriter, dev, compute, seed: int,
            progress: bool | None, on_tensor: Callable[[str], None] | None) -> None:
    import torch
    from tqdm import tqdm

    spec = plan.resolved.spec
    fn = spec.function
    params = plan.resolved.params
    jobs = plan.jobs

    def load(job: TensorJob) -> list:
        tensors = []
        for ckpt, src in zip(plan.inputs, job.sources):
            t = ckpt.tensor(src)
            if job.rows is not None:
                t = t[: job.rows]
            if job.floating:
                t = t.to(device=dev, dtype=compute)
            tensors.append(t)
            if not job.floating:
                break  # copied from the first input only
        return tensors

    def input_bytes(job: TensorJob) -> int:
        numel = 1
        for s in job.shape:
            numel *= s
        return numel * len(plan.inputs) * compute.itemsize

    out_dtypes = {st: getattr(torch, name) for st, name in FLOAT_ST.items()}
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(jobs), unit="tensor", desc=f"merge ({spec.name})", disable=not progress,
               file=sys.stderr, leave=False)
    pending: deque = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="merge-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="merge-write") as writer_pool:
        ahead = reader.submit(load, jobs[0])
        try:
            for i, job in enumerate(jobs):
                tensors = ahead.result() if ahead is not None else load(job)
                ahead = None
                if i + 1 < len(jobs) and input_bytes(jobs[i + 1]) <= READ_AHEAD_BYTES:
                    ahead = reader.submit(load, jobs[i + 1])
                if job.floating:
                    if plan.uses_base:
                        base, models = tensors[0], tensors[1:]
                    else:
                        base, models = None, tensors
                    merged = fn(base, models, OperatorParams(params, job.name, seed))
                    if not isinstance(merged, torch.Tensor) or tuple(merged.shape) != job.shape:
                        got = tuple(merged.shape) if isinstance(merged, torch.Tensor) else type(merged).__name__
                        raise MergeError(f"operator {spec.name} returned {got} for tensor {job.name!r}, expected {job.shape}")
                    result = merged.to(dtype=out_dtypes[job.st_dtype]).cpu()
                    # Drop this tensor's inputs now, not when the names are next rebound:
                    # the wait for the next tensor would otherwise hold both.
                    del base, models, merged
                else:
                    result = tensors[0]
                del tensors
                pending.append(writer_pool.submit(writer.write, job.name, result))
                # At most one write in flight: memory stays at a few tensors.
                while len(pending) > 1:
                    pending.popleft().result()
                bar.update(1)
                if on_tensor is not None:
                    on_tensor(job.name)
            while pending:
                pending.popleft().result()
        finally:
            if ahead is not None:
                ahead.cancel()
            for f in pending:
                f.cancel()
            bar.close()


def _merged_config(plan: MergePlan, recipe: Recipe) -> dict:
    config = dict(plan.config_source.config)
    if recipe.out_dtype is not None:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["dtype"]
        for k in keys:
            config[k] = recipe.out_dtype
    if plan.vocab_rows is not None and "vocab_size" in config:
        config["vocab_size"] = plan.vocab_rows
    return config


def _write_side_files(plan: MergePlan, recipe: Recipe, folder: Path) -> None:
    source = plan.config_source
    config = _merged_config(plan, recipe)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in SIDE_FILES:
        src = source.path / name
        if src.is_file():
            shutil.copyfile(src, folder / name)
    (folder / RECIPE_JSON).write_text(recipe.to_json() + "\n")
    (folder / RECIPE_YAML).write_text(recipe.to_yaml())


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if any(out.iterdir()):
            if not overwrite:
                raise MergeError(f"{out}: appeared while merging; the merge is discarded")
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            return
        out.rmdir()
    tmp.rename(out)
