"""Build the zoo: one tiny character-level Llama base and one expert per task.

The recipe follows what was measured when CPU zoos were tried on 2-core machines:
- pretrain on a mixture of every task with the tag hidden (`[?]`), so the base has the
  skills but cannot be steered to one; with tags visible the base already solves the
  tasks and every merge scores below it;
- fine-tune each expert briefly on its own task with its tag shown, at a low learning rate
  and without weight decay, so experts stay close to the base and merges of two of them
  keep a share of both skills.

Everything is seeded, so the same recipe gives the same weights; a checkpoint whose
recorded recipe matches is reused, so a rebuild only trains what is missing or stale.
Each model folder is written to a temporary sibling and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from merging.device import intra_op_threads
from zoo.errors import ZooError
from zoo.manifest import FORMAT, MANIFEST_NAME, Zoo, default_zoo_dir, write_manifest
from zoo.tasks import EVAL_SIZE, TASKS, get_task, probe_set, task_names

# Bump when the training code changes in a way that changes weights: stale checkpoints are
# then retrained instead of silently reused.
TRAINING_CODE_VERSION = 1
SIDECAR = "zoo-model.json"


@dataclass(frozen=True)
class ZooRecipe:
    """Every setting that decides the zoo's weights."""

    size: str
    tasks: tuple[str, ...] = field(default_factory=lambda: tuple(TASKS))
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    batch_size: int = 64
    pretrain_steps: int = 1000
    pretrain_lr: float = 3e-3
    warmup_steps: int = 50
    finetune_steps: int = 120
    finetune_lr: float = 1e-3
    seed: int = 0
    # One thread: on a shared 2-core machine two OpenMP threads stall each other (steps
    # measured 55 ms idle but up to 10x slower under load, vs a steady ~86 ms on one), and a
    # fixed count keeps float reductions, hence the weights, the same on every machine.
    threads: int = 1

    def __post_init__(self) -> None:
        task_names(list(self.tasks))
        if len(self.tasks) < 2:
            raise ZooError("a zoo needs at least two tasks (merges pair two experts)")
        if self.hidden_size % self.num_heads:
            raise ZooError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        for name in ("pretrain_steps", "finetune_steps", "batch_size", "num_layers", "threads"):
            if getattr(self, name) < 1:
                raise ZooError(f"{name} must be at least 1")


RECIPES: dict[str, ZooRecipe] = {
    # The default: ~0.86M parameters, builds in a few minutes on 2 cores.
    "tiny": ZooRecipe(size="tiny"),
    # A wider family (~2M parameters) for users with more time: same tasks and depth,
    # longer pretraining, a gentler fine-tune since a wider model moves further per step.
    "small": ZooRecipe(size="small", hidden_size=192, intermediate_size=576, num_layers=4, num_heads=6,
                       pretrain_steps=1200, pretrain_lr=2e-3, finetune_steps=150, finetune_lr=7e-4),
    # A second family to measure on without tuning to the first: another seed (so another
    # base), eight of the tasks, and a fine-tune twice as long at twice the rate, so the
    # experts move much further from the base than the tiny zoo's do.
    "strong": ZooRecipe(size="strong", tasks=("add", "sort", "max", "reverse", "upper", "shift", "count",
                                              "digits_first"),
                        finetune_steps=240, finetune_lr=2e-3, seed=7),
    # For the test suite: a smaller model, few steps, < 1 min; three tasks on one alphabet,
    # so the hidden-tag base cannot tell them apart and each expert has something to add.
    "reduced": ZooRecipe(size="reduced", tasks=("upper", "shift", "duplicate"), hidden_size=64,
                         intermediate_size=192, num_layers=2, num_heads=4, batch_size=32,
                         pretrain_steps=300, warmup_steps=20, finetune_steps=80),
}


def recipe_for(size: str) -> ZooRecipe:
    try:
        return RECIPES[size]
    except KeyError:
        raise ZooError(f"unknown zoo size {size!r}; sizes: {', '.join(RECIPES)}") from None


def model_config(recipe: ZooRecipe):
    """The Llama config every checkpoint of a zoo shares."""
    from transformers import LlamaConfig

    from zoo.tokenizer import BOS, EOS, MODEL_MAX_LENGTH, PAD, vocabulary

    vocab = vocabulary()
    return LlamaConfig(
        vocab_size=len(vocab), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=MODEL_MAX_LENGTH,
        # Untied, so every checkpoint lists each tensor it uses and merges need no tie logic.
        tie_word_embeddings=False,
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD],
    )


def _stamp(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_stamp(recipe: ZooRecipe) -> str:
    from zoo.tokenizer import vocabulary

    r = asdict(recipe)
    keep = ("tasks", "hidden_size", "intermediate_size", "num_layers", "num_heads", "batch_size",
            "pretrain_steps", "pretrain_lr", "warmup_steps", "seed", "threads")
    # Descriptions stand in for the task definitions: a task whose inputs change gets a new
    # description, and with it a retrained zoo.
    descriptions = {t: get_task(t).description for t in recipe.tasks}
    return _stamp({"code": TRAINING_CODE_VERSION, "vocab": vocabulary(), "tasks_defined": descriptions,
                   **{k: r[k] for k in keep}})


def expert_stamp(recipe: ZooRecipe, task: str) -> str:
    return _stamp({"base": base_stamp(recipe), "task": task, "steps": recipe.finetune_steps,
                   "lr": recipe.finetune_lr, "batch_size": recipe.batch_size, "threads": recipe.threads})


def _read_sidecar(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SIDECAR).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_sidecar(folder: Path, data: dict) -> None:
    tmp = folder / f".{SIDECAR}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, folder / SIDECAR)


def _reusable(folder: Path, stamp: str) -> bool:
    side = _read_sidecar(folder)
    return (side is not None and side.get("stamp") == stamp
            and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    # Linear warm-up, then cosine decay to 10%: the short schedule converges without the
    # late-step noise that a constant rate leaves in a tiny model.
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, tokenizer, stream, steps: int, lr: float, batch_size: int, warmup: int,
          weight_decay: float, on_step: Callable[[float], None] | None = None) -> float:
    """Train `model` in place on `stream` (answer tokens only); returns the mean loss of the
    last 10% of steps."""
    import torch

    from zoo.encoding import encode_examples

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    model.train()
    tail: list[float] = []
    for step in range(steps):
        ids, labels = encode_examples(tokenizer, stream.batch(batch_size))
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if on_step:
            on_step(loss.item())
    model.eval()
    return sum(tail) / len(tail)


def expert_jobs() -> int:
    """Processes for the expert fine-tunes: as many as the outcome table's merges use on a
    CPU (`zoo.outcomes.default_jobs`: one per core, at most 4); `SIMMERGE_ZOO_JOBS`
    overrides, and 1 trains them one after another in this process."""
    from zoo.outcomes import default_jobs

    value = os.environ.get("SIMMERGE_ZOO_JOBS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ZooError(f"SIMMERGE_ZOO_JOBS must be a whole number, got {value!r}") from None
    return default_jobs("cpu")


def _finetune(model, tokenizer, recipe: ZooRecipe, task: str, folder: Path, stamp: str,
              on_step: Callable[[float], None] | None = None) -> float:
    """Fine-tune `model` (the base's weights) on `task`, save it to `folder`; the seconds it took."""
    from zoo.tasks import TrainingStream

    t0 = time.perf_counter()
    stream = TrainingStream([task], seed=_task_seed(recipe.seed, task), tag_visible=True)
    # No weight decay: it would pull every weight, not only the ones the task needs, and
    # push the expert away from the base.
    loss = train(model, tokenizer, stream, recipe.finetune_steps, recipe.finetune_lr, recipe.batch_size,
                 min(10, recipe.finetune_steps), weight_decay=0.0, on_step=on_step)
    took = time.perf_counter() - t0
    _save_model(model, tokenizer, folder, {"stamp": stamp, "role": "expert", "task": task,
                                           "final_loss": loss, "train_seconds": took})
    return took


def _finetune_worker(root: str, recipe: ZooRecipe, task: str, stamp: str) -> tuple[str, float]:
    """In a worker process: load the saved base, fine-tune it on `task`, save the expert."""
    from zoo.evaluate import load_model, quiet_transformers
    from zoo.tokenizer import build_tokenizer

    with quiet_transformers(), intra_op_threads(recipe.threads):
        model = load_model(Path(root) / "base")
        return task, _finetune(model, build_tokenizer(), recipe, task, Path(root) / f"expert-{task}", stamp)


def _finetune_in_parallel(root: Path, recipe: ZooRecipe, tasks: list[str], stamps: dict[str, str], workers: int):
    """(task, seconds) as each expert finishes. Spawned, not forked: a fork after torch's
    thread pool has run can hang in OpenMP."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_finetune_worker, str(root), recipe, t, stamps[t]) for t in tasks]
        for f in as_completed(futures):
            yield f.result()


def _save_model(model, tokenizer, folder: Path, sidecar: dict) -> None:
    tmp = folder.parent / f".building-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _write_sidecar(tmp, sidecar)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def build_zoo(directory: str | os.PathLike | None = None, size: str = "tiny", recipe: ZooRecipe | None = None,
              progress: bool | None = None) -> Zoo:
    """Build (or complete) the zoo in `directory` and return it.

    `directory` defaults to the cache folder for the recipe's size; `recipe` overrides
    `size`. Models whose recorded recipe matches are reused; `progress` (default: stderr
    is a terminal) shows a tqdm bar over all training steps.
    """
    recipe = recipe or recipe_for(size)
    root = Path(directory).expanduser() if directory else default_zoo_dir(recipe.size)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"{root}: cannot create the zoo folder ({e.strerror or e})") from None
    with _build_lock(root):
        return _build_locked(root, recipe, sys.stderr.isatty() if progress is None else progress)


@contextmanager
def _build_lock(root: Path):
    """One build per zoo folder at a time: two would train into each other's folders."""
    import fcntl

    with open(root / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ZooError(f"{root}: another zoo build is running in this folder") from None
        # Left by an interrupted build; safe to drop now that no other build runs here.
        for stale in root.glob(".building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def _build_locked(root: Path, recipe: ZooRecipe, progress: bool) -> Zoo:
    import torch
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    from zoo.evaluate import load_model, quiet_transformers
    from zoo.tasks import TrainingStream
    from zoo.tokenizer import build_tokenizer

    started = time.perf_counter()
    tasks = list(recipe.tasks)
    tokenizer = build_tokenizer()
    b_stamp = base_stamp(recipe)
    base_dir = root / "base"
    expert_dirs = {t: root / f"expert-{t}" for t in tasks}
    e_stamps = {t: expert_stamp(recipe, t) for t in tasks}
    train_base = not _reusable(base_dir, b_stamp)
    to_finetune = [t for t in tasks if train_base or not _reusable(expert_dirs[t], e_stamps[t])]
    total_steps = recipe.pretrain_steps * train_base + recipe.finetune_steps * len(to_finetune)
    if total_steps:
        # The old manifest would describe models about to change; without one, an
        # interrupted build never looks like a complete zoo.
        (root / MANIFEST_NAME).unlink(missing_ok=True)

    seconds: dict[str, float] = {}
    bar = tqdm(total=total_steps, disable=not progress or total_steps == 0, unit="step",
               desc="zoo", dynamic_ncols=True, leave=False)

    def on_step(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    with quiet_transformers(), intra_op_threads(recipe.threads), bar:
        if train_base:
            bar.set_description("pretrain base")
            t0 = time.perf_counter()
            torch.manual_seed(recipe.seed)
            base = LlamaForCausalLM(model_config(recipe))
            stream = TrainingStream(tasks, seed=recipe.seed, tag_visible=False)
            loss = train(base, tokenizer, stream, recipe.pretrain_steps, recipe.pretrain_lr, recipe.batch_size,
                         recipe.warmup_steps, weight_decay=0.01, on_step=on_step)
            seconds["base"] = time.perf_counter() - t0
            _save_model(base, tokenizer, base_dir, {"stamp": b_stamp, "role": "base", "final_loss": loss,
                                                    "train_seconds": seconds["base"]})
        else:
            base = load_model(base_dir) if to_finetune else None
            seconds["base"] = _read_sidecar(base_dir).get("train_seconds", 0.0)
        for task in tasks:
            if task not in to_finetune:
                seconds[expert_dirs[task].name] = _read_sidecar(expert_dirs[task]).get("train_seconds", 0.0)
        workers = min(expert_jobs(), len(to_finetune))
        if workers > 1:
            # The experts are independent fine-tunes of the saved base: one single-threaded
            # process each, as many at once as there are cores. Same weights as in one
            # process (one thread each, the base read back exactly from float32, no torch
            # random state in training), a third of the wall time of this stage on 2 cores.
            del base
            bar.set_description(f"experts ({workers} at a time)")
            for task, took in _finetune_in_parallel(root, recipe, to_finetune, e_stamps, workers):
                seconds[expert_dirs[task].name] = took
                bar.update(recipe.finetune_steps)
        elif to_finetune:
            base_state = {k: v.clone() for k, v in base.state_dict().items()}
            for task in to_finetune:
                bar.set_description(f"expert {task}")
                base.load_state_dict(base_state)
                seconds[expert_dirs[task].name] = _finetune(base, tokenizer, recipe, task, expert_dirs[task],
                                                            e_stamps[task], on_step)

        accuracy: dict[str, dict[str, float]] = {}
        seconds["evaluation"] = 0.0
        for folder in [base_dir] + [expert_dirs[t] for t in tasks]:
            accuracy[folder.name], spent = _cached_accuracy(folder, tasks, tokenizer)
            seconds["evaluation"] += spent

    probes_dir = root / "probes"
    probes_dir.mkdir(exist_ok=True)
    for task in tasks:
        (probes_dir / f"{task}.txt").write_text("\n".join(probe_set(task)) + "\n")
    # `total` is what the whole zoo cost to build, reused parts included (their seconds as
    # recorded when they were built); `this_run` is this call's wall-clock time.
    seconds["total"] = sum(seconds.values())
    seconds["this_run"] = time.perf_counter() - started

    manifest = {
        "format": FORMAT,
        "size": recipe.size,
        "recipe": asdict(recipe),
        "parameters": _parameter_count(base_dir),
        "tasks": {t: _task_entry(t) for t in tasks},
        "base": {"name": "base", "path": "base"},
        "experts": {t: {"name": expert_dirs[t].name, "path": expert_dirs[t].name} for t in tasks},
        "accuracy": accuracy,
        "build_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "reused": ([] if train_base else ["base"]) + [expert_dirs[t].name for t in tasks if t not in to_finetune],
        "versions": _versions(),
    }
    write_manifest(root, manifest)
    return Zoo(root.resolve(), manifest)


def _cached_accuracy(folder: Path, tasks: list[str], tokenizer) -> tuple[dict[str, float], float]:
    """(accuracy per task, seconds the evaluation took when it was run)."""
    from zoo.evaluate import evaluate_model, load_model

    side = _read_sidecar(folder) or {}
    cached = side.get("accuracy", {})
    if side.get("eval_size") == EVAL_SIZE and all(t in cached for t in tasks):
        return {t: cached[t] for t in tasks}, side.get("eval_seconds", 0.0)
    t0 = time.perf_counter()
    acc = evaluate_model(load_model(folder), tokenizer, tasks)
    spent = time.perf_counter() - t0
    _write_sidecar(folder, {**side, "eval_size": EVAL_SIZE, "accuracy": {**cached, **acc}, "eval_seconds": spent})
    return acc, spent


def _task_seed(seed: int, task: str) -> str:
    # random.Random hashes a str seed with sha512: stable across processes and platforms.
    return f"finetune:{task}:{seed}"


def _task_entry(name: str) -> dict:
    task = get_task(name)
    ex = task.example(random.Random(0))
    return {"description": task.description, "tag": task.tag, "example": {"prompt": ex.prompt, "answer": ex.answer},
            "eval_size": EVAL_SIZE, "probes": f"probes/{name}.txt"}


def _parameter_count(folder: Path) -> int:
    from merging.checkpoint import Checkpoint

    with Checkpoint(folder) as ckpt:
        return sum(info.numel for info in ckpt.tensors.values())


def reduced_recipe(**changes) -> ZooRecipe:
    """The test-suite recipe, optionally with some settings changed."""
    return replace(RECIPES["reduced"], **changes)
