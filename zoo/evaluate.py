"""Exact-match accuracy of a causal LM on a task's held-out set, and the merge reward.

Scoring is teacher-forced: one forward pass over `<s> prompt answer </s>` per batch, and an
example counts as correct when the argmax at every answer position (and at `</s>`) is the
expected token. Greedy decoding emits exactly the answer and stops iff each of its steps
picks the next answer token given the correct tokens before it, which is precisely that
test, so the score equals `generate()`'s exact match at a fraction of the cost.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

from zoo.errors import ZooError
from zoo.tasks import EVAL_SIZE, Example, eval_set, task_names

BATCH_SIZE = 256


def teacher_forced_correct(model, tokenizer, examples: list[Example], batch_size: int = BATCH_SIZE) -> list[bool]:
    """Per example: does greedy decoding produce exactly its answer and then stop?"""
    import torch

    from zoo.encoding import IGNORE, encode_examples

    out: list[bool] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            ids, labels = encode_examples(tokenizer, examples[start: start + batch_size])
            logits = model(input_ids=ids).logits
            # logits at position t predict token t + 1.
            predicted = logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            ok = (predicted == target) | (target == IGNORE)
            out.extend(ok.all(dim=1).tolist())
    return out


def generated_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy `generate()` one prompt at a time: the slow reference that scoring must match."""
    import torch

    answers: list[str] = []
    model.eval()
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            seq = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )[0, ids.shape[1]:].tolist()
            # Only an answer that ends in </s> is finished; a run-on one must not match.
            if tokenizer.eos_token_id in seq:
                answers.append(tokenizer.decode(seq[: seq.index(tokenizer.eos_token_id)]))
            else:
                answers.append(tokenizer.decode(seq) + "\u2026")
    return answers


def evaluate_model(model, tokenizer, tasks: list[str] | str | None, n: int = EVAL_SIZE) -> dict[str, float]:
    """Accuracy per task of an in-memory model on the first `n` held-out examples."""
    names = task_names(tasks)
    return {name: _mean(teacher_forced_correct(model, tokenizer, eval_set(name, n))) for name in names}


def load_model(folder: str | os.PathLike):
    """A checkpoint folder as a float32 causal LM on the CPU, or a one-line ZooError."""
    from merging.checkpoint import Checkpoint

    folder = Path(folder)
    Checkpoint(folder).close()  # clear errors for a missing folder, config or weights
    from transformers import AutoModelForCausalLM

    try:
        import torch

        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(f"{folder}: cannot load as a causal language model ({first})") from None


def evaluate_folder(folder: str | os.PathLike, tasks: list[str] | str | None, n: int = EVAL_SIZE) -> dict[str, float]:
    """Accuracy per task of the model saved in `folder` (its own tokenizer, or the zoo's
    built-in one when the folder carries none)."""
    from zoo.tokenizer import load_tokenizer

    names = task_names(tasks)  # validate before paying for the model load
    with quiet_transformers():
        model = load_model(folder)
        tokenizer = load_tokenizer(folder)
    return evaluate_model(model, tokenizer, names, n)


def retained_skill_reward(acc_merged: dict[str, float], acc_expert: dict[str, float]) -> float:
    """Mean over the tasks of min(1, acc_merged[t] / acc_expert[t]): the share of each
    expert's skill that the merge kept, capped at 1 so beating an expert earns nothing extra.

    An expert with accuracy 0 had no skill to lose, so its task counts as fully retained
    (1.0) whatever the merge scores; this is also the limit of the capped ratio as the
    expert's accuracy goes to 0. Both dicts must name the same tasks, with accuracies in
    [0, 1].
    """
    if set(acc_merged) != set(acc_expert):
        raise ValueError(f"tasks differ: merged has {sorted(acc_merged)}, experts have {sorted(acc_expert)}")
    if not acc_expert:
        raise ValueError("retained_skill_reward needs at least one task")
    ratios = []
    for task, expert in acc_expert.items():
        merged = acc_merged[task]
        for what, v in (("merged", merged), ("expert", expert)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{what} accuracy for {task!r} must be in [0, 1], got {v!r}")
        ratios.append(1.0 if expert == 0 else min(1.0, merged / expert))
    return sum(ratios) / len(ratios)


def merge_reward(zoo, merged_folder: str | os.PathLike, tasks: list[str] | tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """Evaluate a merge of the zoo's experts for `tasks` and return (reward, its accuracy per
    task); the experts' accuracies come from the zoo's manifest, measured on the same sets."""
    names = task_names(list(tasks))
    acc_expert = {t: zoo.expert_accuracy(t) for t in names}
    acc_merged = evaluate_folder(merged_folder, names)
    return retained_skill_reward(acc_merged, acc_expert), acc_merged


@contextmanager
def quiet_transformers():
    """Silence transformers' own per-load and per-save progress bars and info logs, which
    would interleave with ours; restore the previous settings afterwards."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    level = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _mean(flags: list[bool]) -> float:
    if not flags:
        raise ZooError("empty evaluation set")
    return sum(flags) / len(flags)
