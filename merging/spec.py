"""How an operator is declared: its parameters (Param), its spec (OperatorSpec), the
`merge_operator` decorator and the params dict it is called with (OperatorParams).

Both the built-in operators and the registry import this module; it imports neither, so
the registry can import the operators without a cycle. Plain Python, no torch.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from merging.errors import MergeError

SPEC_ATTRIBUTE = "__merge_operator__"

# How an operator uses the base model:
#   required: deltas are taken against it;
#   optional: it takes part when named (slerp uses it as the first endpoint);
#   origin:   optional, and when named the models are taken as deltas from it (nuslerp,
#             multislerp): it is not one of the models counted;
#   unused:   the math ignores it (it still provides config and tokenizer files).
BASE_ROLES = ("required", "optional", "origin", "unused")
PARAM_TYPES = {"float": float, "int": int, "bool": bool}


@dataclass(frozen=True)
class Param:
    """One declared parameter of an operator.

    per_model: given once per input model (a list in model order, or one scalar for all);
    otherwise one global value.
    """

    name: str
    default: Any
    type: str = "float"
    per_model: bool = False
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {sorted(PARAM_TYPES)}")

    def coerce(self, value: Any, where: str) -> Any:
        """Check one value against this declaration; return it in its declared type.
        A parameter declared with default None is required."""
        if value is None:
            raise MergeError(f"{where}: {self.name} is required (it has no default)")
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.strip().lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise MergeError(f"{where}: {self.name} must be true or false, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise MergeError(f"{where}: {self.name} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise MergeError(f"{where}: {self.name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise MergeError(f"{where}: {self.name} must be finite, got {value!r}")
        if self.type == "int":
            if number != int(number):
                raise MergeError(f"{where}: {self.name} must be a whole number, got {value!r}")
            number = int(number)
        if self.minimum is not None and number < self.minimum:
            raise MergeError(f"{where}: {self.name} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and number > self.maximum:
            raise MergeError(f"{where}: {self.name} must be <= {self.maximum}, got {value!r}")
        return number

    def to_dict(self) -> dict:
        return {
            "name": self.name, "default": self.default, "type": self.type,
            "scope": "per-model" if self.per_model else "global",
            "minimum": self.minimum, "maximum": self.maximum, "help": self.help,
        }


@dataclass(frozen=True)
class OperatorSpec:
    """What the engine and the bandit need to know about an operator, without running it."""

    name: str
    params: tuple[Param, ...]
    base: str = "required"
    min_models: int = 1
    max_models: int | None = None
    description: str = ""
    # Where the function lives, "module:attribute"; loaded only when a merge runs.
    target: str = ""
    randomized: bool = False
    # True: the operator takes the inputs in their stored dtype and converts them itself
    # (params.compute_dtype, params.out_dtype), chunk by chunk, which saves whole passes
    # over memory; False: the engine hands it tensors already in the compute dtype.
    native_inputs: bool = False
    # Checks across parameters (e.g. weights that sum to zero), run by resolve().
    checks: tuple[Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], None], ...] = ()
    _function: Callable | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base not in BASE_ROLES:
            raise ValueError(f"operator {self.name!r}: base must be one of {BASE_ROLES}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"operator {self.name!r}: a parameter is declared twice")

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def function(self) -> Callable:
        if self._function is not None:
            return self._function
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def check_model_count(self, n: int, has_base: bool) -> None:
        """n counts the models that enter the math (the base excluded)."""
        if self.base == "required" and not has_base:
            raise MergeError(f"operator {self.name} needs a base model (--base)")
        lo, hi = self.min_models, self.max_models
        if self.base == "optional" and has_base and hi is not None:
            # The base is one of the endpoints, so one model fewer is expected.
            lo, hi = max(lo - 1, 1), hi - 1
        if n < lo or (hi is not None and n > hi):
            want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            extra = " besides the base" if has_base and self.base != "unused" else ""
            raise MergeError(f"operator {self.name} takes {want} model(s){extra}, got {n}")

    def resolve(self, global_params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]],
                where: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate params and fill defaults.

        global_params: scalars for global params, and scalars (one value for every model)
        or lists (one per model, in order) for per-model params. model_params: each model's
        own values, which win over the global ones. Returns (globals, per_model) with every
        declared parameter present in its declared type.
        """
        where = where or f"operator {self.name}"
        n = len(model_params)
        unknown = [k for k in global_params if self.param(k) is None]
        for mp in model_params:
            unknown += [k for k in mp if self.param(k) is None]
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise MergeError(f"{where}: unknown parameter {unknown[0]!r} (it takes: {known})")
        resolved_global: dict[str, Any] = {}
        resolved_models: list[dict[str, Any]] = [{} for _ in range(n)]
        for p in self.params:
            if not p.per_model:
                if any(p.name in mp for mp in model_params):
                    raise MergeError(f"{where}: {p.name} is a global parameter, not a per-model one")
                value = global_params.get(p.name, p.default)
                if isinstance(value, (list, tuple)):
                    raise MergeError(f"{where}: {p.name} takes one value, got a list")
                resolved_global[p.name] = p.coerce(value, where)
                continue
            shared = global_params.get(p.name, p.default)
            if isinstance(shared, (list, tuple)):
                if len(shared) != n:
                    raise MergeError(f"{where}: {p.name} lists {len(shared)} value(s) for {n} model(s)")
                values = list(shared)
            else:
                values = [shared] * n
            for i, mp in enumerate(model_params):
                value = mp.get(p.name, values[i])
                if isinstance(value, (list, tuple)):
                    raise MergeError(f"{where}: {p.name} of model {i + 1} must be one value, got a list")
                resolved_models[i][p.name] = p.coerce(value, where)
        for check in self.checks:
            try:
                check(resolved_global, resolved_models)
            except MergeError as e:
                raise MergeError(f"{where}: {e}") from None
        return resolved_global, resolved_models

    def to_dict(self) -> dict:
        return {
            "name": self.name, "base": self.base, "min_models": self.min_models,
            "max_models": self.max_models, "randomized": self.randomized,
            "description": self.description, "params": [p.to_dict() for p in self.params],
        }


def merge_operator(name: str, params: Iterable[Param] = (), *, base: str = "required",
                   min_models: int = 1, max_models: int | None = None, randomized: bool = False,
                   checks: Iterable[Callable] = (), description: str = "",
                   native_inputs: bool = False) -> Callable[[Callable], Callable]:
    """Declare a function as a merge operator: its name, parameters and base role.

    The function is called as `f(base, tensors, params)`: `base` a float tensor or None,
    `tensors` a list of float tensors of the same shape (one per model, in order),
    `params` an `OperatorParams` dict holding every declared parameter (per-model ones
    as lists in model order) plus `.tensor_name` and `.seed` for seeded randomness.
    With native_inputs=True the tensors come in their stored dtype (e.g. bfloat16) and the
    function computes in `params.compute_dtype` and may return `params.out_dtype` directly.

        @merge_operator("my_op", [Param("alpha", 0.5)], base="required")
        def my_op(base, tensors, params): ...
    """

    def wrap(fn: Callable) -> Callable:
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        spec = OperatorSpec(
            name=name, params=tuple(params), base=base, min_models=min_models,
            max_models=max_models, randomized=randomized, checks=tuple(checks),
            description=doc, native_inputs=native_inputs,
            target=f"{fn.__module__}:{fn.__qualname__}", _function=fn,
        )
        setattr(fn, SPEC_ATTRIBUTE, spec)
        return fn

    return wrap


class OperatorParams(dict):
    """The params handed to an operator: a plain dict of resolved values, plus the tensor's
    name and the merge seed so random operators can draw reproducibly per tensor, and the
    dtypes to compute in and to return (torch dtypes; None: the inputs' own)."""

    def __init__(self, values: Mapping[str, Any], tensor_name: str = "", seed: int = 0,
                 compute_dtype: Any = None, out_dtype: Any = None):
        super().__init__(values)
        self.tensor_name = tensor_name
        self.seed = seed
        self.compute_dtype = compute_dtype
        self.out_dtype = out_dtype
