"""The `bandit` command: a thin click shell over the library.

Each command parses its options, calls one library function and prints text, or JSON
with --json. Errors a user can cause end in one line on stderr and exit code 1; click's
own usage errors exit 2.
"""
from __future__ import annotations

import json
import math
import os
import sys

import click


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported here so that a command only pays for the packages it touches.
    from bandit.errors import BanditError
    from merging.errors import MergeError
    from store.errors import StoreError

    errors: list[type[BaseException]] = [BanditError, MergeError, StoreError]
    try:
        from features.errors import FeatureError

        errors.append(FeatureError)
    except ImportError:
        pass
    try:
        from zoo.errors import ZooError

        errors.append(ZooError)
    except ImportError:
        pass
    return tuple(errors)


class BanditGroup(click.Group):
    """Turns the errors a user can cause into one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _user_errors() as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


def db_option(f):
    return click.option(
        "--db", "db_path", envvar="BANDIT_DB", default="bandit.db", show_default=True,
        type=click.Path(dir_okay=False), help="SQLite database (default: $BANDIT_DB or ./bandit.db).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dict__"):
        return vars(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@click.group(cls=BanditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simmerge")
def main() -> None:
    """simmerge: pick how to merge LLM checkpoints with a contextual bandit."""


# ---------------------------------------------------------------------------------------
# service core: propose, reward, arms, tasks, stats, rebuild
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# merging: merge, operators
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# features and models
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# replay, policies, export
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# zoo, eval, demo
# ---------------------------------------------------------------------------------------


# Not named `zoo`: a module-level `zoo` would shadow the package for any later `import zoo`.
@main.group("zoo")
def zoo_group() -> None:
    """The embedded tiny model zoo: a base and one expert per synthetic task."""


@zoo_group.command("build")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Zoo folder (default: $SIMMERGE_HOME/zoo/SIZE or ~/.cache/simmerge/zoo/SIZE).")
@click.option("--size", type=click.Choice(["tiny", "small", "reduced"]), default="tiny", show_default=True,
              help="tiny: ~0.9M params, minutes on a CPU; small: larger and slower; reduced: 3 tasks, for tests.")
@json_option
def zoo_build(directory, size, as_json) -> None:
    """Build the zoo, or complete it: models already built with the same recipe are reused."""
    from zoo.build import build_zoo

    built = build_zoo(directory, size=size, progress=False if as_json else None)
    if as_json:
        emit_json({"root": str(built.root), **built.manifest})
        return
    m = built.manifest
    click.echo(f"zoo ({m['size']}, {m['parameters']:,} parameters per model) at {built.root}")
    secs = m["build_seconds"]
    click.echo(f"build time {secs['total']:.1f} s (this run {secs['this_run']:.1f} s); "
               f"reused: {', '.join(m['reused']) or 'nothing'}")
    click.echo(_accuracy_table(m["accuracy"], built.tasks))


@main.command("eval")
@click.argument("model_dir", type=click.Path())
@click.option("--task", "tasks", multiple=True, required=True,
              help="Task to score on; repeat it or separate with commas; 'all' = every task.")
@json_option
def eval_cmd(model_dir, tasks, as_json) -> None:
    """Exact-match accuracy of MODEL_DIR on each task's held-out set."""
    from zoo.evaluate import evaluate_folder

    accuracy = evaluate_folder(model_dir, list(tasks))
    if as_json:
        emit_json({"model": model_dir, "accuracy": accuracy})
        return
    for task, acc in accuracy.items():
        click.echo(f"{task}\t{acc:.4f}")


def _accuracy_table(accuracy: dict, tasks: list[str]) -> str:
    width = max(len(m) for m in accuracy)
    lines = [" " * width + "  " + " ".join(f"{t[:8]:>8}" for t in tasks)]
    for model, row in accuracy.items():
        lines.append(f"{model:<{width}}  " + " ".join(f"{row[t]:8.3f}" for t in tasks))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
