"""Merge recipes: plain data naming an operator, its params, the base and the models.

A recipe reads and writes two layouts:
- its own record (`to_dict` / `from_dict` / `to_json`): operator, params, models with
  their own params, base, dtype, out_dtype, seed;
- the YAML layout merge users already write (`to_yaml` / `from_yaml`): merge_method,
  base_model, models: [{model, parameters}], parameters, dtype, out_dtype.

No torch here: the bandit builds and checks recipes without it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from merging.dtypes import canonical_dtype
from merging.errors import MergeError
from merging.registry import OperatorSpec, get_operator

@dataclass(frozen=True)
class RecipeModel:
    """One input model: its path and its own (per-model) parameters."""

    path: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe checked against the registry, ready for the engine.

    models are the ones that enter the math (for operators that take deltas from the base,
    an entry naming the base itself is left out: its delta is zero, and merge YAMLs often
    list it). params holds every declared parameter, per-model ones as lists in the order
    of models."""

    spec: OperatorSpec
    base: str | None
    models: list[str]
    params: dict[str, Any]
    config_source: str


@dataclass(frozen=True)
class Recipe:
    operator: str
    models: tuple[RecipeModel, ...]
    params: dict = field(default_factory=dict)
    base: str | None = None
    dtype: str = "float32"
    out_dtype: str | None = None
    seed: int = 0

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_arm(cls, operator: str, params: Mapping[str, Any], models: Sequence[str | os.PathLike],
                 base: str | os.PathLike | None = None, *, dtype: str = "float32",
                 out_dtype: str | None = None, seed: int = 0) -> "Recipe":
        """Build a recipe from a bandit arm's (operator, params) and the chosen models.

        params as arms store them: a scalar applies to every model, a list gives one value
        per model in model order ({"weight": [0.5, 0.5], "density": 0.5}). Lists of per-model
        parameters are spread onto the models; everything is validated here."""
        models = [os.fspath(m) for m in models]
        spec = get_operator(operator)
        if base is not None and spec.base == "optional" and spec.max_models is not None and len(models) >= spec.max_models:
            # An arm applied to a pair: the models fill the operator (slerp between the two
            # fine-tunes), so the base is not an endpoint; its files still give the config.
            base = None
        per_model: list[dict] = [{} for _ in models]
        shared: dict[str, Any] = {}
        for key, value in dict(params).items():
            p = spec.param(key)
            if p is not None and p.per_model and isinstance(value, (list, tuple)):
                if len(value) != len(models):
                    raise MergeError(f"operator {operator}: {key} lists {len(value)} value(s) for {len(models)} model(s)")
                for entry, v in zip(per_model, value):
                    entry[key] = v
            else:
                shared[key] = value
        recipe = cls(
            operator=operator,
            models=tuple(RecipeModel(m, pm) for m, pm in zip(models, per_model)),
            params=shared, base=os.fspath(base) if base is not None else None,
            dtype=dtype, out_dtype=out_dtype, seed=seed,
        )
        recipe.validate()
        return recipe

    def __post_init__(self) -> None:
        # Normalise dtypes and make models a tuple of RecipeModel whatever was passed in.
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.out_dtype is not None:
            object.__setattr__(self, "out_dtype", canonical_dtype(self.out_dtype, "out_dtype"))
        fixed = []
        for m in self.models:
            if isinstance(m, RecipeModel):
                fixed.append(RecipeModel(os.fspath(m.path), dict(m.params)))
            elif isinstance(m, (str, os.PathLike)):
                fixed.append(RecipeModel(os.fspath(m), {}))
            else:
                path, params = m
                fixed.append(RecipeModel(os.fspath(path), dict(params or {})))
        object.__setattr__(self, "models", tuple(fixed))
        object.__setattr__(self, "params", dict(self.params))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MergeError(f"seed must be an integer, got {self.seed!r}")

    # -- validation -------------------------------------------------------------------------
    def resolve(self) -> ResolvedRecipe:
        """Check the recipe against the registry; one-line MergeError on anything wrong."""
        spec = get_operator(self.operator)
        if not self.models:
            raise MergeError(f"operator {self.operator}: no models given")
        keep = list(range(len(self.models)))
        if self.base is not None and spec.base != "unused":
            base_real = os.path.realpath(self.base)
            keep = [i for i in keep if os.path.realpath(self.models[i].path) != base_real]
        # Lists in the global params are per model in the order the recipe lists models;
        # spread them before entries naming the base are left out.
        shared = dict(self.params)
        own = [dict(m.params) for m in self.models]
        for key, value in list(shared.items()):
            p = spec.param(key)
            if p is not None and p.per_model and isinstance(value, (list, tuple)):
                if len(value) != len(self.models):
                    raise MergeError(f"operator {self.operator}: {key} lists {len(value)} value(s) for {len(self.models)} model(s)")
                for entry, v in zip(own, value):
                    entry.setdefault(key, v)
                del shared[key]
        spec.check_model_count(len(keep), self.base is not None)
        g, per_model = spec.resolve(shared, [own[i] for i in keep])
        params = dict(g)
        for p in spec.params:
            if p.per_model:
                params[p.name] = [m[p.name] for m in per_model]
        return ResolvedRecipe(spec=spec, base=self.base, models=[self.models[i].path for i in keep], params=params,
                              config_source=self.base if self.base is not None else self.models[0].path)

    def validate(self) -> "Recipe":
        self.resolve()
        return self

    # -- own layout -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "operator": self.operator,
            "params": dict(self.params),
            "base": self.base,
            "models": [{"path": m.path, "params": dict(m.params)} for m in self.models],
            "dtype": self.dtype,
            "out_dtype": self.out_dtype,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Read either layout: the own record (operator, models, ...) or the merge YAML
        layout (merge_method, base_model, ...)."""
        if not isinstance(data, Mapping):
            raise MergeError("a recipe must be a mapping")
        if "merge_method" in data:
            return cls._from_merge_layout(data)
        unknown = set(data) - {"operator", "params", "base", "models", "dtype", "out_dtype", "seed"}
        if unknown:
            raise MergeError(f"recipe: unknown key {sorted(unknown)[0]!r}")
        if "operator" not in data:
            raise MergeError("recipe: no operator (or merge_method)")
        models = []
        for i, m in enumerate(data.get("models") or []):
            if isinstance(m, str):
                models.append(RecipeModel(m, {}))
            elif isinstance(m, Mapping) and isinstance(m.get("path"), str):
                models.append(RecipeModel(m["path"], _mapping(m.get("params"), f"models[{i}].params")))
            else:
                raise MergeError(f"recipe: models[{i}] must be a path or {{path, params}}")
        return cls(operator=str(data["operator"]), models=tuple(models),
                   params=_mapping(data.get("params"), "params"), base=data.get("base"),
                   dtype=data.get("dtype") or "float32", out_dtype=data.get("out_dtype"),
                   seed=data.get("seed", 0) if data.get("seed") is not None else 0)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # -- merge YAML layout ------------------------------------------------------------------
    def to_merge_layout(self) -> dict:
        out: dict[str, Any] = {"merge_method": self.operator}
        if self.base is not None:
            out["base_model"] = self.base
        out["models"] = []
        for m in self.models:
            entry: dict[str, Any] = {"model": m.path}
            if m.params:
                entry["parameters"] = dict(m.params)
            out["models"].append(entry)
        if self.params:
            out["parameters"] = dict(self.params)
        out["dtype"] = self.dtype
        if self.out_dtype is not None:
            out["out_dtype"] = self.out_dtype
        try:
            randomized = get_operator(self.operator).randomized
        except MergeError:
            randomized = True
        if randomized or self.seed != 0:
            # Not part of the common layout; written only where it changes the result.
            out["seed"] = self.seed
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_merge_layout(), sort_keys=False)

    @classmethod
    def _from_merge_layout(cls, data: Mapping[str, Any]) -> "Recipe":
        if "slices" in data:
            raise MergeError("recipe: 'slices' are not supported; list whole models under 'models'")
        allowed = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "seed",
                   "tokenizer_source", "chat_template", "name"}
        unknown = set(data) - allowed
        if unknown:
            raise MergeError(f"recipe: unknown key {sorted(unknown)[0]!r}")
        models = []
        for i, m in enumerate(data.get("models") or []):
            if isinstance(m, str):
                models.append(RecipeModel(m, {}))
                continue
            if not isinstance(m, Mapping) or not isinstance(m.get("model"), str):
                raise MergeError(f"recipe: models[{i}] must have a 'model' path")
            models.append(RecipeModel(m["model"], _plain_params(m.get("parameters"), f"models[{i}].parameters")))
        base = data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise MergeError("recipe: base_model must be a path")
        seed = data.get("seed", 0)
        return cls(operator=str(data["merge_method"]), models=tuple(models),
                   params=_plain_params(data.get("parameters"), "parameters"), base=base,
                   dtype=data.get("dtype") or "float32", out_dtype=data.get("out_dtype"),
                   seed=0 if seed is None else seed)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "syntax error"
            raise MergeError(f"recipe: not valid YAML ({first})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        """Read a recipe file, JSON or YAML (either layout)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise MergeError(f"{p}: cannot read recipe ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise MergeError(f"{p}: recipe is not text") from None
        # YAML is a superset of JSON, so one parser reads both.
        try:
            return cls.from_yaml(text)
        except MergeError as e:
            raise MergeError(f"{p}: {e}") from None


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MergeError(f"recipe: {where} must be a mapping")
    return dict(value)


def _plain_params(value: Any, where: str) -> dict:
    """Parameters of the merge YAML layout; per-tensor filter lists are not supported."""
    params = _mapping(value, where)
    for key, v in params.items():
        if isinstance(v, list) and any(isinstance(x, Mapping) for x in v):
            raise MergeError(f"recipe: {where}.{key}: per-tensor filters are not supported; give one value")
        if isinstance(v, Mapping):
            raise MergeError(f"recipe: {where}.{key}: must be a value, not a mapping")
    return params


def parse_param_args(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn command-line `k=v` strings into a params dict, values read as YAML scalars:
    `density=0.5`, `normalize=false`, and per-model lists as `weight=0.7,0.3` or
    `weight=[0.7, 0.3]`."""
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MergeError(f"--param {pair!r}: expected key=value")
        if key in params:
            raise MergeError(f"--param {key} given twice")
        raw = raw.strip()
        try:
            if "," in raw and not raw.startswith("["):
                value: Any = [yaml.safe_load(part.strip()) for part in raw.split(",")]
            else:
                value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            raise MergeError(f"--param {pair!r}: value not understood") from None
        if value is None or isinstance(value, dict):
            raise MergeError(f"--param {pair!r}: expected a number, true/false or a list")
        params[key] = value
    return params
