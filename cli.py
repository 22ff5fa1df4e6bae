"""The `bandit` command: a thin click shell over the library.

Each command parses its options, calls one library function and prints text, or JSON
with --json. Errors a user can cause end in one line on stderr and exit code 1; click's
own usage errors exit 2.
"""
from __future__ import annotations

import json
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
        except KeyboardInterrupt:
            # Work is transactional (database) or atomic (merges, caches): nothing half-done stays.
            click.echo("interrupted", err=True)
            ctx.exit(130)


def db_option(f):
    return click.option(
        "--db", "db_path", envvar="BANDIT_DB", default="bandit.db", show_default=True,
        type=click.Path(dir_okay=False), help="SQLite database (default: $BANDIT_DB or ./bandit.db).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


class GreedyOption(click.Option):
    """An option that takes every value up to the next option: `--models A B C`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            original = opt.process

            def process(value, state, _original=original):
                # `value` is the first word; take the following ones until an option.
                _original(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    _original(state.rargs.pop(0), state)

            opt.process = process
        return result


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
def _service(db_path: str):
    from bandit.service import Service

    return Service(db_path)


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "(defaults)"


def _merge_event(svc, event_id: int, out_dir: str, device: str, quiet: bool, **engine_options) -> dict:
    result = svc.merge_event(event_id, out_dir, device=device, progress=False if quiet else None, **engine_options)
    if not quiet:
        click.echo(f"merged {result.tensors} tensors with {result.operator} into {result.path} "
                   f"({result.seconds:.1f} s on {result.device})")
    return result.to_dict()


def _parse_context(features: tuple[str, ...], context_json: str | None) -> dict[str, float]:
    from bandit.errors import BanditError

    context: dict[str, float] = {}
    if context_json:
        try:
            loaded = json.loads(context_json)
        except json.JSONDecodeError as e:
            raise BanditError(f"--context-json is not valid JSON ({e.msg} at position {e.pos})") from None
        if not isinstance(loaded, dict):
            raise BanditError("--context-json must be a JSON object of name: number")
        context.update(loaded)
    for item in features:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BanditError(f"bad --feature {item!r}: write it as NAME=VALUE")
        try:
            context[name.strip()] = float(value)
        except ValueError:
            raise BanditError(f"feature {name.strip()!r}: {value!r} is not a number") from None
    return context


@main.command()
@click.option("--task", "-t", required=True, help="Task the merge is for (created on first use).")
@click.option("--models", "-m", "models", cls=GreedyOption, metavar="A B [C ...]",
              help="Registered fine-tunes to choose a pair from (features are computed and cached).")
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
@click.option("--seed", type=int, help="Seed for tie-breaking and sampling (logged either way).")
@db_option
@json_option
def propose(task, models, features, context_json, structural_only, device, merge_to, trial_merges, trial_budget,
            seed, db_path, as_json):
    """Choose a merge operator (an arm) for TASK and log the decision as an event.

    With --models, every ordered pair of the models is a candidate: the policy picks the
    operator, the pair and its order. Without, the context comes from --feature/--context-json.
    """
    from bandit.errors import BanditError

    svc = _service(db_path)
    if models:
        if features or context_json:
            raise BanditError("give either --models (features are computed) or --feature/--context-json, not both")
        p = svc.propose_merge(task, models, seed=seed, structural_only=structural_only, device=device,
                              progress=not as_json and sys.stderr.isatty(), trial_merges=trial_merges,
                              trial_budget=trial_budget, keep_merge=bool(merge_to))
    else:
        if merge_to:
            raise BanditError("--merge-to needs --models: there is nothing to merge without models")
        if trial_merges or trial_budget:
            raise BanditError("--trial-merges needs --models: trial merges merge the candidate pairs")
        p = svc.propose(task, _parse_context(features, context_json), seed=seed)
    if as_json:
        out = p.to_dict()
        if merge_to:
            out["merged"] = _merge_event(svc, p.event_id, merge_to, device, quiet=True)
        emit_json(out)
        return
    pair = f"  merge {p.model_a} + {p.model_b}" if p.model_a else ""
    click.echo(f"event {p.event_id}: {p.arm}  ({p.operator} {_fmt_params(p.params)}){pair}")
    click.echo(f"  task {p.task}   policy {p.policy}   p={p.prob:.3f}")
    click.echo(f"  predicted reward {p.predicted:.4f}   bonus {p.bonus:.4f}")
    if p.trial is not None:
        click.echo(f"  trial merges: {p.trial['merges']} in {p.trial['seconds']:.1f} s"
                   + (f" (budget {p.trial['budget']})" if p.trial["budget"] else ""))
    if merge_to:
        _merge_event(svc, p.event_id, merge_to, device, quiet=False)
    elif p.model_a:
        click.echo(f"  merge it with: bandit merge --event {p.event_id} --out DIR")
    click.echo(f"  report the result with: bandit reward {p.event_id} VALUE")


@main.command()
@click.argument("event_id")
@click.argument("value")
@db_option
@json_option
def reward(event_id, value, db_path, as_json):
    """Record the REWARD of event EVENT_ID and update its arm's posterior."""
    # Deliberately lean imports: no numpy, no sqlite-utils, so this starts fast.
    from bandit.service.reward import record_reward
    from store import Store

    # A reward belongs to an event of an existing database: never create one on a typo.
    with Store(db_path, create=False) as store:
        out = record_reward(store, event_id, value)
    if as_json:
        emit_json({"event_id": out.event_id, "arm": out.arm, "reward": out.value, "duplicate": out.duplicate,
                   "pulls": out.pulls})
    elif out.duplicate:
        click.echo(f"event {out.event_id}: reward {out.value:g} was recorded already; nothing changed")
    else:
        click.echo(f"event {out.event_id}: reward {out.value:g} recorded for {out.arm} ({out.pulls} rewards)")


@main.group()
def arms():
    """List, add and retire arms (merge operators with parameters)."""


@arms.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retired arms.")
@db_option
@json_option
def arms_list(show_all, db_path, as_json):
    """The arms and their parameters."""
    rows = [a for a in _service(db_path).arms() if show_all or a["status"] == "active"]
    if as_json:
        emit_json(rows)
        return
    for a in rows:
        extra = f"  (warm-started from {a['warm_start_from']})" if a["warm_start_from"] else ""
        status = "" if a["status"] == "active" else f"  [{a['status']}]"
        click.echo(f"{a['name']:<20} {a['operator']:<18} {_fmt_params(a['params'])}{extra}{status}")


@arms.command("add")
@click.argument("name")
@click.option("--operator", "-o", required=True, help="Merge operator (see `bandit operators`).")
@click.option("--param", "-p", "params", multiple=True, metavar="K=V", help="Operator parameter (repeatable).")
@click.option("--warm-start-from", metavar="ARM", help="Start from a shrunk copy of this arm's posterior.")
@click.option("--shrink", type=float, default=0.1, show_default=True, help="Share of the donor's evidence kept.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION",
              help="Load an operator from a module first (operators published through the "
                   "`simmerge.operators` entry point need nothing).")
@db_option
@json_option
def arms_add(name, operator, params, warm_start_from, shrink, plugins, db_path, as_json):
    """Add arm NAME: proposable at once, nothing else retrained."""
    from bandit.arms import parse_params
    from merging.registry import load_plugin

    for ref in plugins:
        load_plugin(ref)
    arm = _service(db_path).add_arm(name, operator, parse_params(params), warm_start_from, shrink)
    if as_json:
        emit_json(arm)
    else:
        how = f"warm-started from {warm_start_from} (shrink {shrink:g})" if warm_start_from else "from the prior"
        click.echo(f"added arm {name}: {operator} {_fmt_params(arm['params'])}, {how}")


@arms.command("retire")
@click.argument("name")
@db_option
@json_option
def arms_retire(name, db_path, as_json):
    """Stop proposing arm NAME; its history stays."""
    _service(db_path).retire_arm(name)
    if as_json:
        emit_json({"name": name, "status": "retired"})
    else:
        click.echo(f"retired arm {name}")


@main.group()
def tasks():
    """Add and list tasks (a name plus optional unlabeled probe texts)."""


@tasks.command("add")
@click.argument("name")
@click.option("--probes", type=click.Path(exists=True, dir_okay=False), help="Probe texts, one per line.")
@db_option
@json_option
def tasks_add(name, probes, db_path, as_json):
    """Add task NAME (or replace its probes)."""
    texts = None
    if probes:
        with open(probes, encoding="utf-8") as f:
            texts = f.read().splitlines()
    new = _service(db_path).add_task(name, texts)
    if as_json:
        emit_json({"name": name, "new": new, "probes": len([t for t in texts or [] if t.strip()])})
    else:
        what = "added" if new else "updated"
        click.echo(f"{what} task {name}" + (f" with {len([t for t in texts if t.strip()])} probes" if texts else ""))


@tasks.command("list")
@db_option
@json_option
def tasks_list(db_path, as_json):
    """The tasks, their probe counts and events."""
    rows = _service(db_path).store.tasks()
    if as_json:
        emit_json(rows)
        return
    for t in rows:
        click.echo(f"{t['name']:<24} probes {t['n_probes']:>4}   events {t['events']:>5}")


@main.command()
@db_option
@json_option
def stats(db_path, as_json):
    """Per arm: proposals, rewards, mean reward, posterior mean at the average context, share."""
    rows = _service(db_path).stats()
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'arm':<20} {'proposals':>9} {'pulls':>6} {'mean':>8} {'post.mean':>9} {'share':>6}")
    for r in rows:
        mean = "-" if r["mean_reward"] is None else f"{r['mean_reward']:.4f}"
        post = "-" if r["posterior_mean"] is None else f"{r['posterior_mean']:.4f}"
        flag = "" if r["status"] == "active" else f"  [{r['status']}]"
        click.echo(f"{r['arm']:<20} {r['proposals']:>9} {r['pulls']:>6} {mean:>8} {post:>9} {r['share']:>6.1%}{flag}")


@main.command()
@click.option("--check", is_flag=True, help="Only compare with the live posteriors; change nothing.")
@db_option
@json_option
def rebuild(check, db_path, as_json):
    """Recompute every posterior from the events and rewards."""
    rep = _service(db_path).rebuild(check=check)
    if as_json:
        emit_json({"arms": rep.arms, "rewards": rep.rewards, "max_abs_diff": rep.max_abs_diff,
                   "mismatched": rep.mismatched, "written": rep.written, "clean": rep.clean})
    else:
        verdict = "match the live posteriors" if rep.clean else f"DIFFER for {', '.join(rep.mismatched)}"
        click.echo(f"{rep.arms} arms from {rep.rewards} rewards: recomputed posteriors {verdict} "
                   f"(max |diff| {rep.max_abs_diff:.3g})" + ("; written" if rep.written else ""))
    if check and not rep.clean:
        sys.exit(1)



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
              help="Recipe file (merge YAML layout or JSON) instead of --operator/--model.")
@click.option("--event", "event_id", help="Run the merge that this proposal (event id) chose.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (must not exist or be empty).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default=None, help="Working dtype of the recipe [default: float32]; math is float32 or float64.")
@click.option("--out-dtype", default=None, help="Output dtype [default: the base's].")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 5GB or 500MB.")
@click.option("--seed", type=int, default=None, help="Seed of random operators (dare_*, della) [default: 0].")
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
    from merging.engine import run_merge
    from merging.recipe import Recipe, parse_param_args
    from merging.registry import load_plugin

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
    from bandit.service.catalog import add_model
    from store import Store

    texts = None
    if probes:
        with open(probes, encoding="utf-8") as f:
            texts = f.read().splitlines()
    with Store(db_path) as store:
        row = add_model(store, name, path, base, texts)
    if as_json:
        emit_json(row)
    else:
        of = f" (fine-tune of {base})" if base else ""
        click.echo(f"registered {name}{of}: {row['tensors']} tensors, {row['bytes'] / 1e6:.1f} MB, "
                   f"fingerprint {row['fingerprint'][:12]}" + (f", {row['probes']} probes" if "probes" in row else ""))


@main.command("features")
@click.argument("model_a")
@click.argument("model_b")
@click.option("--task", "-t", help="Task whose probe texts to use (default: the built-in generic probes).")
@click.option("--structural-only", is_flag=True, help="Weights-only features (no forward passes).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@db_option
@json_option
def features_cmd(model_a, model_b, task, structural_only, device, db_path, as_json):
    """Similarity features of the ordered pair MODEL_A, MODEL_B (registered models), cached."""
    from bandit.service.context import pair_features, task_probes
    from bandit.errors import BanditError
    from store import Store

    with Store(db_path) as store:
        probes = None
        if task is not None and not structural_only:
            if store.task(task) is None:
                raise BanditError(f"unknown task {task!r}: add it with `bandit tasks add {task} --probes FILE`")
            probes = task_probes(store, task)
        pf = pair_features(store, model_a, model_b, probes, structural_only=structural_only, device=device,
                           progress=not as_json and sys.stderr.isatty())
    if as_json:
        emit_json({"model_a": model_a, "model_b": model_b, "cached": pf.cached, "features": pf.features})
        return
    click.echo(f"{model_a} vs {model_b} ({'cached' if pf.cached else 'computed'}):")
    for k, v in pf.features.items():
        click.echo(f"  {k:<22} {v: .6f}")


@models.command("list")
@db_option
@json_option
def models_list(db_path, as_json):
    """The registered models."""
    from store import Store

    with Store(db_path) as store:
        rows = store.models()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<20} base {r['base'] or '-':<14} {r['path']}")



# ---------------------------------------------------------------------------------------
# replay, policies, export
# ---------------------------------------------------------------------------------------
DEFAULT_REPLAY_POLICIES = ("linucb", "hybrid", "lints", "egreedy", "vw", "random")


def _ci(x: dict, fmt: str = "{:.3f}") -> str:
    if x.get("mean", x.get("value")) is None:
        return "-"
    v = x.get("mean", x.get("value"))
    return f"{fmt.format(v)} [{fmt.format(x['low'])}, {fmt.format(x['high'])}]"


def _progress_bar(total: int, quiet: bool):
    """A tqdm bar on a terminal; nothing when piped or with --json."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", file=sys.stderr, leave=False)
    return bar, bar.update


def _print_replay(rep: dict) -> None:
    click.echo(f"{rep['rows']} rows, {len(rep['arms'])} arms, {rep['seeds']} seeds; "
               f"best fixed arm {rep['best_fixed_arm']} (mean {rep['best_fixed_mean']:.4f}), "
               f"oracle mean {rep['oracle_mean']:.4f}")
    click.echo("mean [95 % interval over seeds]")
    head = f"{'policy':<26} {'mean reward':<26} {'regret':<28} {'gap closure':<26} {'gap closure, last half':<26}"
    click.echo(head)
    for p in rep["policies"]:
        click.echo(f"{p['policy']:<26} {_ci(p['mean_reward'], '{:.4f}'):<26} {_ci(p['regret'], '{:.1f}'):<28} "
                   f"{_ci(p['gap_closure']):<26} {_ci(p['gap_closure_last_half']):<26}")
    if rep["policies"] and "add_arm" in rep["policies"][0]:
        a0 = rep["policies"][0]["add_arm"]
        click.echo(f"\narm {a0['arm']} joins after round {a0['round']}; fair rate (share of later rows it is best on) "
                   f"{a0['fair_rate']['mean']:.3f}")
        click.echo(f"{'policy':<26} {'rounds to fair rate':<22} {'share after':<26} {'regret/round before':<26} "
                   f"{'regret/round after':<26}")
        for p in rep["policies"]:
            a = p["add_arm"]
            r = a["rounds_to_fair_rate"]
            reach = "never" if r["median"] is None else f"{r['median']:.0f} ({r['reached']}/{r['seeds']} seeds)"
            click.echo(f"{p['policy']:<26} {reach:<22} {_ci(a['share_after']):<26} "
                       f"{_ci(a['regret_per_round_before'], '{:.4f}'):<26} {_ci(a['regret_per_round_after'], '{:.4f}'):<26}")
    if rep["policies"] and "new_task" in rep["policies"][0]:
        t0 = rep["policies"][0]["new_task"]
        click.echo(f"\ntask {t0['task']} starts at round {t0['round']}; regret per round on its first "
                   f"{t0['first_rows']} rows vs the other tasks' rows in the same rounds")
        click.echo(f"{'policy':<26} {'new task, first rows':<26} {'other tasks, same rounds':<26} {'new task, later rows':<26}")
        for p in rep["policies"]:
            t = p["new_task"]
            click.echo(f"{p['policy']:<26} {_ci(t['regret_per_round_first_rows'], '{:.4f}'):<26} "
                       f"{_ci(t['regret_per_round_other_tasks_same_rounds'], '{:.4f}'):<26} "
                       f"{_ci(t['regret_per_round_later_rows'], '{:.4f}'):<26}")
    if rep.get("plot"):
        click.echo(f"\nregret curves written to {rep['plot']}")


def _print_logged(rep: dict) -> None:
    click.echo(f"decision log {rep['source']}")
    for t in rep["targets"]:
        click.echo(f"\ntarget {t['policy']}: {t['rewarded']} rewarded of {t['events']} events, logged mean reward "
                   f"{t['logged_mean_reward']:.4f}, effective sample size {t['effective_sample_size']:.1f}")
        click.echo(f"{'estimator':<10} {'value [95 % bootstrap interval]':<34} note")
        for name, e in t["estimators"].items():
            note = ""
            if name == "replay":
                note = f"{e['logging']}: {e['matched']} events matched of {e['kept']} kept"
            click.echo(f"{name:<10} {_ci(e, '{:.4f}'):<34} {note}")


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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --logged's randomness.")
@db_option
@json_option
def replay(outcomes, logged, policies, seeds, add_arm_at, new_task_at, plot, jobs, bootstrap, seed, db_path, as_json):
    """Evaluate policies offline: on an outcome table, or on a decision log."""
    # The policies' matrices are small; threaded BLAS only makes the replay processes fight
    # over the cores. Effective when numpy is not loaded yet, as in a fresh `bandit` process.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from bandit.errors import BanditError

    if (outcomes is None) == (logged is None):
        raise BanditError("give exactly one of --outcomes FILE or --logged [FILE]")
    policies = list(policies) or list(DEFAULT_REPLAY_POLICIES)
    if logged is not None:
        if add_arm_at or new_task_at or plot:
            raise BanditError("--add-arm-at, --new-task-at and --plot apply to --outcomes only")
        from bandit.offline.ope import evaluate_log_source

        store = None
        if not logged:
            if not os.path.exists(db_path):
                raise BanditError(f"{db_path}: no such database (give --db, or a decision log file)")
            from store import Store

            store = Store(db_path)
        rep = evaluate_log_source(policies, logged or None, store, seed=seed, bootstrap=bootstrap)
        emit_json(rep) if as_json else _print_logged(rep)
        return
    from bandit.offline.replay import AddArm, NewTask, parse_scenario_arg, replay_outcomes

    add_arm = AddArm(*parse_scenario_arg(add_arm_at, "--add-arm-at")) if add_arm_at else None
    new_task = NewTask(*parse_scenario_arg(new_task_at, "--new-task-at")) if new_task_at else None
    known = None
    if os.path.exists(db_path):  # arms registered there describe the table's arms best
        from bandit.policies.base import ArmSpec
        from store import Store

        with Store(db_path) as st:
            known = {a["name"]: ArmSpec(a["name"], a["operator"], a["params"]) for a in st.arms()}
    bar, tick = _progress_bar(len(policies) * max(seeds, 0), as_json)
    try:
        rep = replay_outcomes(outcomes, policies, seeds, add_arm, new_task, known, jobs, plot, tick)
    finally:
        if bar is not None:
            bar.close()
    emit_json(rep) if as_json else _print_replay(rep)


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
    from bandit.arms import parse_params
    from bandit.policies.registry import parse_policy_spec

    if ":" in name:  # the replay spelling, e.g. fixed:ties or lints:v=0.2
        spec = parse_policy_spec(name)
        name, extra = spec["name"], spec["params"]
    else:
        extra = {}
    values = parse_params(params)
    for k in extra:
        if k in values:
            from bandit.errors import BanditError

            raise BanditError(f"parameter {k!r} given twice")
    out = _service(db_path).set_policy(name, {**extra, **values})
    if as_json:
        emit_json(out)
    else:
        click.echo(f"live policy: {out['label']}  ({_fmt_params(out['effective'])})")


@policy.command("trials")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--budget", type=click.IntRange(min=1), default=None, metavar="M",
              help="Trial only the M most promising actions (default: all).")
@db_option
@json_option
def policy_trials(switch, budget, db_path, as_json):
    """Turn trial merges on or off for every `propose --models` of this database."""
    out = _service(db_path).set_trial_merges(switch == "on", budget)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"trial merges {'on' if out['on'] else 'off'}"
                   + (f", budget {out['budget']}" if out["on"] and out["budget"] else ""))


@policy.command("show")
@db_option
@json_option
def policy_show(db_path, as_json):
    """The live policy and its settings."""
    out = _service(db_path).show_policy()
    if as_json:
        emit_json(out)
    else:
        click.echo(f"live policy: {out['label']}  ({_fmt_params(out['effective'])})")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="File to write (- for standard output).")
@click.option("--rewarded-only", is_flag=True, help="Only events that have a reward.")
@db_option
def export(fmt, output, rewarded_only, db_path):
    """Write the events as a decision log (see bandit/decision_log.py for the layout)."""
    from bandit.offline.decision_log import export_events
    from bandit.errors import BanditError
    from store import Store

    if not os.path.exists(db_path):
        raise BanditError(f"{db_path}: no such database")
    with Store(db_path) as store:
        if output == "-":
            n = export_events(store.events(rewarded_only=rewarded_only), sys.stdout, fmt)
        else:
            tmp = output + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                n = export_events(store.events(rewarded_only=rewarded_only), f, fmt)
            os.replace(tmp, output)
    if output != "-":
        click.echo(f"wrote {n} events to {output}", err=True)



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


def _outcome_report(s) -> str:
    lines = [f"{s.rows} ordered expert pairs x {len(s.arms)} arms "
             f"({s.merges_run} merges run, {s.merges_cached} from the cache)"]
    lines.append(f"{'arm':<18} {'mean reward':>11} {'best on':>8}")
    for arm in sorted(s.arms, key=lambda a: -s.arm_means[a]):
        lines.append(f"{arm:<18} {s.arm_means[arm]:>11.4f} {s.wins[arm]:>8}")
    lines.append(f"oracle (best arm per pair)  {s.oracle_mean:.4f}")
    lines.append(f"best fixed arm              {s.best_fixed_arm} {s.best_fixed_mean:.4f}")
    lines.append(f"gap a bandit can close      {s.gap:.4f}")
    return "\n".join(lines)


@zoo_group.command("outcomes")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Outcome table to write (.csv or .jsonl).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help="Zoo folder.")
@click.option("--size", type=click.Choice(["tiny", "small", "strong", "reduced"]), default="tiny", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--structural-only", is_flag=True, help="Weights-only features in the f: columns.")
@json_option
def zoo_outcomes(out, directory, size, device, structural_only, as_json):
    """Merge every ordered expert pair with every default arm, evaluate, write the outcome table."""
    z = _load_or_build_zoo(directory, size, as_json)
    s = _outcomes(z, out, device, structural_only, as_json)
    if as_json:
        emit_json(s.to_dict())
    else:
        click.echo(_outcome_report(s))
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
    import os

    from zoo.demo import run_demo

    z = _load_or_build_zoo(directory, size, as_json)
    table = _outcomes(z, str(z.root / "outcomes.csv"), device, False, as_json)
    if not as_json:
        click.echo(_outcome_report(table))
        click.echo("")
        click.echo(f"{'round':>5}  {'merge (A, B)':<28} {'arm':<17} {'reward':>6} {'mean':>6}")
    plot = plot or os.path.splitext(db_path)[0] + "-learning-curve.png"

    def show(r):
        if as_json:
            return
        pair = f"{r.model_a.removeprefix('expert-')}, {r.model_b.removeprefix('expert-')}"
        click.echo(f"{r.round:>5}  {pair:<28} {r.arm:<17} {r.reward:>6.3f} {r.running_mean:>6.3f}")

    s = run_demo(z, table, db_path, rounds=rounds, seed=seed, device=device, plot=plot, on_round=show,
                 policy=policy_name, trial_merges=trial_merges)
    if as_json:
        emit_json(s.to_dict())
        return
    if s.interrupted:
        click.echo(f"interrupted after {s.rounds} rounds; all of them are in {db_path}")
    n = max(s.rounds, 1)
    click.echo("")
    click.echo(f"cumulative reward over {s.rounds} rounds (mean per round):")
    tier = f"{s.policy}, {'with' if s.trial_merges else 'without'} trial merges"
    click.echo(f"  bandit          {s.bandit:8.3f}  ({s.bandit / n:.4f})  [{tier}, live]")
    if s.other_tier is not None:
        click.echo(f"  other tier      {s.other_tier:8.3f}  ({s.other_tier / n:.4f})  [{s.other_tier_label}]")
    click.echo(f"  best fixed arm  {s.best_fixed:8.3f}  ({s.best_fixed / n:.4f})  [{s.best_fixed_arm}, chosen in hindsight]")
    click.echo(f"  random arm      {s.random:8.3f}  ({s.random / n:.4f})")
    click.echo(f"  oracle          {s.oracle:8.3f}  ({s.oracle / n:.4f})")
    gap = s.oracle - s.best_fixed
    if gap > 0:
        click.echo(f"  gap closed vs best fixed arm: {(s.bandit - s.best_fixed) / gap:+.1%} live"
                   + (f", {(s.other_tier - s.best_fixed) / gap:+.1%} {s.other_tier_label}" if s.other_tier is not None else ""))
    if s.trial_merges:
        click.echo(f"  trial merges: {s.trial_merges_run} run in {s.trial_seconds:.1f} s "
                   f"(the rest from the zoo's cache)")
    click.echo(f"  first half mean {s.first_half_mean:.4f}, second half mean {s.second_half_mean:.4f}")
    click.echo("  arms chosen: " + ", ".join(f"{a} {c}" for a, c in s.arm_counts.items()))
    if s.plot:
        click.echo(f"learning curve: {s.plot}")


def _accuracy_table(accuracy: dict, tasks: list[str]) -> str:
    width = max(len(m) for m in accuracy)
    lines = [" " * width + "  " + " ".join(f"{t[:8]:>8}" for t in tasks)]
    for model, row in accuracy.items():
        lines.append(f"{model:<{width}}  " + " ".join(f"{row[t]:8.3f}" for t in tasks))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
