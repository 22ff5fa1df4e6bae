"""The propose / reward service over one database.

`Service` keeps the live policy in memory and refreshes only the arms whose stored
posterior changed (another process may have rewarded them), so a long-lived process
proposes at in-memory speed while several processes share one database safely.
"""
from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bandit.policies import ridge
from bandit.arms import DEFAULT_ARMS, check_arm_name, validate_operator
from bandit.errors import BanditError
from bandit.policies.linucb import RidgeArms
from bandit.policies.registry import DEFAULT_POLICY, make_policy, policy_label
from bandit.policies.base import Action, ArmSpec, Policy
from bandit.policies.posterior import Posterior, update_arrays
from bandit.service.reward import RIDGE, RewardOutcome, arm_prior, chosen_context, record_reward
from store import Store


@dataclass
class Proposal:
    event_id: int
    task: str
    arm: str
    operator: str
    params: dict[str, Any]
    prob: float
    predicted: float
    bonus: float
    pmf: list[dict[str, Any]]  # one entry per action: arm, (model_a, model_b,) p
    policy: str
    seed: int
    model_a: str | None = None
    model_b: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    trial: dict[str, Any] | None = None  # the trial merges' cost, when they ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RebuildReport:
    arms: int
    rewards: int
    max_abs_diff: float
    mismatched: list[str]
    written: bool

    @property
    def clean(self) -> bool:
        return not self.mismatched


def check_task_name(task: str) -> str:
    task = (task or "").strip()
    if not task:
        raise BanditError("a task needs a name")
    return task


class Service:
    def __init__(self, store: Store | str = "bandit.db"):
        self.store = store if isinstance(store, Store) else Store(store)
        self._policy = None
        self._kept_merge: tuple[int | None, Any] = (None, None)  # (event id, its trial merge in memory)
        self._policy_key = None
        self._versions: dict[str, int] = {}
        self._active: set[str] = set()  # arms the live policy may propose
        self._learned: set[int] = set()  # rewarded events a log-fed policy has learned
        self._snapshot_size = -1  # how many of them the snapshot on disk holds (-1: none)
        self._known_tasks: set[str] = set()
        self._ensure_defaults()

    # -- set-up --------------------------------------------------------------------------
    def _ensure_defaults(self) -> None:
        if self.store.get_setting("initialized"):
            return
        with self.store.transaction():
            if self.store.get_setting("initialized"):
                return
            if self.store.get_setting("policy") is None:
                self.store.set_setting("policy", DEFAULT_POLICY)
            lam = self.policy_settings()["params"].get("lambda", 1.0)
            base_time = time.time()
            for i, (name, operator, params) in enumerate(DEFAULT_ARMS):
                if self.store.arm(name) is None:
                    # distinct times keep the listing in the documented order
                    self.store.insert_arm(name, operator, params, created_at=base_time + i * 1e-6)
                    self._put_prior(name, lam)
            self.store.set_setting("initialized", True)

    def _put_prior(self, arm: str, lam: float) -> None:
        schema, A, b = arm_prior(self.store, arm, lam)
        self.store.put_posterior(RIDGE, arm, schema, lam, ridge.dump(A), ridge.dump(b), 0, 0)

    def policy_settings(self) -> dict[str, Any]:
        return self.store.get_setting("policy") or DEFAULT_POLICY

    # -- the live policy -----------------------------------------------------------------
    def policy(self):
        """The live policy, with every active arm's posterior as stored now."""
        settings = self.policy_settings()
        key = (settings["name"], tuple(sorted(settings.get("params", {}).items())))
        if self._policy is None or key != self._policy_key:
            self._policy = self._build_policy(settings)
            self._policy_key = key
            self._versions = {}
        if isinstance(self._policy, RidgeArms):
            self._sync_ridge(self._policy)
        else:
            self._sync_from_log(self._policy)
        return self._policy

    # -- policies fed from the log (hybrid, vw, baselines) ---------------------------------
    # Their learned state is derived from events + rewards like the ridge posteriors; a
    # snapshot next to the database (VW's workspace, hybrid's matrices) saves relearning
    # the whole log in every new process. It records which rewarded events it holds.
    SNAPSHOT_SUFFIX = {"vw": ".vw", "hybrid": ".hybrid.npz"}
    # Writing a snapshot costs a few ms; a process that loads one relearns the rewards
    # after it, so it is rewritten only once it lags this many rewards behind.
    SNAPSHOT_EVERY = 32

    def vw_path(self) -> str:
        """The VW workspace of this database: saved next to it."""
        return str(self.store.path) + self.SNAPSHOT_SUFFIX["vw"]

    def snapshot_path(self, policy_name: str) -> str | None:
        suffix = self.SNAPSHOT_SUFFIX.get(policy_name)
        return None if suffix is None else str(self.store.path) + suffix

    @staticmethod
    def _snapshot_class(policy_name: str):
        if policy_name == "vw":
            from bandit.policies.vw import VWPolicy

            return VWPolicy
        from bandit.policies.hybrid import HybridLinUCB

        return HybridLinUCB

    def _build_policy(self, settings: dict[str, Any]) -> Policy:
        import os

        self._learned = set()
        self._snapshot_size = -1
        path = self.snapshot_path(settings["name"])
        if path is not None and os.path.exists(path):
            try:
                policy, header = self._snapshot_class(settings["name"]).load(path)
            except (BanditError, OSError, KeyError, ValueError, RuntimeError):
                policy, header = None, {}  # unreadable: relearn from the log, overwrite it
            learned = set(header.get("learned_events", []))
            # A snapshot of other settings, or one that learned rewards this database does
            # not hold (say, the database was restored from a backup), is relearned.
            if (policy is not None and header.get("settings") == settings
                    and learned <= set(self.store.rewarded_event_ids())):
                self._learned = learned
                self._snapshot_size = len(learned)
                return policy
        return make_policy(settings["name"], settings.get("params"))

    def _sync_from_log(self, policy: Policy) -> None:
        """Policies without ridge posteriors learn from the events and rewards themselves
        (the source of truth): every arm ever added is known (a retired arm's rewards
        still teach shared parts), only active ones are proposed, and each rewarded event
        not learned yet is learned in the order rewards were recorded."""
        arms = self.store.arms()
        self._active = {a["name"] for a in arms if a["status"] == "active"}
        for a in arms:
            if a["name"] not in policy.specs:
                donor = a["warm_start_from"] if a["warm_start_from"] in policy.specs else None
                shrink = a["shrink"] if a["shrink"] is not None else 0.1
                policy.add_arm(ArmSpec(a["name"], a["operator"], a["params"]), donor, shrink)
        new = [i for i in self.store.rewarded_event_ids() if i not in self._learned]
        if not new:
            return
        for r in self.store.rewarded_decisions(new):
            actions = [Action(a["arm"], r["contexts"][a.get("candidate", 0)], a.get("candidate", 0),
                              a.get("features") or {})
                       for a in r["actions"]]
            policy.learn_decision(actions, r["chosen"], r["value"], r["prob"])
            self._learned.add(r["event_id"])
        path = self.snapshot_path(policy.name)
        if path is not None and (self._snapshot_size < 0
                                 or len(self._learned) - self._snapshot_size >= self.SNAPSHOT_EVERY):
            policy.save(path, {"settings": self.policy_settings(), "learned_events": sorted(self._learned)})
            self._snapshot_size = len(self._learned)

    def set_policy(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Choose the live policy. Its settings are checked by building it once; `fixed`
        must name an arm of this database. Events record which policy chose them."""
        params = dict(params or {})
        policy = make_policy(name, params)
        if name == "fixed" and self.store.arm(params.get("arm")) is None:
            raise BanditError(f"policy fixed: no arm named {params.get('arm')!r}")
        if policy.params().get("epsilon", 1.0) <= 0:
            # DESIGN: a live policy keeps every action's probability >= ε/K, so its log
            # can be evaluated offline; ε = 0 is for replay baselines only.
            raise BanditError(f"a live policy needs epsilon > 0 (every action keeps probability >= epsilon/K); "
                              f"for example: bandit policy set {name} epsilon=0.05"
                              + (f" arm={params.get('arm')}" if name == "fixed" else ""))
        settings = {"name": name, "params": params}
        with self.store.transaction():
            if isinstance(policy, RidgeArms):
                self._shift_ridge_lambda(policy.lam)
            self.store.set_setting("policy", settings)
        return {"name": name, "params": params, "label": policy_label(settings), "effective": policy.params()}

    def _shift_ridge_lambda(self, lam: float) -> None:
        """Give the stored ridge posteriors (and warm-start priors) a new λ: A = λI + Σxxᵀ,
        so A + (λ_new − λ_old)·I is exactly what learning the same data under λ_new gives."""
        for row in self.store.posteriors(RIDGE):
            delta = lam - row["lam"]
            if delta == 0:
                continue
            A = np.frombuffer(row["A"], "<f8").copy().reshape(len(row["schema"]) + 1, -1)
            A[np.diag_indices_from(A)] += delta
            self.store.put_posterior(RIDGE, row["arm"], row["schema"], lam, A.astype("<f8").tobytes(), row["b"],
                                     row["n"], row["version"] + 1)
            arm = self.store.arm(row["arm"])
            if arm is not None and arm.get("prior_A") is not None:
                P = np.frombuffer(arm["prior_A"], "<f8").copy()
                d = int(round(math.sqrt(P.size)))
                P = P.reshape(d, d)
                P[np.diag_indices_from(P)] += delta
                self.store.set_arm_prior(row["arm"], P.astype("<f8").tobytes())

    def show_policy(self) -> dict[str, Any]:
        settings = self.policy_settings()
        policy = make_policy(settings["name"], settings.get("params"))
        return {"name": settings["name"], "params": settings.get("params", {}), "label": policy_label(settings),
                "effective": policy.params()}

    def _sync_ridge(self, policy: RidgeArms) -> None:
        import json

        active = {a["name"]: a for a in self.store.active_arms_with_versions(RIDGE)}
        self._active = set(active)
        versions = {name: a["version"] for name, a in active.items()}
        for name in list(policy.posteriors):
            if name not in active:  # retired since
                del policy.posteriors[name]
                del policy.specs[name]
                self._versions.pop(name, None)
        for name, arm in active.items():
            if name in policy.posteriors and self._versions.get(name) == versions.get(name):
                continue
            row = self.store.posterior(RIDGE, name)
            spec = ArmSpec(name, arm["operator"], json.loads(arm["params"]))
            if row is None:
                schema, A, b = arm_prior(self.store, name, policy.lam)
                post = Posterior.from_blobs(schema, policy.lam, ridge.dump(A), ridge.dump(b), 0, policy.refactor_every)
            else:
                post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"], policy.refactor_every)
            policy.set_posterior(spec, post)
            self._versions[name] = versions.get(name, 0)

    # -- propose -------------------------------------------------------------------------
    def propose(
        self,
        task: str,
        contexts: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
        candidates: Sequence[tuple[str, str]] | None = None,
        seed: int | None = None,
        inputs: Sequence[tuple[str, list[str]]] | None = None,
        action_features: Sequence[Mapping[str, Mapping[str, float]]] | None = None,
    ) -> Proposal:
        """Score every (candidate, arm) action, pick one from the policy's pmf, log the event.

        `contexts` holds one feature dict per candidate pair (or a single dict when no
        pairs are given); `inputs`, when given, the (base path, model paths) each candidate
        would merge, so the event carries a ready recipe; `action_features`, when given, one
        `{arm: {feature: value}}` per candidate (trial-merge signals), logged with each action
        so that rebuild and replay see what the policy saw.
        """
        task = check_task_name(task)
        if contexts is None:
            contexts = [{}]
        elif isinstance(contexts, Mapping):
            contexts = [contexts]
        contexts = [dict(c) for c in contexts]
        for c in contexts:
            try:
                ridge.check_context(c)
            except ValueError as e:
                raise BanditError(str(e)) from None
        if candidates is not None and len(candidates) != len(contexts):
            raise BanditError("one context is needed per candidate pair")
        if action_features is not None:
            if len(action_features) != len(contexts):
                raise BanditError("action features are needed per candidate pair")
            for per_arm in action_features:
                for feats in per_arm.values():
                    try:
                        ridge.check_context(feats)
                    except ValueError as e:
                        raise BanditError(str(e)) from None
        if seed is None:
            seed = secrets.randbits(63)
        rng = np.random.default_rng(seed)

        policy = self.policy()
        arms = [a for a in policy.arm_names if a in self._active]
        if not arms:
            raise BanditError("no active arms: add one with `bandit arms add`")
        def feats(c: int, arm: str) -> dict[str, float]:
            return dict(action_features[c].get(arm, {})) if action_features is not None else {}

        actions = [Action(arm, ctx, c, feats(c, arm)) for c, ctx in enumerate(contexts) for arm in arms]
        decision = policy.decide(actions, rng)
        chosen = actions[decision.chosen]
        spec = policy.specs[chosen.arm]
        operator, params = spec.operator, dict(spec.params)
        pair = tuple(candidates[chosen.candidate]) if candidates is not None else (None, None)
        if inputs is not None:
            from merging.recipe import Recipe  # plain data, no torch

            base_path, model_paths = inputs[chosen.candidate]
            recipe = Recipe.from_arm(operator, params, model_paths, base_path).to_merge_layout()
        else:
            recipe = {"merge_method": operator, "parameters": params}

        pmf_out = []
        for a, p in zip(actions, decision.pmf):
            entry: dict[str, Any] = {"arm": a.arm}
            if candidates is not None:
                entry["model_a"], entry["model_b"] = candidates[a.candidate]
            entry["p"] = float(p)
            pmf_out.append(entry)
        event = {
            "created_at": time.time(), "task": task, "policy": policy.name, "policy_params": policy.params(),
            "candidates": [list(c) for c in candidates] if candidates is not None else None,
            "contexts": contexts, "actions": [{"arm": a.arm, "candidate": a.candidate, **({"features": dict(a.features)} if a.features else {})}
                        for a in actions],
            "pmf": [float(p) for p in decision.pmf], "chosen": decision.chosen, "arm": chosen.arm,
            "model_a": pair[0], "model_b": pair[1], "prob": decision.prob,
            "predicted": float(decision.means[decision.chosen]), "bonus": float(decision.bonuses[decision.chosen]),
            "seed": int(seed), "recipe": recipe,
        }
        with self.store.transaction():
            if task not in self._known_tasks:
                self.store.ensure_task(task)
            event_id = self.store.insert_event(event)
        self._known_tasks.add(task)
        return Proposal(
            event_id=event_id, task=task, arm=chosen.arm, operator=operator, params=params,
            prob=decision.prob, predicted=event["predicted"], bonus=event["bonus"], pmf=pmf_out,
            policy=policy.name, seed=int(seed), model_a=pair[0], model_b=pair[1], recipe=recipe,
        )

    def trial_settings(self) -> dict[str, Any]:
        """Whether `propose --models` runs trial merges by default, and with which budget."""
        return self.store.get_setting("trial_merges") or {"on": False, "budget": None}

    def set_trial_merges(self, on: bool, budget: int | None = None) -> dict[str, Any]:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise BanditError(f"trial budget must be a whole number >= 1, got {budget!r}")
        value = {"on": bool(on), "budget": budget}
        with self.store.transaction():
            self.store.set_setting("trial_merges", value)
        return value

    def propose_merge(
        self, task: str, models: Sequence[str], *, seed: int | None = None, structural_only: bool = False,
        device: str = "auto", progress: bool = False, trial_merges: bool | None = None,
        trial_budget: int | None = None, keep_merge: bool = False, trial_cache_dir: str | None = None,
    ) -> Proposal:
        """Choose operator, order and pair for merging two of `models` (registered fine-tunes
        of one base) for `task`: features for every ordered pair (cached), then `propose`.

        With trial merges (None: the database's setting), every candidate action — or the
        `trial_budget` most promising by the pre-trial scores — is merged in memory and
        scored against the experts' own outputs; the signals are the actions' features.
        `keep_merge` keeps the chosen action's merge so `merge_event` writes it directly.
        Reference outputs and per-action signals are cached in `trial_cache_dir` (default:
        $SIMMERGE_HOME/probe-outputs or ~/.cache/simmerge/probe-outputs)."""
        from bandit.service.context import common_base, pair_features, task_probes

        task = check_task_name(task)
        models = list(models)
        if len(models) < 2:
            raise BanditError("a merge needs at least two models (--models A B [C ...])")
        if len(set(models)) != len(models):
            raise BanditError("a model is named twice in --models")
        base = common_base(self.store, models)
        probes = None if structural_only else task_probes(self.store, task)
        pairs = [(a, b) for a in models for b in models if a != b]
        paths = {m: self.store.model(m)["path"] for m in models}
        fingerprints: dict[str, str] = {}
        contexts = [
            pair_features(self.store, a, b, probes, structural_only=structural_only, device=device,
                          progress=progress, fingerprints=fingerprints).features
            for a, b in pairs
        ]
        inputs = [(base["path"], [paths[a], paths[b]]) for a, b in pairs]
        settings = self.trial_settings()
        if trial_merges is None:
            trial_merges = bool(settings.get("on"))
        if not trial_merges:
            return self.propose(task, contexts, pairs, seed=seed, inputs=inputs)
        if trial_budget is None:
            trial_budget = settings.get("budget")
        report = self._trials(task, pairs, base, paths, contexts, device, trial_budget, keep_merge, trial_cache_dir)
        proposal = self.propose(task, contexts, pairs, seed=seed, inputs=inputs, action_features=report.features)
        proposal.trial = report.to_dict()
        chosen = (pairs.index((proposal.model_a, proposal.model_b)), proposal.arm)
        self._kept_merge = (proposal.event_id, report.kept.get(chosen))
        proposal.trial["chosen_was_trialled"] = proposal.arm in report.features[chosen[0]]
        return proposal

    def _trials(self, task, pairs, base, paths, contexts, device, budget, keep, cache_dir):
        from bandit.service.context import task_probes
        from bandit.service.trials import run_trials, select_actions

        policy = self.policy()
        arms = [a for a in policy.arm_names if a in self._active]
        keys = [(c, arm) for c in range(len(pairs)) for arm in arms]
        scores = None
        if budget is not None and budget < len(keys):
            means, bonuses = policy.scores([Action(arm, contexts[c], c) for c, arm in keys])
            scores = (means + bonuses).tolist()
        selected = select_actions(scores or [0.0] * len(keys), keys, budget)
        task_texts = task_probes(self.store, task)
        own = {m: self.store.model_probes(m) for m in {x for p in pairs for x in p}}

        def probes_of(model: str) -> list[str]:
            texts = own.get(model) or task_texts
            if not texts:
                raise BanditError(f"trial merges need probe texts: register {model} with --probes, "
                                  f"or give task {task!r} probes (bandit tasks add {task} --probes FILE)")
            return texts

        specs = {arm: (policy.specs[arm].operator, dict(policy.specs[arm].params)) for arm in arms}
        report = run_trials(base["path"], pairs, paths, probes_of, specs, selected, device=device, keep=keep,
                            cache_dir=cache_dir)
        report.budget = budget
        return report

    def merge_event(self, event_id: int | str, out_dir: str, *, device: str = "auto", progress: bool | None = None,
                    **engine_options: Any):
        """Run the merge that event EVENT_ID proposed (its recipe, as logged) into out_dir."""
        from bandit.service.reward import parse_event_id
        from merging.engine import run_merge
        from merging.recipe import Recipe

        event_id = parse_event_id(event_id)
        event = self.store.event(event_id)
        if event is None:
            raise BanditError(f"no event {event_id}")
        if event["model_a"] is None or "models" not in (event["recipe"] or {}):
            raise BanditError(f"event {event_id} was proposed without models (a context-only proposal): nothing to merge")
        kept_id, kept = self._kept_merge
        if kept_id == event_id and kept is not None and not engine_options:
            return self._write_kept(kept, out_dir, device)
        return run_merge(Recipe.from_dict(event["recipe"]), out_dir, device=device, progress=progress, **engine_options)

    def _write_kept(self, kept, out_dir: str, device: str):
        """Write the chosen trial merge, already in memory: no second merge."""
        from merging.engine import MergeResult

        t0 = time.perf_counter()
        out = kept.save(out_dir)
        size = sum(t.numel() * t.element_size() for t in kept.state.values())
        return MergeResult(path=str(out), operator=kept.recipe.operator, tensors=len(kept.state), shards=1,
                           bytes_written=size, seconds=round(time.perf_counter() - t0, 3),
                           device=f"{device} (trial merge reused)")

    # -- reward --------------------------------------------------------------------------
    def reward(self, event_id: int | str, value: float | str) -> RewardOutcome:
        """Record a reward; the in-memory posterior follows without a reload when it can."""
        before = self._versions.get
        outcome = record_reward(self.store, event_id, value, update_arrays)
        if outcome.duplicate or self._policy is None or not isinstance(self._policy, RidgeArms):
            return outcome
        post = self._policy.posteriors.get(outcome.arm)
        if post is not None and before(outcome.arm) is not None and post.n + 1 == outcome.pulls:
            # Our copy was current just before this reward: learn the same observation
            # (Sherman–Morrison) instead of reloading and re-factoring.
            post.learn(outcome.context, outcome.value)
            self._versions[outcome.arm] = self._versions[outcome.arm] + 1
        return outcome

    # -- arms ----------------------------------------------------------------------------
    def arms(self) -> list[dict[str, Any]]:
        rows = self.store.arms()
        return [
            {"name": r["name"], "operator": r["operator"], "params": r["params"], "status": r["status"],
             "warm_start_from": r["warm_start_from"]}
            for r in rows
        ]

    def add_arm(
        self, name: str, operator: str, params: dict[str, Any] | None = None,
        warm_start_from: str | None = None, shrink: float = 0.1,
    ) -> dict[str, Any]:
        """A new arm, proposable at once: from the prior, or a shrunk copy of a donor arm
        (A = λI + s·(A_d − λI), b = s·b_d) so it starts informed but not over-confident."""
        check_arm_name(name)
        params = validate_operator(operator, dict(params or {}))
        if not (0.0 <= shrink <= 1.0) or math.isnan(shrink):
            raise BanditError(f"--shrink must be in [0, 1], got {shrink}")
        lam = self.policy_settings()["params"].get("lambda", 1.0)
        with self.store.transaction():
            if self.store.arm(name) is not None:
                raise BanditError(f"arm {name!r} exists already")
            prior = None
            if warm_start_from is not None:
                donor = self.store.posterior(RIDGE, warm_start_from)
                if self.store.arm(warm_start_from) is None or donor is None:
                    raise BanditError(f"cannot warm-start from unknown arm {warm_start_from!r}")
                post = Posterior.from_blobs(donor["schema"], donor["lam"], donor["A"], donor["b"]).shrunk_copy(shrink)
                A, b = post.blobs()
                prior = (post.schema, A, b)
            self.store.insert_arm(
                name, operator, params, warm_start_from=warm_start_from,
                shrink=shrink if warm_start_from else None, prior=prior,
            )
            self._put_prior(name, lam)
        return {"name": name, "operator": operator, "params": params, "warm_start_from": warm_start_from}

    def retire_arm(self, name: str) -> None:
        with self.store.transaction():
            arm = self.store.arm(name)
            if arm is None:
                raise BanditError(f"no arm named {name!r}")
            if arm["status"] == "retired":
                return
            self.store.set_arm_status(name, "retired")

    # -- tasks ---------------------------------------------------------------------------
    def add_task(self, name: str, probes: list[str] | None = None) -> bool:
        import hashlib

        name = check_task_name(name)
        probe_hash = None
        if probes is not None:
            probes = [p for p in (s.strip() for s in probes) if p]
            if not probes:
                raise BanditError("the probe file holds no texts (one text per line)")
            probe_hash = hashlib.sha256("\n".join(probes).encode()).hexdigest()[:16]
        with self.store.transaction():
            return self.store.upsert_task(name, probes, probe_hash)

    # -- stats ---------------------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Per arm: proposals, pulls (rewarded), mean reward, posterior mean at the average
        context of all proposals, and share of proposals."""
        total = self.store.count_events()
        sums: dict[str, float] = {}
        count = 0
        for ev in self.store.events():
            for k, v in chosen_context(ev).items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        avg = {k: v / count for k, v in sums.items()} if count else {}
        out = []
        for r in self.store.arm_stats():
            row = self.store.posterior(RIDGE, r["arm"])
            post_mean = None
            if row is not None:
                post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"])
                post_mean = float(post.mean_and_width([avg])[0][0])
            out.append({
                "arm": r["arm"], "operator": r["operator"], "status": r["status"], "proposals": r["proposals"],
                "pulls": r["pulls"], "mean_reward": r["mean_reward"], "posterior_mean": post_mean,
                "share": r["proposals"] / total if total else 0.0,
            })
        return out

    # -- rebuild -------------------------------------------------------------------------
    def recompute_posteriors(self) -> tuple[dict[str, tuple[list[str], Any, Any, int]], int]:
        """Every arm's ridge statistics recomputed from its prior and the rewards, replayed
        in the order they were recorded (the order the live ones were updated in)."""
        lam_default = self.policy_settings()["params"].get("lambda", 1.0)
        live = {r["arm"]: r for r in self.store.posteriors(RIDGE)}
        state: dict[str, list] = {}
        for arm in self.store.arms():
            lam = live[arm["name"]]["lam"] if arm["name"] in live else lam_default
            schema, A, b = arm_prior(self.store, arm["name"], lam)
            state[arm["name"]] = [schema, A, b, 0, lam]
        n_rewards = 0
        for r in self.store.rewards_in_order():
            st = state.get(r["arm"])
            if st is None:
                raise BanditError(f"reward for event {r['event_id']} names arm {r['arm']!r}, which is not in the arms table")
            ctx = chosen_context(r)
            st[0], st[1], st[2] = ridge.extend(st[0], st[1], st[2], st[4], ridge.new_names(st[0], ctx))
            ridge.update(st[1], st[2], ridge.vector(st[0], ctx), r["value"])
            st[3] += 1
            n_rewards += 1
        return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in state.items()}, n_rewards

    def rebuild(self, check: bool = False) -> RebuildReport:
        """Recompute every posterior from events + rewards. With check, compare with the live
        ones and change nothing; without, write the recomputed ones."""
        with self.store.transaction():
            fresh, n_rewards = self.recompute_posteriors()
            live = {r["arm"]: r for r in self.store.posteriors(RIDGE)}
            mismatched, max_diff = [], 0.0
            for arm, (schema, A, b, n, lam) in fresh.items():
                row = live.get(arm)
                if row is None or row["schema"] != schema or row["n"] != n:
                    mismatched.append(arm)
                    continue
                dA = np.max(np.abs(np.frombuffer(row["A"], "<f8") - np.frombuffer(ridge.dump(A), "<f8")))
                db = np.max(np.abs(np.frombuffer(row["b"], "<f8") - np.frombuffer(ridge.dump(b), "<f8")))
                diff = float(max(dA, db))
                max_diff = max(max_diff, diff)
                scale = max(1.0, float(np.max(np.abs(np.frombuffer(row["A"], "<f8")))))
                if diff > 1e-12 * scale:
                    mismatched.append(arm)
            for arm in live:
                if arm not in fresh:
                    mismatched.append(arm)
            if not check:
                self.store.delete_posteriors(RIDGE)
                for arm, (schema, A, b, n, lam) in fresh.items():
                    version = live[arm]["version"] + 1 if arm in live else 1
                    self.store.put_posterior(RIDGE, arm, schema, lam, ridge.dump(A), ridge.dump(b), n, version)
        if not check:
            self._versions = {}
        return RebuildReport(len(fresh), n_rewards, max_diff, sorted(mismatched), not check)
