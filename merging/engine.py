"""The streaming merge engine: reads, schedules, moves to the device and writes.

It never knows which operator runs: it checks the inputs, walks the output tensors one at
a time (a background thread reads tensor i+1 while tensor i is merged, another writes
tensor i-1), hands each tensor's inputs and its parameters (gradients and filters
evaluated for that tensor) to the operator and streams the result into safetensors
shards. Slices map output layers to layer ranges of the inputs; each output tensor still
reads exactly one tensor of each of its inputs.

Output is built in a hidden sibling folder `.NAME.partial-XXXX` (its lock file held for
the merge's lifetime), fsynced, and renamed into place only when complete, so an
interrupted merge never leaves a folder that looks finished; partial folders of an
earlier interrupted merge of the same output are removed by the next run.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from merging.architecture import EMBEDDING_SUFFIXES, LM_HEAD, VOCAB_SUFFIXES, check_same_architecture
from merging.checkpoint import Checkpoint
from merging.dtypes import FLOAT_SAFETENSORS, SAFETENSORS, safetensors_dtype, torch_dtype
from merging.errors import MergeError
from merging.output import RECIPE_JSON, RECIPE_YAML, PartialFolder, merged_config, write_side_files
from merging.recipe import InputGroup, Recipe, ResolvedRecipe
from merging.registry import OperatorParams, load_plugin
from merging.vocabulary import Vocabulary, align_rows, build_vocabulary, resolve_overrides
from merging.writer import PlannedTensor, ShardWriter, parse_size, plan_shards

__all__ = ["run_merge", "plan_merge", "MergeResult", "MergePlan", "TensorJob", "RECIPE_JSON", "RECIPE_YAML"]

DEFAULT_SHARD_SIZE = "5GB"
# The next tensor is read while the current one merges only when its inputs (in the
# working dtype) fit in this; the few huge ones (embeddings, lm_head) are read in turn,
# so peak memory is set by one of them, not two.
READ_AHEAD_BYTES = 256 * 1024 * 1024
# A transformer block's tensors: PREFIX.N.REST (model.layers.3.mlp..., transformer.h.3...).
LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|layer|blocks))\.(?P<index>\d+)\.(?P<rest>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# torch's intra-op threads while a merge runs on the CPU (None: torch's own setting). The
# engine already overlaps reading, merging and writing on three threads; on top of that,
# every parallel region of an operator waits at a barrier for its worker threads, and when
# the cores are busy (our own reader and writer, or anything else running) that wait
# dominates: a TIES merge of 2 tensors took 3-10x the wall and CPU time with 2 threads as
# with 1 at every size from 131k to 33M entries on a loaded 2-core machine
# (benchmarks/bench_merge.py --threads compares). One thread also makes reductions (sums
# in DARE/DELLA rescaling, Model Stock) independent of the machine's core count.
INTRA_OP_THREADS: int | None = 1


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: what to read from which input, with which parameters."""

    name: str
    reads: tuple[tuple[int, str], ...]  # (index into plan.inputs, tensor name); the base first when used
    has_base: bool
    params: Mapping[str, Any]
    shape: tuple[int, ...]
    rows: int | None          # inputs cut to their first `rows` rows (vocab mismatch)
    st_dtype: str             # output dtype, safetensors spelling
    floating: bool            # False: copied from the first input, no math
    align: bool = False       # rows re-ordered to the output vocabulary (merging.vocabulary)


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
    inputs: list[Checkpoint]       # every checkpoint read, each once
    config_source: Checkpoint
    jobs: list[TensorJob]
    vocab_rows: int | None         # set when --allow-vocab-mismatch cut the vocabulary
    layers: int | None             # output layer count when slices changed it
    vocabulary: Vocabulary | None = None  # the output tokenizer when the recipe names one

    @property
    def uses_base(self) -> bool:
        return any(j.has_base for j in self.jobs)


def _embedding_name(ckpt: Checkpoint) -> str | None:
    for name in ckpt.tensors:
        if name.endswith(EMBEDDING_SUFFIXES):
            return name
    return None


def layer_count(ckpt: Checkpoint) -> int:
    """Transformer blocks in a checkpoint: the config's count, else 1 + the highest index."""
    for key in LAYER_COUNT_KEYS:
        value = ckpt.config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    indices = [int(m["index"]) for m in map(LAYER_NAME.match, ckpt.tensors) if m]
    return max(indices) + 1 if indices else 0


def layer_position(index: int, count: int) -> float:
    """t for gradients: 0 at the first layer, 1 at the last (1 for a single layer)."""
    return index / (count - 1) if count > 1 else 1.0


class _Planner:
    def __init__(self, recipe: Recipe, allow_vocab_mismatch: bool):
        self.recipe = recipe
        self.resolved = recipe.resolve()
        self.spec = self.resolved.spec
        self.allow_vocab_mismatch = allow_vocab_mismatch
        self.inputs: list[Checkpoint] = []
        self._index: dict[str, int] = {}
        self.vocab_rows: int | None = None
        self.jobs: list[TensorJob] = []
        self.vocabulary: Vocabulary | None = None

    def build_vocabulary(self) -> None:
        """The output tokenizer, when the recipe names one that has tokenizer files."""
        settings = self.recipe.tokenizer_settings
        if settings is None:
            return
        if settings.source == "base" and self.resolved.base is None:
            raise MergeError("tokenizer_source: base, but the recipe has no base_model")
        referenced = self.recipe.referenced_models()
        sizes = {}
        for path in referenced:
            ckpt = self.inputs[self.open(path)]
            size = ckpt.config.get("vocab_size")
            if size is None and isinstance(ckpt.config.get("text_config"), dict):
                size = ckpt.config["text_config"].get("vocab_size")
            sizes[os.path.realpath(path)] = size if isinstance(size, int) and not isinstance(size, bool) else None
        self.vocabulary = build_vocabulary(settings, self.recipe.base, referenced, sizes)

    def open(self, path: str) -> int:
        key = os.path.realpath(path)
        if key not in self._index:
            self._index[key] = len(self.inputs)
            self.inputs.append(Checkpoint(path))
        return self._index[key]

    def members(self, group: InputGroup) -> list[int]:
        """Indices of a group's checkpoints: the base first when the operator uses it."""
        return ([self.open(group.base)] if group.base is not None else []) + [self.open(m) for m in group.models]

    def params(self, group: InputGroup, model_names: Sequence[str], t: float, name: str):
        if not self.resolved.varies and group is self.resolved.groups[0]:
            return self.resolved.params
        return self.resolved.params_for(group, model_names, t, name)

    def add(self, name: str, group: InputGroup, members: list[int], sources: Sequence[str], t: float) -> None:
        ckpts = [self.inputs[i] for i in members]
        infos = [ck.tensors[src] for ck, src in zip(ckpts, sources)]
        shapes = [i.shape for i in infos]
        rows = None
        align = self.vocabulary is not None and name.endswith(VOCAB_SUFFIXES) and bool(shapes[0])
        if align:
            if len({s[1:] for s in shapes}) != 1 or len({len(s) for s in shapes}) != 1:
                raise MergeError(f"tensor {name!r}: the inputs' rows differ in width ({[list(s) for s in shapes]})")
            rows_out = self.vocabulary.rows
        elif len(set(shapes)) > 1:
            same_tail = len({s[1:] for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1
            if self.allow_vocab_mismatch and same_tail and name.endswith(VOCAB_SUFFIXES) and shapes[0]:
                rows = min(s[0] for s in shapes)
                self.vocab_rows = rows
            else:
                k = next(i for i, s in enumerate(shapes) if s != shapes[0])
                hint = " (--allow-vocab-mismatch merges embeddings over the common rows)" if name.endswith(VOCAB_SUFFIXES) else ""
                raise MergeError(f"tensor {sources[k]!r} is {list(shapes[k])} in {ckpts[k].path} but "
                                 f"{list(shapes[0])} ({sources[0]!r}) in {ckpts[0].path}{hint}")
        floating = {i.dtype in FLOAT_SAFETENSORS for i in infos}
        if len(floating) > 1:
            raise MergeError(f"tensor {name!r} is floating point in some inputs but not in others")
        floating = floating.pop()
        has_base = group.base is not None
        model_names = list(sources[1:] if has_base else sources)
        params = self.params(group, model_names, t, name) if floating else {}
        if floating:
            out_dtype = safetensors_dtype(self.recipe.out_dtype or self.recipe.dtype or SAFETENSORS[infos[0].dtype][0])
        else:
            out_dtype = infos[0].dtype
        shape = (rows,) + tuple(shapes[0][1:]) if rows is not None else tuple(shapes[0])
        if align:
            shape = (rows_out,) + tuple(shapes[0][1:])
        self.jobs.append(TensorJob(name, tuple(zip(members, sources)), has_base, params, shape, rows, out_dtype, floating,
                                   align and floating))

    def lm_head_sources(self, members: list[int], out_ties: bool) -> list[str] | None:
        """Where each input's lm_head comes from (its tied embeddings if it has none), or
        None when the output ties it and so writes none."""
        if out_ties:
            return None
        sources = []
        for i in members:
            ckpt = self.inputs[i]
            if LM_HEAD in ckpt.tensors:
                sources.append(LM_HEAD)
            elif ckpt.tie_word_embeddings and _embedding_name(ckpt) is not None:
                sources.append(_embedding_name(ckpt))
            else:
                if any(LM_HEAD in self.inputs[j].tensors for j in members):
                    raise MergeError(f"{ckpt.path} has no {LM_HEAD} and its config does not tie word embeddings")
                return None
        return sources

    # -- whole models --------------------------------------------------------------------
    def plan_models(self) -> None:
        group = self.resolved.groups[0]
        members = self.members(group)
        reference = self.inputs[members[0]]
        config_source = self.inputs[self.open(self.resolved.config_source)]
        check_same_architecture(reference, [self.inputs[i] for i in members[1:]],
                                vocab_rows_may_differ=self.allow_vocab_mismatch or self.vocabulary is not None)
        count = layer_count(reference)
        names = [n for n in sorted(reference.tensors, key=lambda n: (reference.tensors[n].file, reference.tensors[n].offset))
                 if n != LM_HEAD]
        for name in names:
            m = LAYER_NAME.match(name)
            t = layer_position(int(m["index"]), count) if m else 0.0
            self.add(name, group, members, [name] * len(members), t)
        lm = self.lm_head_sources(members, config_source.tie_word_embeddings)
        if lm is not None:
            self.add(LM_HEAD, group, members, lm, 0.0)

    # -- slices --------------------------------------------------------------------------
    def plan_slices(self) -> int:
        groups = self.resolved.groups
        config_source = self.inputs[self.open(self.resolved.config_source)]
        first, last = self.members(groups[0]), self.members(groups[-1])
        reference = self.inputs[first[0]]
        layer_names = [m for m in map(LAYER_NAME.match, reference.tensors) if m]
        if not layer_names:
            raise MergeError(f"{reference.path}: no layer tensors (model.layers.N...) to slice")
        prefix = layer_names[0]["prefix"]
        # Tensors outside the layers: embeddings from the first slice's inputs, the rest
        # (final norm, lm_head) from the last slice's, as the merge toolkits do.
        outside = [n for n in reference.tensors if not LAYER_NAME.match(n) and n != LM_HEAD]
        pre = [n for n in outside if n.endswith(EMBEDDING_SUFFIXES)]
        post = [n for n in outside if not n.endswith(EMBEDDING_SUFFIXES)]
        for name in pre:
            self._check_present(name, first)
            self.add(name, groups[0], first, [name] * len(first), 0.0)
        out_layer = 0
        for group in groups:
            members = self.members(group)
            ranges = ([group.base_range] if group.base is not None else []) + list(group.ranges)
            for i, (start, stop) in zip(members, ranges):
                have = layer_count(self.inputs[i])
                if stop > have:
                    raise MergeError(f"layer_range [{start}, {stop}) of {self.inputs[i].path}: it has {have} layers")
            length = ranges[0][1] - ranges[0][0]
            # The block's tensor names, from the first input's first layer of this slice.
            lead = self.inputs[members[0]]
            rests = [m["rest"] for m in map(LAYER_NAME.match, lead.tensors)
                     if m and m["prefix"] == prefix and int(m["index"]) == ranges[0][0]]
            for offset in range(length):
                t = layer_position(offset, length)
                for rest in rests:
                    sources = [f"{prefix}.{r[0] + offset}.{rest}" for r in ranges]
                    for i, src in zip(members, sources):
                        if src not in self.inputs[i].tensors:
                            raise MergeError(f"{self.inputs[i].path} has no tensor {src!r}")
                    self.add(f"{prefix}.{out_layer}.{rest}", group, members, sources, t)
                out_layer += 1
        for name in post:
            self._check_present(name, last)
            self.add(name, groups[-1], last, [name] * len(last), 0.0)
        lm = self.lm_head_sources(last, config_source.tie_word_embeddings)
        if lm is not None:
            self.add(LM_HEAD, groups[-1], last, lm, 0.0)
        return out_layer

    def _check_present(self, name: str, members: list[int]) -> None:
        for i in members:
            if name not in self.inputs[i].tensors:
                raise MergeError(f"{self.inputs[i].path} has no tensor {name!r}")


def plan_merge(recipe: Recipe, *, allow_vocab_mismatch: bool = False) -> MergePlan:
    """Everything checked before any work: the recipe against the registry, every input
    folder and safetensors header, tensor names and shapes across inputs, each tensor's
    parameters. Opens no tensor."""
    planner = _Planner(recipe, allow_vocab_mismatch)
    layers = None
    try:
        planner.build_vocabulary()
        if planner.resolved.sliced:
            layers = planner.plan_slices()
        else:
            planner.plan_models()
    except BaseException:
        for ckpt in planner.inputs:
            ckpt.close()
        raise
    if not planner.jobs:
        raise MergeError(f"{planner.inputs[0].path}: no tensors to merge")
    config_source = planner.inputs[planner.open(planner.resolved.config_source)]
    return MergePlan(planner.resolved, planner.inputs, config_source, planner.jobs, planner.vocab_rows, layers,
                     planner.vocabulary)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise MergeError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise MergeError(f"{out}: already exists and is not empty (choose another --out)")


def run_merge(recipe: Recipe, out_dir: str | os.PathLike, *, device: str = "auto",
              shard_size: str | int = DEFAULT_SHARD_SIZE, progress: bool | None = None,
              allow_vocab_mismatch: bool = False, plugins: Sequence[str] = (),
              overwrite: bool = False, on_tensor: Callable[[str], None] | None = None,
              provenance: Mapping[str, Any] | None = None) -> MergeResult:
    """Merge the recipe's models into out_dir (a Hugging Face folder).

    device: auto | cpu | cuda | cuda:N. shard_size: bytes or '5GB'. progress: a tqdm bar
    over tensors (None: only when stderr is a terminal). plugins: `module:function`
    operators to register first. on_tensor: called with each tensor's name after it is
    merged (for callers that report progress their own way). provenance: where the merge
    came from, for the model card (e.g. {"event_id": 12, "policy": "linucb",
    "predicted_reward": 0.61}).
    Raises MergeError (one line) for anything a user can cause; no output folder is left
    behind on any failure."""
    started = time.perf_counter()
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    plan = _plan(recipe, plugins, allow_vocab_mismatch)
    try:
        from merging.device import resolve_device

        dev = resolve_device(device)
        shards, bytes_written = _write_folder(
            plan, recipe, out, shard_size, overwrite, provenance,
            lambda writer: _stream_recipe(plan, recipe, writer, dev, progress, on_tensor))
    finally:
        for ckpt in plan.inputs:
            ckpt.close()
    return MergeResult(path=str(out), operator=recipe.operator, tensors=len(plan.jobs), shards=shards,
                       bytes_written=bytes_written, seconds=round(time.perf_counter() - started, 3),
                       device=str(dev))


def _plan(recipe: Recipe, plugins: Sequence[str], allow_vocab_mismatch: bool) -> MergePlan:
    for ref in plugins:
        load_plugin(ref)
    return plan_merge(recipe, allow_vocab_mismatch=allow_vocab_mismatch)


def _stream_recipe(plan: MergePlan, recipe: Recipe, writer, dev, progress: bool | None,
                   on_tensor: Callable[[str], None] | None) -> None:
    """Every tensor of the plan through the operator into `writer`, in the recipe's dtypes:
    mergekit's `dtype` is also what inputs are cast to before the math."""
    input_dtype = torch_dtype(recipe.dtype) if recipe.dtype is not None else None
    _stream(plan, writer, dev, torch_dtype(recipe.compute_dtype), recipe.seed, progress, on_tensor, input_dtype)


def _write_folder(plan: MergePlan, recipe: Recipe, out: Path, shard_size: str | int, overwrite: bool,
                  provenance: Mapping[str, Any] | None, fill: Callable[[ShardWriter], None]) -> tuple[int, int]:
    """The output folder, atomically: `fill` writes every planned tensor into the shard
    writer, then the side files, recipe and model card; renamed into place on success only.
    Returns (shards, bytes written)."""
    shards = plan_shards([PlannedTensor(j.name, j.st_dtype, j.shape) for j in plan.jobs], parse_size(shard_size))
    try:
        with PartialFolder(out) as tmp:
            writer = ShardWriter(tmp.path, shards)
            try:
                fill(writer)
                writer.close()
                write_side_files(plan, recipe, tmp.path, provenance)
                tmp.commit(overwrite)
            finally:
                writer.abort()
    except OSError as e:
        raise MergeError(f"{out}: write failed ({e.strerror or e})") from None
    return len(shards), writer.bytes_written


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
    """A merge held in memory (CPU tensors in the output dtype), with its plan, so that
    writing it as a folder is exactly what `run_merge` would have written."""

    state: dict
    plan: MergePlan
    recipe: Recipe
    seconds: float

    @property
    def config(self) -> dict:
        return merged_config(self.plan, self.recipe)

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False, shard_size: str | int = DEFAULT_SHARD_SIZE,
             provenance: Mapping[str, Any] | None = None) -> MergeResult:
        """Write the folder (shards, config, side files, recipe, model card) atomically; no second merge."""
        started = time.perf_counter()
        out = Path(out_dir)
        _check_out_dir(out, overwrite)

        def fill(writer: ShardWriter) -> None:
            for job in self.plan.jobs:
                writer.write(job.name, self.state[job.name])

        shards, bytes_written = _write_folder(self.plan, self.recipe, out, shard_size, overwrite, provenance, fill)
        return MergeResult(path=str(out), operator=self.recipe.operator, tensors=len(self.plan.jobs),
                           shards=shards, bytes_written=bytes_written,
                           seconds=round(time.perf_counter() - started, 3), device="memory (trial merge reused)")


def run_merge_to_state_dict(recipe: Recipe, *, device: str = "auto", allow_vocab_mismatch: bool = False,
                            plugins: Sequence[str] = ()) -> InMemoryMerge:
    """Merge the recipe's models in memory, with no folder: the same planning, checks and
    streaming as `run_merge`, the tensors collected into a state dict (on the CPU, in the
    output dtype). For trial merges, which load the result straight into a model."""
    started = time.perf_counter()
    plan = _plan(recipe, plugins, allow_vocab_mismatch)
    try:
        from merging.device import resolve_device

        sink = _StateDictSink()
        _stream_recipe(plan, recipe, sink, resolve_device(device), False, None)
    finally:
        for ckpt in plan.inputs:
            ckpt.close()
    return InMemoryMerge(sink.tensors, plan, recipe, time.perf_counter() - started)


def _exact_cast(source, target) -> bool:
    """Does casting source to target keep every value? Then the cast can be skipped: the
    math runs in float32/float64 anyway."""
    import torch

    if source == target:
        return True
    wider = {torch.float32: (torch.bfloat16, torch.float16), torch.float64: (torch.bfloat16, torch.float16, torch.float32)}
    return source in wider.get(target, ())


def _stream(plan: MergePlan, writer: ShardWriter, dev, compute, seed: int,
            progress: bool | None, on_tensor: Callable[[str], None] | None, input_dtype=None) -> None:
    import torch
    from tqdm import tqdm

    from merging.device import intra_op_threads

    spec = plan.resolved.spec
    fn = spec.function
    jobs = plan.jobs
    native = spec.native_inputs

    def load(job: TensorJob) -> list:
        if job.align:
            return load_aligned(job)
        tensors = []
        for index, src in job.reads:
            t = plan.inputs[index].tensor(src)
            if job.rows is not None:
                t = t[: job.rows]
            if job.floating:
                if input_dtype is not None and not _exact_cast(t.dtype, input_dtype):
                    t = t.to(dtype=input_dtype)
                # A native-input operator converts slice by slice itself.
                t = t.to(device=dev) if native else t.to(device=dev, dtype=compute)
            tensors.append(t)
            if not job.floating:
                break  # copied from the first input only
        return tensors

    def load_aligned(job: TensorJob) -> list:
        # Rows re-ordered to the output vocabulary in the inputs' dtype (after the recipe's
        # dtype cast), as mergekit does, then moved to the compute dtype like any input.
        vocabulary = plan.vocabulary
        keys = [os.path.realpath(plan.inputs[index].path) for index, _ in job.reads]
        raw = []
        for index, src in job.reads:
            t = plan.inputs[index].tensor(src)
            if input_dtype is not None and not _exact_cast(t.dtype, input_dtype):
                t = t.to(dtype=input_dtype)
            raw.append(t)
        aligned = align_rows(raw, [vocabulary.positions[k] for k in keys], vocabulary.rows,
                             base=0 if job.has_base else None,
                             overrides=resolve_overrides(vocabulary, keys, job.name))
        del raw
        return [t.to(device=dev) if native else t.to(device=dev, dtype=compute) for t in aligned]

    def input_bytes(job: TensorJob) -> int:
        numel = 1
        for s in job.shape:
            numel *= s
        return numel * len(job.reads) * compute.itemsize

    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(jobs), unit="tensor", desc=f"merge ({spec.name})", disable=not progress,
               file=sys.stderr, leave=False)
    pending: deque = deque()
    with intra_op_threads(INTRA_OP_THREADS if getattr(dev, "type", str(dev)) == "cpu" else None), \
            ThreadPoolExecutor(1, thread_name_prefix="merge-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="merge-write") as writer_pool:
        ahead = reader.submit(load, jobs[0])
        try:
            for i, job in enumerate(jobs):
                tensors = ahead.result() if ahead is not None else load(job)
                ahead = None
                if i + 1 < len(jobs) and input_bytes(jobs[i + 1]) <= READ_AHEAD_BYTES:
                    ahead = reader.submit(load, jobs[i + 1])
                if job.floating:
                    if job.has_base:
                        base, models = tensors[0], tensors[1:]
                    else:
                        base, models = None, tensors
                    out_dtype = torch_dtype(job.st_dtype)
                    merged = fn(base, models, OperatorParams(job.params, job.name, seed, compute, out_dtype))
                    if not isinstance(merged, torch.Tensor) or tuple(merged.shape) != job.shape:
                        got = tuple(merged.shape) if isinstance(merged, torch.Tensor) else type(merged).__name__
                        raise MergeError(f"operator {spec.name} returned {got} for tensor {job.name!r}, expected {job.shape}")
                    result = merged.to(dtype=out_dtype).cpu()
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
