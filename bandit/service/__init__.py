"""`Service`: the one door to a bandit database, for the CLI and the HTTP server alike.

Methods take plain values (parsed by `bandit.inputs` or checked here) and return plain
records (`bandit.service.records`, each with `to_dict()`); every failure a caller can cause
is a `BanditError` whose `kind` says what it was (invalid, not_found, conflict,
unavailable). Behind the door, one module per concern:

    live.py       the live policy, kept current; log cursor and shared snapshots
    proposals.py  scoring, sampling and logging a decision
    reward.py     recording a reward and updating its arm's posterior (no numpy)
    catalog.py    models, arms (and their λ), tasks
    context.py    similarity features of model pairs, cached
    rebuild.py    posteriors recomputed from the log, and checked
    stats.py      per-arm statistics

Only light modules are imported here, so `bandit reward` (a fresh process per call) runs
without numpy; the rest load on first use.
"""
from __future__ import annotations

import functools

from bandit.errors import BanditError, Conflict, InvalidInput, NotFound, Unavailable
from bandit.service.reward import RewardOutcome, record_reward
from store import Store, StoreError

__all__ = ["Service", "BanditError"]

_STORE_KINDS = {"conflict": Conflict, "not_found": NotFound}


def _one_error_family(method):
    """The store's errors leave the facade as BanditErrors of the same kind."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except StoreError as e:
            raise _STORE_KINDS.get(e.kind, Unavailable)(str(e)) from None

    return wrapper


class Service:
    """One database: propose, reward, arms, tasks, models, policy, stats, rebuild, export."""

    def __init__(self, store: Store | str = "bandit.db", *, create: bool = True):
        """`create=False`: the database must exist (a reward never creates one on a typo)."""
        try:
            self.store = store if isinstance(store, Store) else Store(store, create=create)
        except StoreError as e:
            raise _STORE_KINDS.get(e.kind, Unavailable)(str(e)) from None
        self._live = None
        self._kept_merge = (None, None)  # (event id, its trial merge in memory)
        self._known_tasks: set[str] = set()
        self._initialized = False
        if create:
            self._ready()

    def close(self) -> None:
        self.store.close()

    def _ready(self):
        if not self._initialized:
            from bandit.service.catalog import ensure_defaults

            _one_error_family(ensure_defaults)(self.store)
            self._initialized = True
        return self

    @property
    def live(self):
        if self._live is None:
            from bandit.service.live import LivePolicy

            self._ready()
            self._live = LivePolicy(self.store)
        return self._live

    # -- the loop ------------------------------------------------------------------------
    @_one_error_family
    def propose(self, task, contexts=None, candidates=None, seed=None, inputs=None, action_features=None):
        """Score every (candidate, arm) action, pick one from the policy's pmf, log the event.
        `action_features`: per candidate `{arm: {feature: value}}` (trial-merge signals)."""
        from bandit.service.proposals import propose

        return propose(self.live, task, contexts, candidates, seed, inputs, self._known_tasks, action_features)

    @_one_error_family
    def propose_merge(self, task, models, *, seed=None, structural_only=False, device="auto", progress=False,
                      trial_merges=None, trial_budget=None, keep_merge=False, trial_cache_dir=None):
        """Choose operator, order and pair for merging two of `models` (registered fine-tunes
        of one base) for `task`: features for every ordered pair (cached), then `propose`.

        With trial merges (None: the database's setting), every candidate action — or the
        `trial_budget` most promising by the pre-trial scores — is merged in memory and
        scored against the experts' own outputs; the signals are the actions' features.
        `keep_merge` keeps the chosen action's merge so `merge_event` writes it directly."""
        from bandit.service.catalog import check_task_name
        from bandit.service.proposals import merge_contexts, propose

        task = check_task_name(task)
        contexts, pairs, inputs = merge_contexts(self.store, task, models, structural_only=structural_only,
                                                 device=device, progress=progress)
        settings = self.trial_settings()
        if trial_merges is None:
            trial_merges = bool(settings.get("on"))
        if not trial_merges:
            return propose(self.live, task, contexts, pairs, seed, inputs, self._known_tasks)
        if trial_budget is None:
            trial_budget = settings.get("budget")
        from bandit.service.context import probe_cache_root
        from bandit.service.trials import trial_actions

        cache_dir = str(probe_cache_root(self.store)) if trial_cache_dir is None else trial_cache_dir
        report = trial_actions(self.store, self.live, task, pairs, contexts, inputs, device=device,
                               budget=trial_budget, keep=keep_merge, cache_dir=cache_dir)
        proposal = propose(self.live, task, contexts, pairs, seed, inputs, self._known_tasks, report.features)
        proposal.trial = report.to_dict()
        chosen = (pairs.index((proposal.model_a, proposal.model_b)), proposal.arm)
        self._kept_merge = (proposal.event_id, report.kept.get(chosen))
        proposal.trial["chosen_was_trialled"] = proposal.arm in report.features[chosen[0]]
        return proposal

    def trial_settings(self) -> dict:
        """Whether `propose --models` runs trial merges by default, and with which budget."""
        return self.store.get_setting("trial_merges") or {"on": False, "budget": None}

    @_one_error_family
    def set_trial_merges(self, on: bool, budget: int | None = None) -> dict:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise InvalidInput(f"trial budget must be a whole number >= 1, got {budget!r}")
        value = {"on": bool(on), "budget": budget}
        with self.store.transaction():
            self.store.set_setting("trial_merges", value)
        return value

    @_one_error_family
    def merge_event(self, event_id, out_dir, *, device="auto", progress=None, **engine_options):
        """Run the merge that event EVENT_ID proposed into out_dir (a merging.MergeResult);
        a merge this process already did in memory for it (trial merges) is written as is."""
        from bandit.inputs import parse_event_id
        from bandit.service.proposals import merge_event

        event_id = parse_event_id(event_id)
        kept_id, kept = self._kept_merge
        return merge_event(self.store, event_id, out_dir, device=device, progress=progress,
                           kept=kept if kept_id == event_id else None, **engine_options)

    @_one_error_family
    def reward(self, event_id, value) -> RewardOutcome:
        """Record a reward (the same value twice is a no-op); the in-memory posterior follows."""
        outcome = record_reward(self.store, event_id, value)
        if self._live is not None:
            self._live.after_reward(outcome)
        return outcome

    @_one_error_family
    def event(self, event_id) -> dict:
        """One logged event as stored (offered actions, pmf, choice, recipe) with its reward
        (None when none yet): a JSON-ready dict."""
        from bandit.inputs import parse_event_id

        event_id = parse_event_id(event_id)
        row = self.store.event(event_id)
        if row is None:
            raise NotFound(f"no event {event_id}")
        return row

    def policy(self):
        """The live policy object, current (for tests and in-process users)."""
        return self.live.current()

    # -- policy --------------------------------------------------------------------------
    @_one_error_family
    def set_policy(self, name: str, params: dict | None = None):
        """Choose the live policy. Its settings are checked by building it once; `fixed`
        must name an arm of this database. Events record which policy chose them."""
        from bandit.policies.linucb import RidgeArms
        from bandit.policies.registry import make_policy, policy_label
        from bandit.service.catalog import shift_lambda
        from bandit.service.records import PolicyInfo

        self._ready()
        params = dict(params or {})
        policy = make_policy(name, params)
        if name == "fixed" and self.store.arm(params.get("arm")) is None:
            raise NotFound(f"policy fixed: no arm named {params.get('arm')!r}")
        if policy.params().get("epsilon", 1.0) <= 0:
            # A live policy keeps every action's probability >= ε/K, so its log can be
            # evaluated offline; ε = 0 is for replay baselines only.
            raise InvalidInput(f"a live policy needs epsilon > 0 (every action keeps probability >= epsilon/K); "
                               f"for example: bandit policy set {name} epsilon=0.05"
                               + (f" arm={params.get('arm')}" if name == "fixed" else ""))
        settings = {"name": name, "params": params}
        self.live.prepare(settings)  # hybrid/vw: relearn the log once, here, and share it
        with self.store.transaction():
            if isinstance(policy, RidgeArms):
                shift_lambda(self.store, policy.lam)
            self.store.set_setting("policy", settings)
        return PolicyInfo(name, params, policy_label(settings), policy.params())

    @_one_error_family
    def show_policy(self):
        from bandit.policies.registry import make_policy, policy_label
        from bandit.service.live import policy_settings
        from bandit.service.records import PolicyInfo

        self._ready()
        settings = policy_settings(self.store)
        policy = make_policy(settings["name"], settings.get("params"))
        return PolicyInfo(settings["name"], settings.get("params", {}), policy_label(settings), policy.params())

    # -- catalog -------------------------------------------------------------------------
    @_one_error_family
    def arms(self, include_retired: bool = True):
        from bandit.service.catalog import list_arms
        from bandit.service.records import Arm

        self._ready()
        return [Arm(**a) for a in list_arms(self.store) if include_retired or a["status"] == "active"]

    @_one_error_family
    def add_arm(self, name, operator, params=None, warm_start_from=None, shrink=0.1):
        """A new arm, proposable at once (from the prior or a shrunk copy of a donor)."""
        from bandit.service.catalog import add_arm
        from bandit.service.records import Arm

        self._ready()
        params = dict(params or {})
        add_arm(self.store, name, operator, params, warm_start_from, shrink)
        return Arm(name, operator, params, "active", warm_start_from)

    @_one_error_family
    def retire_arm(self, name):
        from bandit.service.catalog import retire_arm

        retire_arm(self.store, name)
        return next(a for a in self.arms() if a.name == name)

    @_one_error_family
    def add_task(self, name, probes=None):
        from bandit.service.catalog import add_task
        from bandit.service.records import Task

        name, new, n_probes = add_task(self.store, name, probes)
        return Task(name, new, n_probes)

    @_one_error_family
    def tasks(self):
        from bandit.service.records import TaskRow

        return [TaskRow(**t) for t in self.store.tasks()]

    @_one_error_family
    def add_model(self, name, path, base=None, probes=None):
        """Register (or re-register) a checkpoint folder under NAME (headers only, no torch),
        with its own unlabeled probe texts (its domain, for trial merges) when given."""
        from bandit.service.catalog import add_model
        from bandit.service.records import Model

        return Model(**add_model(self.store, name, path, base, probes))

    @_one_error_family
    def models(self):
        from bandit.service.records import ModelRow

        return [ModelRow(**m) for m in self.store.models()]

    @_one_error_family
    def features(self, model_a, model_b, *, task=None, structural_only=False, device="auto", progress=False):
        """Similarity features of the ordered pair, from the cache or computed and cached."""
        from bandit.service.context import pair_features, task_probes
        from bandit.service.records import Features

        probes = None
        if task is not None and not structural_only:
            if self.store.task(task) is None:
                raise NotFound(f"unknown task {task!r}: add it with `bandit tasks add {task} --probes FILE`")
            probes = task_probes(self.store, task)
        pf = pair_features(self.store, model_a, model_b, probes, structural_only=structural_only, device=device,
                           progress=progress)
        return Features(model_a, model_b, pf.cached, pf.features)

    @_one_error_family
    def all_pair_features(self, models=None, *, task=None, structural_only=False, device="auto", progress=False,
                          memory_budget="1GB"):
        """Features of every ordered pair of `models` (default: each base's registered
        fine-tunes), the pairs not cached computed together: one read and one forward pass per
        model. `memory_budget` (bytes or '1GB') bounds one tensor of every model at once."""
        from bandit.service.context import catalog_features, catalogs, task_probes
        from bandit.service.records import Features
        from merging.errors import MergeError
        from merging.writer import parse_size

        try:
            budget = parse_size(memory_budget)
        except MergeError:
            raise InvalidInput(f"memory budget {memory_budget!r} not understood (e.g. 1GB, 512MB, 2GiB, or bytes)") from None
        probes = None
        if task is not None and not structural_only:
            if self.store.task(task) is None:
                raise NotFound(f"unknown task {task!r}: add it with `bandit tasks add {task} --probes FILE`")
            probes = task_probes(self.store, task)
        out = []
        for names in catalogs(self.store, models):
            pairs = catalog_features(self.store, names, probes, structural_only=structural_only, device=device,
                                     progress=progress, memory_budget=budget)
            out += [Features(pf.model_a, pf.model_b, pf.cached, pf.features) for pf in pairs.values()]
        return out

    def arm_specs(self) -> dict:
        """Every arm registered here as an ArmSpec (replay describes table arms by them)."""
        from bandit.policies.base import ArmSpec

        return {a["name"]: ArmSpec(a["name"], a["operator"], a["params"]) for a in self.store.arms()}

    # -- outcome tables and priors -------------------------------------------------------
    @_one_error_family
    def build_outcomes(self, models, evaluator, out, *, task=None, jobs=1, cache_path=None, structural_only=False,
                       device="auto", on_cell=None, task_of=None, key_of=None, arms=None, trial_merges=False,
                       trial_cache_dir=None, on_trial=None):
        """`bandit outcomes`: merge every ordered pair of `models` with every active arm (or
        `arms`), score each merge with `evaluator` (see `bandit.offline.build`), write the
        table to `out`. Pair features come from `task`'s probes (or `task_of(a, b)`'s, per
        pair), computed and cached here. Returns the table's summary with the merge counts.

        `trial_merges`: every row also gets every arm's trial-merge signals as `a:<arm>:<feature>`
        columns (each expert scored on its own probes, else the pair's task's; cached per action
        in `trial_cache_dir`, default the database's probe-output cache, like `propose
        --trial-merges`); `on_trial(a, b, arm, cached)` is called per action. The counts are
        under "trials"."""
        from bandit.offline.build import MERGE_SEED, build_table
        from bandit.offline.outcomes import read_outcomes, summarize_table
        from bandit.service.catalog import model_row
        from bandit.service.context import common_base, pair_features, task_probes

        if task is not None and self.store.task(task) is None:
            raise NotFound(f"unknown task {task!r}: add it with `bandit tasks add {task} --probes FILE`")
        models = list(models)
        dupes = sorted({m for m in models if models.count(m) > 1})
        if dupes:
            raise InvalidInput(f"--models lists {dupes[0]!r} twice")
        base = common_base(self.store, models) if len(models) >= 2 else None
        paths = {m: model_row(self.store, m)["path"] for m in models}
        if arms is None:
            specs = self.arm_specs()
            arms = [specs[a["name"]] for a in self.store.arms() if a["status"] == "active"]
        fingerprints: dict[str, str] = {}

        def features_of(a, b, pair_task):
            probes = None if structural_only else task_probes(self.store, pair_task)
            return pair_features(self.store, a, b, probes, structural_only=structural_only, device=device,
                                 fingerprints=fingerprints).features

        task_of = task_of or (lambda a, b: task or "default")
        trials = None
        if trial_merges and base is not None and arms:
            from bandit.service.context import probe_cache_root
            from bandit.service.trials import CatalogTrials

            cache_dir = str(probe_cache_root(self.store)) if trial_cache_dir is None else trial_cache_dir
            trials = CatalogTrials(self.store, base["path"], paths, arms, task_of, device=device,
                                   cache_dir=cache_dir, seed=MERGE_SEED, on_action=on_trial)
            trials.check_probes([(a, b) for a in models for b in models if a != b])
        built = build_table(paths, base["path"] if base else "", arms, evaluator,
                            cache_path or f"{out}.cache.json", features_of,
                            task_of=task_of, out=out, jobs=jobs, device=device,
                            key_of=key_of, on_cell=on_cell, action_features_of=trials)
        summary = summarize_table(read_outcomes(out)).to_dict() if out is not None else None
        rep = {**(summary or {}), "path": None if out is None else str(out), "merges_run": built.merges_run,
               "merges_cached": built.merges_cached, "records": built.records}
        if trials is not None:
            rep["trials"] = trials.to_dict()
        return rep

    @_one_error_family
    def fit_prior(self, prior, replace: bool = False) -> dict:
        """Load a prior fitted on an outcome table into the ridge posteriors (`bandit fit`)."""
        from bandit.service.catalog import current_lambda
        from bandit.service.prior import load_prior

        self._ready()
        record = load_prior(self.store, prior, current_lambda(self.store), replace=replace)
        if self._live is not None:
            self._live.forget()
        return {**record, "policy": self.store.get_setting("policy")}

    @_one_error_family
    def clear_prior(self):
        """Take a loaded prior back out; returns what was loaded (None: nothing was)."""
        from bandit.service.catalog import current_lambda
        from bandit.service.prior import clear_prior

        self._ready()
        gone = clear_prior(self.store, current_lambda(self.store))
        if self._live is not None:
            self._live.forget()
        return gone

    # -- derived views -------------------------------------------------------------------
    @_one_error_family
    def stats(self):
        from bandit.service.stats import arm_stats

        self._ready()
        return arm_stats(self.store)

    @_one_error_family
    def rebuild(self, check: bool = False):
        """Recompute every posterior from events + rewards; with check, compare and change nothing."""
        from bandit.service.rebuild import rebuild

        self._ready()
        report = rebuild(self.store, check)
        if not check and self._live is not None:
            self._live.forget()
        return report

    @_one_error_family
    def export(self, output: str, rewarded_only: bool = False, fmt: str = "jsonl", stream=None) -> int:
        """Write the events as a decision log to `output` (atomically), or to `stream` when
        output is "-". Returns how many events were written."""
        from bandit.files import atomic_text_writer
        from bandit.offline.decision_log import export_events

        events = self.store.events(rewarded_only=rewarded_only)
        if output == "-":
            return export_events(events, stream, fmt)
        with atomic_text_writer(output) as f:
            return export_events(events, f, fmt)

    @_one_error_family
    def evaluate_logged(self, policies, source, *, seed=0, bootstrap=1000, default_rewards="keep"):
        """Off-policy estimates of `policies` on a decision log file, or on this database's
        events; `default_rewards`: keep or drop the reward window's default rewards."""
        from bandit.offline.ope import evaluate_log_source

        return evaluate_log_source(policies, source, None if source else self.store, seed=seed, bootstrap=bootstrap,
                                   default_rewards=default_rewards)
