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


if __name__ == "__main__":
    main()
