"""The `bandit` command: a thin click shell over the library.

Each command parses its options, calls one library function and prints text, or JSON
with --json. Errors a user can cause end in one line on stderr and exit code 1; click's
own usage errors exit 2.
"""
from __future__ import annotations

import os
import sys

import click


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported here so that a command only pays for the packages it touches.
    from bandit.errors import BanditError, store_errors
    from merging.errors import MergeError

    errors: list[type[BaseException]] = [BanditError, MergeError, *store_errors()]
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
        except KeyboardInterrupt:
            # Work is transactional (database) or atomic (merges, caches): nothing half-done stays.
            click.echo("interrupted", err=True)
            ctx.exit(130)


def db_option(f):
    return click.option(
        "--db", "db_path", envvar="BANDIT_DB", default="bandit.db", show_default=True,
        type=click.Path(dir_okay=False), help="SQLite database (default: $BANDIT_DB or ./bandit.db).",
    )(f)


def server_option(f):
    return click.option(
        "--server", metavar="URL",
        help="Run against a `bandit serve` at URL instead of --db (token from $BANDIT_TOKEN).",
    )(f)


def _client(url: str):
    from bandit.server.client import Client

    return Client(url)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def emit_json(obj) -> None:
    from bandit import render

    click.echo(render.dumps(obj))


def echo(text: str) -> None:
    """A command's text output; nothing at all for an empty listing."""
    if text:
        click.echo(text)


@click.group(cls=BanditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simmerge")
def main() -> None:
    """simmerge: pick how to merge LLM checkpoints with a contextual bandit."""


# ---------------------------------------------------------------------------------------
# service core: propose, reward, arms, tasks, stats, rebuild
# ---------------------------------------------------------------------------------------
def _service(db_path: str, *, create: bool = True):
    from bandit.service import Service

    return Service(db_path, create=create)


def _merge_event(svc, event_id, out_dir: str, device: str, quiet: bool, **engine_options) -> dict:
    from bandit import render

    result = svc.merge_event(event_id, out_dir, device=device, progress=False if quiet else None, **engine_options)
    if not quiet:
        click.echo(render.event_merge(result))
    return result.to_dict()


@main.command()
@click.option("--task", "-t", required=True, help="Task the merge is for (created on first use).")
@click.option("--models", "-m", "models", multiple=True, metavar="A B [C ...]",
              help="Registered fine-tunes to choose a pair from (features are computed and cached).")
@click.argument("more_models", nargs=-1, metavar="")
@click.option("--feature", "-f", "features", multiple=True, metavar="NAME=VALUE", help="One context feature (repeatable).")
@click.option("--context-json", help="Context features as a JSON object.")
@click.option("--structural-only", is_flag=True, help="Weights-only features (no forward passes).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N for features and merge.")
@click.option("--merge-to", type=click.Path(file_okay=False), help="Also run the chosen merge into this folder.")
@click.option("--trial-merges/--no-trial-merges", default=None,
              help="Merge every candidate action in memory first and score it against the experts' own "
                   "outputs (action features). Default: the database's setting (bandit policy trials).")
@click.option("--trial-budget", type=click.IntRange(min=1), default=None, metavar="M",
              help="Trial only the M most promising actions by the pre-trial scores.")
@click.option("--seed", help="Seed for tie-breaking and sampling, 0 to 2^63 - 1 (logged either way).")
@server_option
@db_option
@json_option
def propose(task, models, more_models, features, context_json, structural_only, device, merge_to, trial_merges,
            trial_budget, seed, server, db_path, as_json):
    """Choose a merge operator (an arm) for TASK and log the decision as an event.

    With --models, every ordered pair of the models is a candidate: the policy picks the
    operator, the pair and its order. Without, the context comes from --feature/--context-json.
    `--models A B C` takes every word up to the next option (click reads B and C as
    arguments; they are only accepted after --models).
    """
    from bandit import render
    from bandit.errors import BanditError
    from bandit.inputs import parse_context, parse_seed

    if more_models and not models:
        raise BanditError(f"unexpected argument {more_models[0]!r}: model names follow --models")
    models = tuple(models) + tuple(more_models)
    seed = parse_seed(seed)
    if server:
        if merge_to:
            raise BanditError("--merge-to runs on this machine: with --server, queue the merge with POST /v1/merges")
        if models and (features or context_json):
            raise BanditError("give either --models (features are computed) or --feature/--context-json, not both")
        from bandit.service.records import Proposal

        with _client(server) as client:
            p = Proposal(**client.propose(task, models=list(models) or None, seed=seed, structural_only=structural_only,
                                          context=None if models else parse_context(features, context_json)))
        if as_json:
            emit_json(p)
        else:
            click.echo(render.proposal(p))
            click.echo(render.proposal_footer(p))
        return
    if models:
        if features or context_json:
            raise BanditError("give either --models (features are computed) or --feature/--context-json, not both")
        svc = _service(db_path)
        p = svc.propose_merge(task, models, seed=seed, structural_only=structural_only, device=device,
                              progress=not as_json and sys.stderr.isatty(), trial_merges=trial_merges,
                              trial_budget=trial_budget, keep_merge=bool(merge_to))
    else:
        if merge_to:
            raise BanditError("--merge-to needs --models: there is nothing to merge without models")
        if trial_merges or trial_budget:
            raise BanditError("--trial-merges needs --models: trial merges merge the candidate pairs")
        context = parse_context(features, context_json)
        svc = _service(db_path)
        p = svc.propose(task, context, seed=seed)
    if as_json:
        if merge_to:
            p.merged = _merge_event(svc, p.event_id, merge_to, device, quiet=True)
        emit_json(p)
        return
    click.echo(render.proposal(p, merging=bool(merge_to)))
    if merge_to:
        _merge_event(svc, p.event_id, merge_to, device, quiet=False)
    click.echo(render.proposal_footer(p))


# ignore_unknown_options: a negative reward (`bandit reward 5 -0.3`) is a value, not an option
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("event_id")
@click.argument("value")
@server_option
@db_option
@json_option
def reward(event_id, value, server, db_path, as_json):
    """Record the REWARD of event EVENT_ID and update its arm's posterior."""
    if server:
        from bandit.service.reward import RewardOutcome

        with _client(server) as client:
            d = client.reward(event_id, value)
        out = RewardOutcome(d["event_id"], d["arm"], d["reward"], d["duplicate"], d["pulls"], {})
    else:
        # Lean on purpose: the facade loads no numpy or sqlite-utils for a reward, so this starts fast.
        # A reward belongs to an event of an existing database: never create one on a typo.
        out = _service(db_path, create=False).reward(event_id, value)
    if as_json:
        emit_json(out)
    else:
        from bandit import render

        click.echo(render.reward(out))


@main.group()
def arms():
    """List, add and retire arms (merge operators with parameters)."""


@arms.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retired arms.")
@db_option
@json_option
def arms_list(show_all, db_path, as_json):
    """The arms and their parameters."""
    from bandit import render

    rows = _service(db_path).arms(include_retired=show_all)
    emit_json(rows) if as_json else echo(render.arms(rows))


@arms.command("add")
@click.argument("name")
@click.option("--operator", "-o", required=True, help="Merge operator (see `bandit operators`).")
@click.option("--param", "-p", "params", multiple=True, metavar="K=V", help="Operator parameter (repeatable).")
@click.option("--warm-start-from", metavar="ARM", help="Start from a shrunk copy of this arm's posterior.")
@click.option("--shrink", default="0.1", show_default=True, help="Share of the donor's evidence kept, in [0, 1].")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION",
              help="Load an operator from a module first (operators published through the "
                   "`simmerge.operators` entry point need nothing).")
@db_option
@json_option
def arms_add(name, operator, params, warm_start_from, shrink, plugins, db_path, as_json):
    """Add arm NAME: proposable at once, nothing else retrained."""
    from bandit import render
    from bandit.inputs import parse_finite, parse_params
    from merging.registry import load_plugin

    values, shrink = parse_params(params), parse_finite(shrink, "--shrink")
    for ref in plugins:
        load_plugin(ref)
    arm = _service(db_path).add_arm(name, operator, values, warm_start_from, shrink)
    emit_json(arm) if as_json else click.echo(render.arm_added(arm, shrink))


@arms.command("retire")
@click.argument("name")
@db_option
@json_option
def arms_retire(name, db_path, as_json):
    """Stop proposing arm NAME; its history stays."""
    from bandit import render

    arm = _service(db_path).retire_arm(name)
    emit_json(render.arm_retired_payload(arm)) if as_json else click.echo(render.arm_retired(arm))


@main.group()
def tasks():
    """Add and list tasks (a name plus optional unlabeled probe texts)."""


@tasks.command("add")
@click.argument("name")
@click.option("--probes", type=click.Path(exists=True, dir_okay=False), help="Probe texts, one per line (UTF-8).")
@db_option
@json_option
def tasks_add(name, probes, db_path, as_json):
    """Add task NAME (or replace its probes)."""
    from bandit import render
    from bandit.inputs import read_text_lines

    texts = read_text_lines(probes, "probes") if probes else None
    task = _service(db_path).add_task(name, texts)
    emit_json(task) if as_json else click.echo(render.task_added(task))


@tasks.command("list")
@db_option
@json_option
def tasks_list(db_path, as_json):
    """The tasks, their probe counts and events."""
    from bandit import render

    rows = _service(db_path).tasks()
    emit_json(rows) if as_json else echo(render.tasks(rows))


@main.command()
@server_option
@db_option
@json_option
def stats(server, db_path, as_json):
    """Per arm: proposals, rewards, mean reward, posterior mean at the average context, share."""
    from bandit import render

    if server:
        from bandit.service.records import ArmStats

        with _client(server) as client:
            rows = [ArmStats(**r) for r in client.stats()]
    else:
        rows = _service(db_path).stats()
    emit_json(rows) if as_json else click.echo(render.stats(rows))


@main.command()
@click.option("--check", is_flag=True, help="Only compare with the live posteriors; change nothing.")
@db_option
@json_option
def rebuild(check, db_path, as_json):
    """Recompute every posterior from the events and rewards."""
    from bandit import render

    rep = _service(db_path).rebuild(check=check)
    emit_json(rep) if as_json else click.echo(render.rebuild(rep))
    if check and not rep.clean:
        sys.exit(1)



@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs a token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8600, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token (default: $BANDIT_TOKEN; none on loopback).")
@click.option("--device", default="auto", show_default=True, help="Device of the merge queue and features.")
@click.option("--reward-window", type=float, metavar="SECONDS",
              help="Close an event not rewarded within SECONDS: default reward (--default-reward) or expiry.")
@click.option("--default-reward", metavar="X", help="Reward applied when the window closes (logged as default).")
@click.option("--expire", is_flag=True, help="Mark events expired when the window closes (no reward).")
@db_option
def serve(host, port, token_file, device, reward_window, default_reward, expire, db_path):
    """Run the HTTP service: the JSON API under /v1, merge jobs and the dashboard at /."""
    from bandit.errors import BanditError
    from bandit.inputs import parse_number

    if (default_reward is not None or expire) and reward_window is None:
        raise BanditError("--default-reward and --expire need --reward-window SECONDS")
    if reward_window is not None and (default_reward is None) == (not expire):
        raise BanditError("with --reward-window, give exactly one of --default-reward X or --expire")
    from bandit.server.auth import load_token, require_token_off_loopback
    from bandit.server.app import serve as run_server
    from bandit.server.runtime import ServerConfig

    config = ServerConfig(
        db=db_path, device=device, token=load_token(token_file), reward_window=reward_window,
        default_reward=None if default_reward is None else parse_number(default_reward, "--default-reward", bounded=True),
    )
    require_token_off_loopback(host, config.token)
    if reward_window is not None:
        from bandit.service.join_window import JoinWindow

        JoinWindow(reward_window, config.default_reward)  # its checks, before anything starts
    click.echo(f"bandit serve: http://{host}:{port}/ (database {db_path}"
               + (", token required" if config.token else "") + ")", err=True)
    run_server(config, host=host, port=port)


# ---------------------------------------------------------------------------------------
# merging: merge, operators
# ---------------------------------------------------------------------------------------


@main.command("merge")
@click.option("--operator", help="Operator name (see `bandit operators`).")
@click.option("--base", type=click.Path(), help="Base model folder (deltas are taken against it).")
@click.option("--model", "models", multiple=True, type=click.Path(), help="Input model folder; repeat, in order.")
@click.option("--param", "-p", "params", multiple=True, metavar="K=V",
              help="Operator parameter; per-model values as a list: weight=0.7,0.3. Repeatable.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
              help="Recipe file (mergekit's YAML layout, several documents with named intermediates, or JSON) "
                   "instead of --operator/--model.")
@click.option("--event", "event_id", help="Run the merge that this proposal (event id) chose.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (must not exist or be empty).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default=None, help="Recipe dtype: the output dtype unless --out-dtype (as mergekit); "
                                            "math is float32, float64 when float64 is named.")
@click.option("--out-dtype", default=None, help="Output dtype [default: --dtype, else the base's].")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 5GB or 500MB.")
@click.option("--seed", default=None, help="Seed of random operators (dare_*, della), 0 to 2^63 - 1 [default: 0].")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION",
              help="Register an operator from a module first. Repeatable.")
@click.option("--allow-vocab-mismatch", is_flag=True, help="Merge embeddings and lm_head over the common rows.")
@db_option
@json_option
def merge_cmd(operator, base, models, params, recipe_file, event_id, out_dir, device, dtype, out_dtype, shard_size,
              seed, plugins, allow_vocab_mismatch, db_path, as_json):
    """Merge checkpoints with one operator into a new Hugging Face folder.

    Three ways to say what to merge: --operator with --model (and --base, --param), a
    --recipe file, or --event ID for the merge a proposal chose.
    """
    from bandit import render
    from bandit.inputs import parse_params, parse_seed
    from merging.engine import run_merge
    from merging.multi import run_recipe_file
    from merging.recipe import Recipe
    from merging.registry import load_plugin

    seed = parse_seed(seed)
    if event_id is not None:
        if recipe_file or operator or models or base or params:
            raise click.UsageError("--event takes the recipe from the proposal: no --recipe/--operator/--model/--param")
        for ref in plugins:
            load_plugin(ref)
        result = _merge_event(_service(db_path), event_id, out_dir, device, quiet=as_json, shard_size=shard_size,
                              allow_vocab_mismatch=allow_vocab_mismatch)
        if as_json:
            emit_json(result)
        return
    if recipe_file and (operator or models or base or params):
        raise click.UsageError("give either --recipe or --operator/--base/--model/--param, not both")
    if not recipe_file and not (operator and models):
        raise click.UsageError("give --operator and at least one --model, or --recipe FILE")
    for ref in plugins:
        load_plugin(ref)
    engine_options = dict(device=device, shard_size=shard_size, progress=False if as_json else None,
                          allow_vocab_mismatch=allow_vocab_mismatch)
    if recipe_file:
        # One document or several (named intermediates, then the final merge).
        overrides = {k: v for k, v in (("dtype", dtype), ("out_dtype", out_dtype), ("seed", seed)) if v is not None}
        result = run_recipe_file(recipe_file, out_dir, overrides=overrides, **engine_options)
    else:
        recipe = Recipe.from_arm(operator, parse_params(params), list(models), base,
                                 dtype=dtype, out_dtype=out_dtype, seed=seed or 0)
        result = run_merge(recipe, out_dir, **engine_options)
    emit_json(result) if as_json else click.echo(render.merge_result(result))


@main.command("operators")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION", help="Register an operator from a module first.")
@json_option
def operators_cmd(plugins, as_json):
    """List merge operators, their parameters and defaults."""
    from bandit import render
    from merging.registry import list_operators, load_plugin

    for ref in plugins:
        load_plugin(ref)
    specs = list_operators()
    emit_json(specs) if as_json else click.echo(render.operators(specs))


# ---------------------------------------------------------------------------------------
# features and models
# ---------------------------------------------------------------------------------------
@main.group()
def models():
    """Register and list checkpoints (Hugging Face folders with safetensors)."""


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--base", help="Registered model this one was fine-tuned from.")
@click.option("--probes", type=click.Path(exists=True, dir_okay=False),
              help="The model's own unlabeled probe texts, one per line (its domain; used by trial merges).")
@db_option
@json_option
def models_add(name, path, base, probes, db_path, as_json):
    """Register checkpoint folder PATH as NAME (re-registering updates it)."""
    from bandit import render
    from bandit.inputs import read_text_lines

    texts = read_text_lines(probes, "probes") if probes else None
    model = _service(db_path).add_model(name, path, base, probes=texts)
    emit_json(model) if as_json else click.echo(render.model_added(model))


@main.command("features")
@click.argument("names", nargs=-1, metavar="[MODEL_A MODEL_B]")
@click.option("--all", "all_pairs", is_flag=True,
              help="Every ordered pair of a catalog: of --models, else of each base's registered fine-tunes.")
@click.option("--models", "-m", "models", multiple=True, metavar="A B [C ...]",
              help="With --all: the fine-tunes to pair (default: all registered ones, per base).")
@click.option("--task", "-t", help="Task whose probe texts to use (default: the built-in generic probes).")
@click.option("--structural-only", is_flag=True, help="Weights-only features (no forward passes).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--memory-budget", default="1GB", show_default=True,
              help="With --all: memory for one tensor of every model at once (larger tensors are read in parts).")
@db_option
@json_option
def features_cmd(names, all_pairs, models, task, structural_only, device, memory_budget, db_path, as_json):
    """Similarity features of the ordered pair MODEL_A, MODEL_B (registered models), cached;
    with --all, of every pair of a catalog (one read and one forward pass per model).

    `--models A B C` takes every word up to the next option (click reads B and C as
    arguments; they are only accepted after --models)."""
    from bandit import render
    from bandit.errors import InvalidInput

    progress = not as_json and sys.stderr.isatty()
    if all_pairs:
        if names and not models:
            raise InvalidInput("give either MODEL_A MODEL_B or --all [--models ...], not both")
        rows = _service(db_path).all_pair_features(tuple(models) + tuple(names) or None, task=task,
                                                   structural_only=structural_only, device=device,
                                                   progress=progress, memory_budget=memory_budget)
        emit_json({"pairs": rows}) if as_json else click.echo(render.catalog_features(rows))
        return
    if models or len(names) != 2:
        raise InvalidInput("name two models (MODEL_A MODEL_B), or use --all [--models A B ...]")
    model_a, model_b = names
    f = _service(db_path).features(model_a, model_b, task=task, structural_only=structural_only, device=device,
                                   progress=progress)
    emit_json(f) if as_json else click.echo(render.features(f))


@models.command("list")
@db_option
@json_option
def models_list(db_path, as_json):
    """The registered models."""
    from bandit import render

    rows = _service(db_path).models()
    emit_json(rows) if as_json else echo(render.models(rows))


# ---------------------------------------------------------------------------------------
# replay, policies, export
# ---------------------------------------------------------------------------------------
DEFAULT_REPLAY_POLICIES = ("linucb", "hybrid", "lints", "egreedy", "vw", "random")


def _progress_bar(total: int, quiet: bool):
    """A tqdm bar on a terminal; nothing when piped or with --json."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", file=sys.stderr, leave=False)
    return bar, bar.update


@main.command()
@click.option("--outcomes", type=click.Path(dir_okay=False), help="Full-information outcome table (CSV or JSONL).")
@click.option("--logged", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="Evaluate from a decision log: an exported JSONL file, or this database's events if no FILE.")
@click.option("--policy", "-p", "policies", multiple=True, metavar="NAME[:k=v,...]",
              help=f"Policy to replay (repeatable). Default: {', '.join(DEFAULT_REPLAY_POLICIES)}.")
@click.option("--seeds", type=int, default=20, show_default=True, help="Random arrival orders per policy.")
@click.option("--add-arm-at", metavar="ROUND:ARM", help="ARM is unknown until ROUND rounds have passed.")
@click.option("--new-task-at", metavar="ROUND:TASK", help="TASK's rows only arrive from round ROUND on.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write cumulative-regret curves to this PNG.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Processes to spread the runs over.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples (--logged).")
@click.option("--seed", default="0", show_default=True, help="Seed for --logged's randomness, 0 to 2^63 - 1.")
@click.option("--default-rewards", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="--logged: keep the server's reward-window default rewards, or drop them (their events "
                   "count as unrewarded).")
@click.option("--passes", type=int, default=1, show_default=True,
              help="The table's requests recur this many times, each pass in a fresh order (read the last half).")
@click.option("--group-orders", is_flag=True,
              help="Make both orders of each pair of a table without a request column the candidates of one request.")
@click.option("--prior", "prior_table", type=click.Path(dir_okay=False),
              help="Fit an intercept-only prior on this outcome table; replay each policy without and with it.")
@db_option
@json_option
def replay(outcomes, logged, policies, seeds, add_arm_at, new_task_at, plot, jobs, bootstrap, seed, default_rewards,
           passes, group_orders, prior_table, db_path, as_json):
    """Evaluate policies offline: on an outcome table, or on a decision log."""
    # The policies' matrices are small; threaded BLAS only makes the replay processes fight
    # over the cores. Effective when numpy is not loaded yet, as in a fresh `bandit` process.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from bandit import render
    from bandit.errors import BanditError
    from bandit.inputs import parse_seed

    seed = parse_seed(seed)
    if (outcomes is None) == (logged is None):
        raise BanditError("give exactly one of --outcomes FILE or --logged [FILE]")
    policies = list(policies) or list(DEFAULT_REPLAY_POLICIES)
    if outcomes is not None and default_rewards != "keep":
        raise BanditError("--default-rewards applies to --logged only (an outcome table has no default rewards)")
    if logged is not None:
        if add_arm_at or new_task_at or plot or passes != 1 or group_orders or prior_table:
            raise BanditError("--add-arm-at, --new-task-at, --plot, --passes, --group-orders and --prior "
                              "apply to --outcomes only")
        if logged:
            from bandit.offline.ope import evaluate_log_source

            rep = evaluate_log_source(policies, logged, None, seed=seed, bootstrap=bootstrap,
                                      default_rewards=default_rewards)
        else:
            rep = _service(db_path, create=False).evaluate_logged(policies, None, seed=seed, bootstrap=bootstrap,
                                                                  default_rewards=default_rewards)
        emit_json(rep) if as_json else click.echo(render.logged(rep))
        return
    from bandit.offline.replay import AddArm, NewTask, parse_scenario_arg, replay_outcomes

    add_arm = AddArm(*parse_scenario_arg(add_arm_at, "--add-arm-at")) if add_arm_at else None
    new_task = NewTask(*parse_scenario_arg(new_task_at, "--new-task-at")) if new_task_at else None
    # arms registered in the database, when there is one, describe the table's arms best
    known = _service(db_path, create=False).arm_specs() if os.path.exists(db_path) else None
    bar, tick = _progress_bar(len(policies) * max(seeds, 0) * (2 if prior_table else 1), as_json)
    try:
        rep = replay_outcomes(outcomes, policies, seeds, add_arm, new_task, known, jobs, plot, tick, passes,
                              group_orders, prior_table)
    finally:
        if bar is not None:
            bar.close()
    emit_json(rep) if as_json else click.echo(render.replay(rep))


@main.command("outcomes")
@click.option("--models", "-m", "models", multiple=True, metavar="A B [C ...]",
              help="Registered fine-tunes (one common base): every ordered pair is merged with every active arm.")
@click.argument("more_models", nargs=-1, metavar="")
@click.option("--evaluate", "command", required=True, metavar="'CMD {model} {a} {b}'",
              help="Shell command scoring a merged folder; the last number it prints on stdout is the reward.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Table to write (.csv or .jsonl).")
@click.option("--task", "-t", default=None, help="Registered task whose probes feed the features [default: generic].")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Merges run in parallel.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default=None,
              help="Reward cache, so a re-run does only what is new [default: OUT.cache.json].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds one evaluation may take.")
@click.option("--structural-only", is_flag=True, help="Weights-only features in the f: columns.")
@click.option("--trial-merges", is_flag=True,
              help="Also write every arm's trial-merge signals as a:<arm>:<feature> columns: each merge in memory "
                   "against each expert's outputs on its own probes (models add --probes), else the task's. "
                   "Cached per action, like propose --trial-merges.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@db_option
@json_option
def outcomes_cmd(models, more_models, command, out, task, jobs, cache_path, timeout, structural_only, trial_merges,
                 device, db_path, as_json):
    """Build an outcome table for your own catalog with your own evaluator.

    Both orders of each pair are the two candidates of one request (the order listed first
    first). Example: bandit outcomes -m A B C --evaluate 'python eval.py {model}' --out t.csv
    """
    from bandit import render
    from bandit.errors import BanditError
    from bandit.offline.build import CommandEvaluator

    if more_models and not models:
        raise BanditError(f"unexpected argument {more_models[0]!r}: model names follow --models")
    models = tuple(models) + tuple(more_models)
    evaluator = CommandEvaluator(command, timeout)  # a bad template fails before the database opens
    svc = _service(db_path, create=False)
    n_arms = sum(1 for a in svc.arms(include_retired=False))
    cells = len(models) * (len(models) - 1) * n_arms
    show = not as_json and sys.stderr.isatty()
    # The trials run first (with the pair features), then the evaluated merges.
    trial_bar = _zoo_progress(cells if trial_merges else 0, show and trial_merges, "trial merges")
    bar = _zoo_progress(cells, show, "outcome table")
    try:
        rep = svc.build_outcomes(list(models), evaluator, out, task=task, jobs=jobs, cache_path=cache_path,
                                 structural_only=structural_only, device=device, on_cell=lambda *cell: bar.update(1),
                                 trial_merges=trial_merges, on_trial=lambda *action: trial_bar.update(1))
    finally:
        trial_bar.close()
        bar.close()
    rep.pop("records")  # the table itself is in the file
    if as_json:
        emit_json(rep)
        return
    click.echo(render.outcome_table(rep, rep["merges_run"], rep["merges_cached"]))
    if "trials" in rep:
        t = rep["trials"]
        click.echo(f"trial merges: {t['merges']} run in {t['seconds']:.1f} s, {t['cached']} from the cache")
    click.echo(f"written to {out}")


@main.command("fit")
@click.option("--outcomes", "table_path", type=click.Path(dir_okay=False), help="Outcome table to fit the prior on.")
@click.option("--strength", type=click.FloatRange(min=0), default=None,
              help="Pseudo-rewards per arm [default: chosen by empirical Bayes over the table's tasks].")
@click.option("--zoo", "zoo_table", is_flag=True, help="Use the embedded zoo's table, shipped with simmerge.")
@click.option("--replace", is_flag=True, help="Swap out a prior loaded before.")
@click.option("--clear", is_flag=True, help="Take the loaded prior back out.")
@db_option
@json_option
def fit_cmd(table_path, strength, zoo_table, replace, clear, db_path, as_json):
    """Load an intercept-only prior fitted on an outcome table into the live posteriors.

    Each arm starts from the table's mean reward for it, worth STRENGTH rewards: live rewards
    outweigh it quickly. Recorded in the database, so `bandit rebuild` stays exact.
    """
    from bandit import render
    from bandit.errors import BanditError
    from bandit.offline.prior import prior_from_outcomes

    if zoo_table:
        if table_path is not None:
            raise BanditError("give either --outcomes TABLE or --zoo")
        from zoo.outcomes import PRIOR_TABLE

        table_path = str(PRIOR_TABLE)
    if clear == (table_path is not None):
        raise BanditError("give either --outcomes TABLE (or --zoo) or --clear")
    if clear and (strength is not None or replace):
        raise BanditError("--strength and --replace go with --outcomes")
    prior = prior_from_outcomes(table_path, strength) if table_path else None  # a bad table fails first
    svc = _service(db_path)
    if clear:
        gone = svc.clear_prior()
        if as_json:
            emit_json({"cleared": gone})
        else:
            click.echo("no prior was loaded" if gone is None else f"prior from {gone['prior']['source']} cleared "
                       f"({len(gone['applied'])} arms)")
        return
    record = svc.fit_prior(prior, replace=replace)
    if as_json:
        emit_json(record)
        return
    click.echo(render.fitted_prior(record))
    if record["policy"] and record["policy"]["name"] in ("hybrid", "vw"):
        click.echo(f"note: the live policy {record['policy']['name']} learns from the log and does not use the prior; "
                   "pooled, linucb, lints and egreedy do", err=True)


@main.group()
def policy():
    """Show or choose the live policy."""


@policy.command("set")
@click.argument("name")
@click.argument("params", nargs=-1)
@db_option
@json_option
def policy_set(name, params, db_path, as_json):
    """Make NAME (pooled, linucb, hybrid, lints, egreedy, random, fixed, vw) the live policy, with K=V settings."""
    from bandit import render
    from bandit.errors import BanditError
    from bandit.inputs import parse_params
    from bandit.policies.registry import parse_policy_spec

    if ":" in name:  # the replay spelling, e.g. fixed:ties or lints:v=0.2
        spec = parse_policy_spec(name)
        name, extra = spec["name"], spec["params"]
    else:
        extra = {}
    values = parse_params(params)
    for k in extra:
        if k in values:
            raise BanditError(f"parameter {k!r} given twice")
    info = _service(db_path).set_policy(name, {**extra, **values})
    emit_json(info) if as_json else click.echo(render.policy(info))


@policy.command("trials")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--budget", type=click.IntRange(min=1), default=None, metavar="M",
              help="Trial only the M most promising actions (default: all).")
@db_option
@json_option
def policy_trials(switch, budget, db_path, as_json):
    """Turn trial merges on or off for every `propose --models` of this database."""
    from bandit import render

    out = _service(db_path).set_trial_merges(switch == "on", budget)
    emit_json(out) if as_json else click.echo(render.trial_setting(out))


@policy.command("show")
@db_option
@json_option
def policy_show(db_path, as_json):
    """The live policy and its settings."""
    from bandit import render

    info = _service(db_path).show_policy()
    emit_json(info) if as_json else click.echo(render.policy(info))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="File to write (- for standard output).")
@click.option("--rewarded-only", is_flag=True, help="Only events that have a reward.")
@db_option
def export(fmt, output, rewarded_only, db_path):
    """Write the events as a decision log (see bandit/offline/decision_log.py for the layout)."""
    from bandit import render

    n = _service(db_path, create=False).export(output, rewarded_only, fmt, stream=sys.stdout)
    if output != "-":
        click.echo(render.exported(n, output), err=True)



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
@click.option("--size", type=click.Choice(["tiny", "small", "strong", "reduced"]), default="tiny", show_default=True,
              help="tiny: ~0.9M params, minutes on a CPU; small: larger and slower; strong: 8 tasks, longer "
                   "fine-tunes, another seed (a second family to measure on); reduced: 3 tasks, for tests.")
@json_option
def zoo_build(directory, size, as_json) -> None:
    """Build the zoo, or complete it: models already built with the same recipe are reused."""
    from bandit import render
    from zoo.build import build_zoo

    built = build_zoo(directory, size=size, progress=False if as_json else None)
    emit_json(render.zoo_built_payload(built)) if as_json else click.echo(render.zoo_built(built))


@main.command("eval")
@click.argument("model_dir", type=click.Path())
@click.option("--task", "tasks", multiple=True, required=True,
              help="Task to score on; repeat it or separate with commas; 'all' = every task.")
@json_option
def eval_cmd(model_dir, tasks, as_json) -> None:
    """Exact-match accuracy of MODEL_DIR on each task's held-out set."""
    from bandit import render
    from zoo.evaluate import evaluate_folder

    accuracy = evaluate_folder(model_dir, list(tasks))
    emit_json({"model": model_dir, "accuracy": accuracy}) if as_json else click.echo(render.evaluation(accuracy))


def _zoo_progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="merge", dynamic_ncols=True, leave=False)


def _load_or_build_zoo(directory, size: str, quiet: bool):
    from zoo.errors import ZooError
    from zoo.manifest import load_zoo

    try:
        return load_zoo(directory, size=size)
    except ZooError:
        from zoo.build import build_zoo

        if not quiet:
            click.echo(f"building the {size} zoo (once; it is cached) ...", err=True)
        return build_zoo(directory, size=size, progress=None if not quiet else False)


def _outcomes(z, out, device, structural_only, quiet):
    from bandit.arms import DEFAULT_ARMS
    from zoo.outcomes import build_outcomes

    bar = _zoo_progress(len(z.pairs()) * len(DEFAULT_ARMS), not quiet and sys.stderr.isatty(), "outcome table")
    try:
        return build_outcomes(z, out, device=device, structural_only=structural_only,
                              on_cell=lambda *cell: bar.update(1))
    finally:
        bar.close()


@zoo_group.command("outcomes")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Outcome table to write (.csv or .jsonl).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help="Zoo folder.")
@click.option("--size", type=click.Choice(["tiny", "small", "strong", "reduced"]), default="tiny", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--structural-only", is_flag=True, help="Weights-only features in the f: columns.")
@json_option
def zoo_outcomes(out, directory, size, device, structural_only, as_json):
    """Merge every ordered expert pair with every default arm, evaluate, write the outcome table."""
    from bandit import render

    z = _load_or_build_zoo(directory, size, as_json)
    s = _outcomes(z, out, device, structural_only, as_json)
    if as_json:
        emit_json(s)
    else:
        click.echo(render.outcome_summary(s))
        click.echo(f"written to {out}")


@main.command()
@click.option("--rounds", type=click.IntRange(1), default=60, show_default=True, help="Merge requests to run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the request stream and the policy.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help="Zoo folder.")
@click.option("--size", type=click.Choice(["tiny", "small", "strong", "reduced"]), default="tiny", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Learning curve PNG [default: next to the database].")
@click.option("--policy", "policy_name", default="pooled", show_default=True,
              help="Live policy for the demo's database (pooled, linucb, lints, hybrid, vw, ...).")
@click.option("--trial-merges/--no-trial-merges", default=True, show_default=True,
              help="Propose with trial-merge signals; the other tier is replayed from the outcome table.")
@db_option
@json_option
def demo(rounds, seed, directory, size, device, plot, policy_name, trial_merges, db_path, as_json):
    """The whole loop on the embedded zoo: propose, merge, evaluate, reward, for ROUNDS requests.

    Builds the zoo and its outcome table first when they are missing (cached afterwards).
    Ctrl-C stops cleanly; every finished round stays in the database.
    """
    from bandit import render
    from zoo.demo import run_demo

    z = _load_or_build_zoo(directory, size, as_json)
    table = _outcomes(z, str(z.root / "outcomes.csv"), device, False, as_json)
    if not as_json:
        click.echo(render.outcome_summary(table))
        click.echo("")
        click.echo(render.demo_header())
    plot = plot or os.path.splitext(db_path)[0] + "-learning-curve.png"

    def show(r):
        if not as_json:
            click.echo(render.demo_round(r))

    s = run_demo(z, table, db_path, rounds=rounds, seed=seed, device=device, plot=plot, on_round=show,
                 policy=policy_name, trial_merges=trial_merges)
    emit_json(s) if as_json else click.echo(render.demo_summary(s, db_path))


if __name__ == "__main__":
    main()
