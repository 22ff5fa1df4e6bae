"""Vowpal Wabbit's `cb_explore_adf` (SquareCB by default) behind the Policy interface.

Each decision is one multi-line example: a `shared` line with the context (namespace S)
and one line per action with the arm's name and descriptor (namespace A); `-q SA` crosses
them, so the reward model is linear in context × arm features and arms with similar
descriptors share what they learn. New arms are simply new action lines.

Cold-action guard: VW starts every weight at 0, so an action whose features it has never
seen predicts cost 0. With raw costs −reward that is pessimistic for positive rewards and
optimistic for negative ones (and with losses in [0, 1] it makes every unseen arm look
best). The policy therefore learns the *centred* cost −(r − r̄), r̄ the running mean reward
before this one: a weight of 0 then means "as good as the average arm", and an unseen
arm starts at the average plus whatever its shared descriptor features have learned. On
top of VW's pmf an ε floor keeps every action ≥ ε/K.

VW learns from cost and the logged probability of the chosen action. It is imported only
when this policy is built, so `propose` and `reward` under other policies never load it.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit.policies.descriptors import arm_descriptor
from bandit.errors import BanditError
from bandit.policies.exploration import sample
from bandit.files import write_atomically
from bandit.policies.base import Action, ArmSpec, Decision, Policy

FORMAT = "simmerge-vw/1"
EXPLORATIONS = ("squarecb", "epsilon")
_UNSAFE = re.compile(r"[\s|:]")


def _token(name: str) -> str:
    """A feature name VW parses as one token (no whitespace, `|` or `:`)."""
    return _UNSAFE.sub("_", name)


class VWPolicy(Policy):
    name = "vw"

    def __init__(
        self, explore: str = "squarecb", gamma_scale: float = 10.0, gamma_exponent: float = 0.5,
        epsilon: float = 0.05, seed: int = 0, _model_file: str | None = None,
    ):
        super().__init__()
        if explore not in EXPLORATIONS:
            raise BanditError(f"vw explore must be one of {', '.join(EXPLORATIONS)}, got {explore!r}")
        if not 0 <= epsilon <= 1:
            raise BanditError(f"epsilon must be in [0, 1], got {epsilon}")
        if not gamma_scale > 0:
            raise BanditError(f"gamma_scale must be > 0, got {gamma_scale}")
        self.explore, self.gamma_scale, self.gamma_exponent = explore, float(gamma_scale), float(gamma_exponent)
        self.epsilon, self.seed = float(epsilon), int(seed)
        self.reward_sum = 0.0
        self.reward_count = 0
        self._line_cache: dict[str, str] = {}
        import vowpalwabbit

        try:
            if _model_file is not None:
                self.ws = vowpalwabbit.Workspace(f"--quiet -i {_model_file}")
            else:
                self.ws = vowpalwabbit.Workspace(self.options())
        except RuntimeError as e:
            raise BanditError(f"vowpal wabbit rejected the options: {e}") from None

    def options(self) -> str:
        opts = ["--cb_explore_adf", "--quiet", "-q", "SA", "--random_seed", str(self.seed)]
        if self.explore == "squarecb":
            opts += ["--squarecb", "--gamma_scale", repr(self.gamma_scale), "--gamma_exponent", repr(self.gamma_exponent)]
        else:  # VW's own ε-greedy on its regression; our floor below adds the same ε again
            opts += ["--epsilon", repr(self.epsilon)]
        return " ".join(opts)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"explore": self.explore, "epsilon": self.epsilon, "seed": self.seed}
        if self.explore == "squarecb":
            out.update(gamma_scale=self.gamma_scale, gamma_exponent=self.gamma_exponent)
        return out

    # -- examples ------------------------------------------------------------------------
    def _action_line(self, arm: str) -> str:
        line = self._line_cache.get(arm)
        if line is None:
            spec = self.specs[arm]
            feats = [f"arm={_token(arm)}"]
            for k, v in arm_descriptor(spec).items():
                feats.append(f"{_token(k)}:{v!r}")
            line = "|A " + " ".join(feats)
            self._line_cache[arm] = line
        return line

    @staticmethod
    def _shared_line(context: Mapping[str, float]) -> str:
        return "shared |S " + " ".join(f"{_token(k)}:{float(v)!r}" for k, v in context.items())

    def _example(self, actions: Sequence[Action], label: tuple[int, float, float] | None = None) -> list[str]:
        for a in actions:
            if a.arm not in self.specs:
                raise BanditError(f"unknown arm {a.arm!r}")
        contexts = {id(a.inputs): a.inputs for a in actions}
        if len(contexts) > 1 and any(dict(c) != dict(actions[0].inputs) for c in contexts.values()):
            # Several candidate pairs: the context differs per action, so it goes on the
            # action lines (namespace S) instead of one shared line.
            lines = ["shared |S"]
            for a in actions:
                ctx = " ".join(f"{_token(k)}:{float(v)!r}" for k, v in a.inputs.items())
                lines.append(self._action_line(a.arm) + " |S " + ctx)
        else:
            lines = [self._shared_line(actions[0].inputs)] + [self._action_line(a.arm) for a in actions]
        if label is not None:
            i, cost, prob = label
            lines[i + 1] = f"0:{cost!r}:{prob!r} {lines[i + 1]}"
        return lines

    # -- the Policy interface ------------------------------------------------------------
    def add_arm(self, arm: ArmSpec, warm_start_from: str | None = None, shrink: float = 0.1) -> None:
        self.check_new_arm(arm, warm_start_from, shrink)
        # A warm start needs nothing here: the new arm's descriptor features are shared
        # with its look-alikes, which is how VW transfers what they learned.
        self.specs[arm.name] = arm

    def baseline(self) -> float:
        return self.reward_sum / self.reward_count if self.reward_count else 0.0

    def learn_decision(self, actions: Sequence[Action], chosen: int, reward: float, prob: float) -> None:
        if not 0 < prob <= 1:
            raise BanditError(f"logged probability must be in (0, 1], got {prob}")
        cost = -(float(reward) - self.baseline())
        self.ws.learn(self._example(actions, (chosen, cost, float(prob))))
        self.reward_sum += float(reward)
        self.reward_count += 1

    def learn_one(self, arm: str, context: Mapping[str, float], reward: float) -> None:
        """Without the logged decision, treat it as one of all known arms chosen uniformly."""
        if arm not in self.specs:
            raise BanditError(f"unknown arm {arm!r}")
        arms = self.arm_names
        actions = [Action(a, context) for a in arms]
        self.learn_decision(actions, arms.index(arm), reward, 1.0 / len(arms))

    def vw_pmf(self, actions: Sequence[Action]) -> np.ndarray:
        """VW's own pmf over the actions, in their order."""
        pmf = np.asarray(self.ws.predict(self._example(actions)), dtype=np.float64)
        if pmf.shape != (len(actions),) or not np.isfinite(pmf).all() or pmf.sum() <= 0:
            raise BanditError("vowpal wabbit returned an unusable pmf")
        return pmf / pmf.sum()

    def scores(self, actions: Sequence[Action]) -> tuple[np.ndarray, np.ndarray]:
        # VW's cb_explore_adf reports probabilities, not reward estimates; log the pmf
        # itself as the score so the event still shows how VW ranked the actions.
        return self.vw_pmf(actions), np.zeros(len(actions))

    def decide(self, actions: Sequence[Action], rng: np.random.Generator) -> Decision:
        if not actions:
            raise BanditError("no actions to choose from")
        vw = self.vw_pmf(actions)
        pmf = (1.0 - self.epsilon) * vw + self.epsilon / len(actions)
        return Decision(pmf=pmf, chosen=sample(pmf, rng), means=vw, bonuses=np.zeros(len(actions)))

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra_header: Mapping[str, Any] | None = None) -> None:
        """One file: a JSON header line (settings, arms, baseline) then VW's model bytes,
        written to a temporary sibling and renamed, so a reader never sees half a file."""
        path = Path(path)
        header = {
            "format": FORMAT, "params": self.params(), "reward_sum": self.reward_sum,
            "reward_count": self.reward_count,
            "arms": [{"name": s.name, "operator": s.operator, "params": dict(s.params)} for s in self.specs.values()],
            **dict(extra_header or {}),
        }
        fd, model_tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".model")
        os.close(fd)
        try:
            self.ws.save(model_tmp)
            model = Path(model_tmp).read_bytes()
        finally:
            os.unlink(model_tmp)
        write_atomically(path, json.dumps(header).encode() + b"\n" + model)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["VWPolicy", dict[str, Any]]:
        """The policy saved at `path` and the file's header."""
        path = Path(path)
        data = path.read_bytes()
        head, sep, model = data.partition(b"\n")
        try:
            header = json.loads(head)
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not sep or not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BanditError(f"{path}: not a simmerge VW workspace")
        fd, model_tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".model")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model)
            p = header["params"]
            policy = cls(explore=p["explore"], gamma_scale=p.get("gamma_scale", 10.0),
                         gamma_exponent=p.get("gamma_exponent", 0.5), epsilon=p["epsilon"], seed=p["seed"],
                         _model_file=model_tmp)
        finally:
            os.unlink(model_tmp)
        policy.reward_sum = float(header["reward_sum"])
        policy.reward_count = int(header["reward_count"])
        for a in header["arms"]:
            policy.specs[a["name"]] = ArmSpec(a["name"], a["operator"], a["params"])
        return policy, header
