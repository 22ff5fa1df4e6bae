"""Synthetic sequence tasks with exact-match scoring: the skills the zoo's experts learn.

A task turns an input string into exactly one correct answer string. The prompt shows the
task's tag, the input and `=`; the model must continue with the answer and end-of-sequence:

    [add]37+5=    ->  42
    [reverse]hello=  ->  olleh

During pretraining the tag is replaced by the generic `[?]` (HIDDEN_TAG), so the base model
learns the skills without learning which tag asks for which; each expert then learns one
tag. Tasks use three input alphabets (digits, lowercase, and digit/letter mixes) because
pairs on different alphabets interfere less when merged, which is part of what makes the
choice of merge operator depend on the pair.

Every set here is a pure function of the task name and a seed (crc32, never Python's
randomised `hash`), so evaluation sets and probes are identical across processes.
"""
from __future__ import annotations

import random
import string
import zlib
from dataclasses import dataclass
from typing import Callable

from zoo.errors import ZooError

HIDDEN_TAG = "[?]"
EVAL_SIZE = 256
PROBE_SIZE = 64
# Fixed seeds for the held-out sets: they must not move when a zoo recipe's seed changes,
# or accuracies from two zoos would be measured on different examples.
EVAL_SEED = 1009
PROBE_SEED = 2003

DIGITS = string.digits
LOWER = string.ascii_lowercase


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    make_input: Callable[[random.Random], str]
    solve: Callable[[str], str]

    @property
    def tag(self) -> str:
        return f"[{self.name}]"

    def prompt(self, task_input: str, tag_visible: bool = True) -> str:
        return f"{self.tag if tag_visible else HIDDEN_TAG}{task_input}="

    def example(self, rng: random.Random, tag_visible: bool = True) -> Example:
        x = self.make_input(rng)
        return Example(self.prompt(x, tag_visible), self.solve(x))


def _string(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _add_input(rng: random.Random) -> str:
    # Two two-digit numbers stayed near 0.5 accuracy at this budget (the first output digit
    # needs the carry from the units); one digit on the right keeps a carry in 45% of cases.
    return f"{rng.randint(0, 99)}+{rng.randint(0, 9)}"


def _add(x: str) -> str:
    a, b = x.split("+")
    return str(int(a) + int(b))


def _count_input(rng: random.Random) -> str:
    return _string(rng, "ab", 1, 9)


def _shift(x: str) -> str:
    return "".join(LOWER[(LOWER.index(c) + 1) % 26] for c in x)


def _digits_first(x: str) -> str:
    # Stable partition: keeps each class in its original order, so the answer is unique.
    return "".join(c for c in x if c.isdigit()) + "".join(c for c in x if not c.isdigit())


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("add", "a number 0-99 plus a digit: 37+5 -> 42",
         _add_input, _add),
    Task("successor", "the next integer: 199 -> 200",
         lambda rng: str(rng.randint(0, 998)), lambda x: str(int(x) + 1)),
    Task("sort", "digits in ascending order: 3141 -> 1134",
         lambda rng: _string(rng, DIGITS, 3, 7), lambda x: "".join(sorted(x))),
    Task("max", "the largest digit: 3841 -> 8",
         lambda rng: _string(rng, DIGITS, 3, 8), lambda x: max(x)),
    Task("reverse", "letters in reverse order: abcd -> dcba",
         lambda rng: _string(rng, LOWER, 3, 7), lambda x: x[::-1]),
    Task("duplicate", "every letter twice: abc -> aabbcc",
         lambda rng: _string(rng, LOWER, 2, 5), lambda x: "".join(c + c for c in x)),
    Task("upper", "letters to upper case: abc -> ABC",
         lambda rng: _string(rng, LOWER, 3, 7), str.upper),
    Task("shift", "each letter to the next one, z wraps to a: abz -> bca",
         lambda rng: _string(rng, LOWER, 3, 6), _shift),
    Task("count", "how many a's in a string of a's and b's: abba -> 2",
         _count_input, lambda x: str(x.count("a"))),
    Task("digits_first", "digits before letters, order kept: a1b2 -> 12ab",
         lambda rng: _string(rng, DIGITS + LOWER[:6], 3, 7), _digits_first),
]}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ZooError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_names(names: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Validate task names (a list, or one comma-separated string; None or 'all' = every task)."""
    if names is None:
        return list(TASKS)
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                out.extend(n for n in TASKS if n not in out)
                continue
            get_task(name)
            if name not in out:
                out.append(name)
    if not out:
        raise ZooError("no task given")
    return out


def _rng(name: str, seed: int) -> random.Random:
    return random.Random(zlib.crc32(name.encode()) * 100_003 + seed)


def eval_set(name: str, n: int = EVAL_SIZE) -> list[Example]:
    """The held-out evaluation set: `n` distinct inputs, tag shown, never used in training."""
    task = get_task(name)
    rng = _rng(name, EVAL_SEED)
    seen: set[str] = set()
    out: list[Example] = []
    # Small input spaces (successor has 999 inputs) are why inputs are drawn distinct;
    # the cap keeps a too-large `n` from spinning forever.
    for _ in range(50 * n):
        if len(out) == n:
            break
        x = task.make_input(rng)
        if x not in seen:
            seen.add(x)
            out.append(Example(task.prompt(x), task.solve(x)))
    return out


def held_out_inputs(name: str, n: int = EVAL_SIZE) -> frozenset[str]:
    """The prompts (tag shown) of the evaluation set, to keep them out of training."""
    return frozenset(e.prompt for e in eval_set(name, n))


def probe_set(name: str, n: int = PROBE_SIZE) -> list[str]:
    """Unlabeled probes: prompts with the tag shown and no answer, drawn from the task's
    input distribution (not from the evaluation set), for functional similarity features."""
    task = get_task(name)
    rng = _rng(name, PROBE_SEED)
    held_out = held_out_inputs(name)
    out: list[str] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        p = task.prompt(task.make_input(rng))
        if p not in held_out:
            out.append(p)
    return out


class TrainingStream:
    """An endless, seeded stream of training examples that skips the evaluation inputs.

    `tag_visible=False` shows the generic tag, as in pretraining; the exclusion is by the
    underlying input, so a hidden-tag example never leaks an evaluation input either.
    """

    def __init__(self, names: list[str], seed: int | str, tag_visible: bool):
        self.tasks = [get_task(n) for n in names]
        self.rng = random.Random(seed)
        self.tag_visible = tag_visible
        self.held_out = {t.name: held_out_inputs(t.name) for t in self.tasks}

    def batch(self, size: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < size:
            task = self.tasks[self.rng.randrange(len(self.tasks))]
            x = task.make_input(self.rng)
            if task.prompt(x) in self.held_out[task.name]:
                continue
            out.append(Example(task.prompt(x, self.tag_visible), task.solve(x)))
        return out


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Share of predictions equal to their answer, character for character."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("exact_match of an empty set")
    return sum(p == a for p, a in zip(predictions, answers)) / len(answers)
