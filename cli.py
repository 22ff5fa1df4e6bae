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


@main.command("merge")
@click.option("--operator", help="Operator name (see `bandit operators`).")
@click.option("--base", type=click.Path(), help="Base model folder (deltas are taken against it).")
@click.option("--model", "models", multiple=True, type=click.Path(), help="Input model folder; repeat, in order.")
@click.option("--param", "params", multiple=True, metavar="K=V",
              help="Operator parameter; per-model values as a list: weight=0.7,0.3. Repeatable.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
              help="Recipe file (merge YAML layout or JSON) instead of --operator/--model.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (must not exist or be empty).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default=None, help="Working dtype of the recipe [default: float32]; math is float32 or float64.")
@click.option("--out-dtype", default=None, help="Output dtype [default: the base's].")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 5GB or 500MB.")
@click.option("--seed", type=int, default=None, help="Seed of random operators (dare_*, della) [default: 0].")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION",
              help="Register an operator from a module first. Repeatable.")
@click.option("--allow-vocab-mismatch", is_flag=True, help="Merge embeddings and lm_head over the common rows.")
@json_option
def merge_cmd(operator, base, models, params, recipe_file, out_dir, device, dtype, out_dtype, shard_size,
              seed, plugins, allow_vocab_mismatch, as_json):
    """Merge checkpoints with one operator into a new Hugging Face folder."""
    from merging.engine import run_merge
    from merging.recipe import Recipe, parse_param_args
    from merging.registry import load_plugin

    if recipe_file and (operator or models or base or params):
        raise click.UsageError("give either --recipe or --operator/--base/--model/--param, not both")
    if not recipe_file and not (operator and models):
        raise click.UsageError("give --operator and at least one --model, or --recipe FILE")
    for ref in plugins:
        load_plugin(ref)
    if recipe_file:
        recipe = Recipe.load(recipe_file)
        overrides = {k: v for k, v in (("dtype", dtype), ("out_dtype", out_dtype), ("seed", seed)) if v is not None}
        recipe = Recipe.from_dict({**recipe.to_dict(), **overrides}).validate()
    else:
        recipe = Recipe.from_arm(operator, parse_param_args(params), list(models), base,
                                 dtype=dtype or "float32", out_dtype=out_dtype, seed=seed or 0)
    result = run_merge(recipe, out_dir, device=device, shard_size=shard_size,
                       progress=False if as_json else None, allow_vocab_mismatch=allow_vocab_mismatch)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(f"merged {result.tensors} tensors with {result.operator} into {result.path} "
                   f"({result.shards} shard(s), {result.bytes_written / 1e6:.1f} MB, "
                   f"{result.seconds:.1f} s on {result.device})")


@main.command("operators")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION", help="Register an operator from a module first.")
@json_option
def operators_cmd(plugins, as_json):
    """List merge operators, their parameters and defaults."""
    from merging.registry import list_operators, load_plugin

    for ref in plugins:
        load_plugin(ref)
    specs = list_operators()
    if as_json:
        emit_json([s.to_dict() for s in specs])
        return
    for s in specs:
        most = "+" if s.max_models is None else ("" if s.max_models == s.min_models else f"-{s.max_models}")
        click.echo(f"{s.name}  (base: {s.base}; models: {s.min_models}{most})  {s.description}")
        for p in s.params:
            scope = "per model" if p.per_model else "global"
            click.echo(f"    {p.name}={json.dumps(p.default)}  {p.type}, {scope}" + (f"  {p.help}" if p.help else ""))


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
