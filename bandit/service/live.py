"""The live policy of one database, kept current in a long-lived process.

Ridge policies (linucb, lints, egreedy) read the stored posteriors and reload only the
arms whose version changed (another process may have rewarded them). Policies that learn
from the log (hybrid, vw, the stateless baselines) keep a cursor: the largest reward id
they have learned (reward ids grow in the order rewards are recorded), so each sync reads
only the rewards after it, whatever the log's length. Hybrid and VW also keep a snapshot
next to the database (their state and its cursor); a new process loads it instead of
relearning the log, and when there is none yet exactly one process relearns (under a file
lock) while the others wait and then load what it wrote.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bandit.errors import BanditError
from bandit.policies.base import Action, ArmSpec, Policy
from bandit.policies.linucb import RidgeArms
from bandit.policies.ridge import Posterior
from bandit.policies.registry import DEFAULT_POLICY, make_policy
from bandit.service.reward import RIDGE, RewardOutcome, arm_prior

SNAPSHOT_SUFFIX = {"vw": ".vw", "hybrid": ".hybrid.npz", "pooled": ".pooled.npz"}
# Writing a snapshot costs a few ms; a process that loads one relearns the rewards after
# its cursor, so it is rewritten only once it lags this many rewards behind.
SNAPSHOT_EVERY = 32


def policy_settings(store) -> dict[str, Any]:
    return store.get_setting("policy") or DEFAULT_POLICY


def snapshot_path(store, policy_name: str) -> str | None:
    suffix = SNAPSHOT_SUFFIX.get(policy_name)
    return None if suffix is None else str(store.path) + suffix


def _snapshot_class(policy_name: str):
    if policy_name == "vw":
        from bandit.policies.vw import VWPolicy

        return VWPolicy
    if policy_name == "pooled":
        from bandit.policies.pooled import PooledRidge

        return PooledRidge
    from bandit.policies.hybrid import HybridLinUCB

    return HybridLinUCB


@contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """An advisory lock beside the snapshot (`<snapshot>.lock`): one relearner at a time per
    database. The lock file lives only while someone holds or waits for it: the holder
    removes it before letting go, so nothing is left beside the database. A process that
    was waiting on the removed file then finds another file (or none) at the path and
    tries again, so two holders never overlap; a file left by a killed process is taken
    over and removed by the next one."""
    import fcntl

    lock_path = path + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(lock_path)
                if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a removed file: its holder has finished; lock the one there now
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)  # still holding it: no one can take the path's file meanwhile
        except FileNotFoundError:
            pass
        os.close(fd)  # closing releases the lock


class LivePolicy:
    def __init__(self, store):
        self.store = store
        self.policy: Policy | None = None
        self._key = None
        self.versions: dict[str, int] = {}  # ridge arms: posterior version held in memory
        self.active: set[str] = set()  # arms the live policy may propose
        self.cursor = 0  # log-fed policies: the last reward id learned
        self.cursor_event = None  # ... and the event it rewarded (identifies the log it came from)
        self.learned = 0  # ... and how many rewards that is
        self._snapshot_learned = -1  # how many of them the snapshot on disk holds (-1: none)
        self._prior_key = None  # the `bandit fit` prior the policy holds (pooled), by digest and strength

    # -- the policy, current --------------------------------------------------------------
    def current(self) -> Policy:
        """The live policy, with every active arm's posterior as stored now."""
        settings = policy_settings(self.store)
        key = json.dumps(settings, sort_keys=True)
        if self.policy is None or key != self._key:
            self.policy = self._build(settings)
            self._key = key
            self.versions = {}
            self._prior_key = None
        if isinstance(self.policy, RidgeArms):
            self._sync_ridge(self.policy)
        else:
            self._sync_from_log(self.policy, settings)
            if hasattr(self.policy, "set_intercept_prior"):
                self._sync_outcome_prior(self.policy)
        return self.policy

    def _sync_outcome_prior(self, policy) -> None:
        """A policy with its own intercept prior (pooled) takes `bandit fit`'s prior from the
        setting at decision time — not from its learned sums, so snapshots and rebuild stay a
        function of the log, and `fit --clear` takes it back at once."""
        from bandit.service.prior import SETTING

        loaded = self.store.get_setting(SETTING)
        prior = loaded["prior"] if loaded else None
        key = None if prior is None else (prior["digest"], prior["strength"])
        if key == self._prior_key:
            return
        from bandit.offline.prior import below_best

        policy.set_intercept_prior(below_best(prior["offsets"]) if prior else {}, prior["strength"] if prior else 0.0)
        self._prior_key = key

    def forget(self) -> None:
        """Posteriors were rewritten (rebuild): reload every arm on the next use."""
        self.versions = {}

    def after_reward(self, outcome: RewardOutcome) -> None:
        """The in-memory posterior follows a reward this process recorded, without a reload,
        when it was current just before it."""
        if outcome.duplicate or not isinstance(self.policy, RidgeArms):
            return
        post = self.policy.posteriors.get(outcome.arm)
        if post is not None and self.versions.get(outcome.arm) is not None and post.n + 1 == outcome.pulls:
            post.learn(outcome.context, outcome.value)  # the same observation, Sherman–Morrison
            self.versions[outcome.arm] += 1

    # -- ridge policies ---------------------------------------------------------------------
    def _sync_ridge(self, policy: RidgeArms) -> None:
        active = {a["name"]: a for a in self.store.active_arms_with_versions(RIDGE)}
        self.active = set(active)
        for name in list(policy.posteriors):
            if name not in active:  # retired since
                del policy.posteriors[name]
                del policy.specs[name]
                self.versions.pop(name, None)
        for name, arm in active.items():
            if name in policy.posteriors and self.versions.get(name) == arm["version"]:
                continue
            row = self.store.posterior(RIDGE, name)
            spec = ArmSpec(name, arm["operator"], json.loads(arm["params"]))
            if row is None:
                schema, A, b = arm_prior(self.store, name, policy.lam)
                post = Posterior(schema, policy.lam, A, b, 0, policy.refactor_every)
            else:
                post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"],
                                            policy.refactor_every)
            policy.set_posterior(spec, post)
            self.versions[name] = arm["version"] or 0

    # -- policies fed from the log ------------------------------------------------------------
    def _build(self, settings: dict[str, Any]) -> Policy:
        self.cursor, self.cursor_event, self.learned, self._snapshot_learned = 0, None, 0, -1
        path = snapshot_path(self.store, settings["name"])
        if path is None:
            return make_policy(settings["name"], settings.get("params"))
        loaded = self._load_snapshot(path, settings)
        if loaded is not None:
            return loaded
        # No usable snapshot: one process relearns the log and shares the result; the
        # others wait here and load it.
        with _exclusive(path):
            loaded = self._load_snapshot(path, settings)
            if loaded is not None:
                return loaded
            policy = make_policy(settings["name"], settings.get("params"))
            self._sync_from_log(policy, settings, save_every=0)
            return policy

    def _load_snapshot(self, path: str, settings: dict[str, Any]) -> Policy | None:
        if not os.path.exists(path):
            return None
        try:
            policy, header = _snapshot_class(settings["name"]).load(path)
        except (BanditError, OSError, KeyError, ValueError, RuntimeError):
            return None  # unreadable: relearned from the log and overwritten
        cursor, learned, cursor_event = header.get("cursor"), header.get("learned"), header.get("cursor_event")
        # A snapshot of other settings, or of rewards this database does not hold (say it
        # was restored from a backup, or is another database), is relearned.
        if (header.get("settings") != settings or not isinstance(cursor, int) or not isinstance(learned, int)
                or self.store.count_rewards_upto(cursor) != learned
                or self.store.rewarded_event(cursor) != cursor_event):
            return None
        self.cursor, self.cursor_event, self.learned, self._snapshot_learned = cursor, cursor_event, learned, learned
        return policy

    def _sync_from_log(self, policy: Policy, settings: dict[str, Any], save_every: int = SNAPSHOT_EVERY) -> None:
        """Learn each reward after the cursor, in the order rewards were recorded. Every arm
        ever added is known (a retired arm's rewards still teach shared parts); only active
        ones are proposed."""
        arms = self.store.arms()
        self.active = {a["name"] for a in arms if a["status"] == "active"}
        for a in arms:
            if a["name"] not in policy.specs:
                donor = a["warm_start_from"] if a["warm_start_from"] in policy.specs else None
                shrink = a["shrink"] if a["shrink"] is not None else 0.1
                policy.add_arm(ArmSpec(a["name"], a["operator"], a["params"]), donor, shrink)
        if not policy.learns_from_log:
            self.cursor = self.store.last_reward_id()
            return
        for r in self.store.rewarded_decisions_after(self.cursor):
            actions = [Action(a["arm"], r["contexts"][a.get("candidate", 0)], a.get("candidate", 0),
                              a.get("features") or {})
                       for a in r["actions"]]
            policy.learn_decision(actions, r["chosen"], r["value"], r["prob"])
            self.cursor, self.cursor_event = r["reward_id"], r["event_id"]
            self.learned += 1
        path = snapshot_path(self.store, policy.name)
        if path is not None and (self._snapshot_learned < 0 or self.learned - self._snapshot_learned >= save_every):
            policy.save(path, {"settings": settings, "cursor": self.cursor, "cursor_event": self.cursor_event,
                               "learned": self.learned})
            self._snapshot_learned = self.learned

    def prepare(self, settings: dict[str, Any]) -> None:
        """Before a switch to `settings` is stored: a policy that keeps a snapshot relearns
        the log here, once, so proposers load the snapshot instead of each relearning."""
        path = snapshot_path(self.store, settings["name"])
        if path is None:
            return
        scratch = LivePolicy(self.store)  # this one's cursor stays with the policy it serves
        with _exclusive(path):
            if scratch._load_snapshot(path, settings) is not None:
                return
            policy = make_policy(settings["name"], settings.get("params"))
            scratch._sync_from_log(policy, settings, save_every=0)
