"""Merge recipes: plain data naming an operator, its params, the base and the models.

A recipe reads and writes two layouts with one meaning:
- its own record (`to_dict` / `from_dict` / `to_json`): operator, params, base, models
  with their own params, slices, dtype, out_dtype, seed, tokenizer_source, chat_template;
- the YAML layout merge users already write for mergekit (`to_yaml` / `from_yaml`):
  merge_method, base_model, models: [{model, parameters}] or slices: [{sources: [{model,
  layer_range, parameters}], base_model, parameters}], parameters, dtype, out_dtype,
  tokenizer_source, chat_template, name. Fields mean what mergekit means: a parameter may
  be a value, a gradient over layers or a list of per-tensor-name filters
  (merging.settings); a model's own parameters win over a slice's, which win over the
  recipe's; `dtype` is the dtype inputs are cast to before the math and the output dtype
  unless `out_dtype` is given (the math itself runs in float32, or float64 when either
  names float64). A key it does not know is an error.

`from_arm` builds a recipe from a bandit arm, where a list gives one value per model.
No torch here: the bandit builds and checks recipes without it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from merging.chat_templates import template_text
from merging.dtypes import canonical_dtype
from merging.errors import MergeError
from merging.registry import get_operator
from merging.settings import check_setting, evaluate, is_varying, leaf_values
from merging.spec import OperatorSpec
from merging.vocabulary import TokenizerSettings

MERGE_LAYOUT_KEYS = {"merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype", "out_dtype",
                     "tokenizer_source", "tokenizer", "chat_template", "name", "seed"}
OWN_LAYOUT_KEYS = {"operator", "params", "base", "models", "slices", "module", "module_params", "dtype", "out_dtype",
                   "seed", "tokenizer_source", "tokenizer", "chat_template", "name"}
# mergekit names the one module of a decoder-only language model "default"; models with
# several (a vision tower beside the language model) are not merged here.
SINGLE_MODULE = "default"


@dataclass(frozen=True)
class RecipeModel:
    """One input model: its path and its own (per-model) parameter settings."""

    path: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    """Layers [start, stop) of one model, with that model's own parameter settings."""

    path: str
    layer_range: tuple[int, int]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeSlice:
    """One run of output layers, merged from equally long layer ranges of its sources."""

    sources: tuple[SliceSource, ...]
    base: str | None = None
    params: dict = field(default_factory=dict)
    # mergekit 0.1.5 reads residual_weight and never uses it: kept so the recipe round-trips.
    residual_weight: float | None = None

    @property
    def length(self) -> int:
        start, stop = self.sources[0].layer_range
        return stop - start


@dataclass(frozen=True)
class InputGroup:
    """Inputs of a run of tensors (all of them, or one slice), checked against the operator.

    models enter the math (an entry naming the base is left out for operators that take
    deltas from the base: its delta is zero); ranges are their layer ranges (None: whole
    models); base_range is the base's."""

    base: str | None
    models: list[str]
    model_settings: list[dict]
    settings: dict                       # the slice's own settings ({} for whole models)
    ranges: list[tuple[int, int]] | None = None
    base_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe checked against the registry, ready for the engine.

    params holds every declared parameter at t = 0 for a tensor with no name, per-model
    ones as lists in the order of models (what most recipes, with one value each, use
    everywhere); `params_for` gives a tensor's own values when gradients or filters vary."""

    spec: OperatorSpec
    base: str | None
    models: list[str]
    params: dict[str, Any]
    config_source: str
    settings: dict
    groups: list[InputGroup]
    sliced: bool
    module_settings: dict = field(default_factory=dict)

    @property
    def varies(self) -> bool:
        """Do any parameters depend on the tensor (gradients or filters)?"""
        every = [self.settings, self.module_settings] + [g.settings for g in self.groups] + \
            [m for g in self.groups for m in g.model_settings]
        return any(is_varying(v) for s in every for v in s.values())

    def params_for(self, group: InputGroup, tensor_names: Sequence[str], t: float, name: str = "") -> dict[str, Any]:
        """Every parameter's value for one tensor: tensor_names[i] is the name read from
        models[i] (per-model filters match it), t the layer position in [0, 1]."""
        return _evaluate_params(self.spec, (self.module_settings, self.settings), group, tensor_names, t, name)


def _evaluate_params(spec: OperatorSpec, outer: tuple[dict, ...], group: InputGroup, tensor_names: Sequence[str],
                     t: float, name: str) -> dict[str, Any]:
    """outer: the scopes above the slice's, nearest first (the module's, the recipe's)."""
    shared: dict[str, Any] = {}
    own: list[dict[str, Any]] = [{} for _ in group.models]
    for p in spec.params:
        if not p.per_model:
            value = _first(p.name, (group.settings, *outer), name, t)
            if value is not None:
                shared[p.name] = value
            continue
        for i, model_settings in enumerate(group.model_settings):
            value = _first(p.name, (model_settings, group.settings, *outer), tensor_names[i], t)
            if value is not None:
                own[i][p.name] = value
    where = f"operator {spec.name}" + (f", tensor {name!r}" if name else "")
    g, per_model = spec.resolve(shared, own, where)
    out = dict(g)
    for p in spec.params:
        if p.per_model:
            out[p.name] = [m[p.name] for m in per_model]
    return out


def _first(key: str, scopes, tensor_name: str, t: float) -> Any:
    for scope in scopes:
        if key in scope:
            value = evaluate(scope[key], tensor_name, t)
            if value is not None:
                return value
    return None


@dataclass(frozen=True)
class Recipe:
    operator: str
    models: tuple[RecipeModel, ...] = ()
    params: dict = field(default_factory=dict)
    base: str | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int = 0
    slices: tuple[RecipeSlice, ...] = ()
    tokenizer_source: str | None = None
    chat_template: str | None = None
    name: str | None = None
    tokenizer: TokenizerSettings | None = None
    # Written as `modules: {default: {models | slices, parameters}}`: the module's own
    # parameters rank between a slice's and the recipe's.
    module: str | None = None
    module_params: dict = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_arm(cls, operator: str, params: Mapping[str, Any], models: Sequence[str | os.PathLike],
                 base: str | os.PathLike | None = None, *, dtype: str | None = None,
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
        if self.dtype is not None:
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
        object.__setattr__(self, "slices", tuple(self.slices))
        object.__setattr__(self, "params", dict(self.params))
        if self.base is not None:
            object.__setattr__(self, "base", os.fspath(self.base))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MergeError(f"seed must be an integer, got {self.seed!r}")

    def replace(self, **changes) -> "Recipe":
        return replace(self, **changes)

    @property
    def compute_dtype(self) -> str:
        """The math runs in float32, or in float64 when the recipe names float64."""
        return "float64" if "float64" in (self.dtype, self.out_dtype) else "float32"

    # -- validation -------------------------------------------------------------------------
    def resolve(self) -> ResolvedRecipe:
        """Check the recipe against the registry; one-line MergeError on anything wrong."""
        spec = get_operator(self.operator)
        if self.models and self.slices:
            raise MergeError(f"operator {self.operator}: give models or slices, not both")
        if not self.models and not self.slices:
            raise MergeError(f"operator {self.operator}: no models given")
        _check_settings(spec, self.params, "parameters", per_model_allowed=True)
        if self.module is not None and self.module != SINGLE_MODULE:
            raise MergeError(f"recipe: modules: {self.module!r} is not the one module of a language model "
                             f"({SINGLE_MODULE!r}); multi-module models are not merged here")
        _check_settings(spec, self.module_params, f"modules.{self.module}.parameters", per_model_allowed=True)
        if self.tokenizer_source is not None and not isinstance(self.tokenizer_source, str):
            raise MergeError("recipe: tokenizer_source must be union, base or a model path")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise MergeError("recipe: give tokenizer_source or tokenizer, not both")
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise MergeError("recipe: chat_template must be a string")
        if self.chat_template not in (None, "", "auto"):
            template_text(self.chat_template)  # an unknown name fails here, before any work
        if self.slices:
            groups = [self._slice_group(spec, i, s) for i, s in enumerate(self.slices)]
            base = self.base
            models = []
            config_source = base if base is not None else self.slices[0].sources[0].path
        else:
            groups = [self._models_group(spec)]
            base, models = self.base, groups[0].models
            config_source = base if base is not None else self.models[0].path
        resolved = ResolvedRecipe(spec=spec, base=base, models=models, params={}, config_source=config_source,
                                  settings=dict(self.params), groups=groups, sliced=bool(self.slices),
                                  module_settings=dict(self.module_params))
        first = groups[0]
        params = _evaluate_params(spec, (resolved.module_settings, resolved.settings), first,
                                  [""] * len(first.models), 0.0, "")
        return replace(resolved, params=params)

    def _models_group(self, spec: OperatorSpec) -> InputGroup:
        keep = list(range(len(self.models)))
        if self.base is not None and spec.base != "unused":
            base_real = os.path.realpath(self.base)
            keep = [i for i in keep if os.path.realpath(self.models[i].path) != base_real]
        for i, m in enumerate(self.models):
            _check_settings(spec, m.params, f"models[{i}].parameters", per_model_allowed=True, per_model_only=True)
        spec.check_model_count(len(keep), self.base is not None)
        return InputGroup(base=self.base if spec.base != "unused" else None,
                          models=[self.models[i].path for i in keep],
                          model_settings=[dict(self.models[i].params) for i in keep], settings={})

    def _slice_group(self, spec: OperatorSpec, index: int, s: RecipeSlice) -> InputGroup:
        where = f"slices[{index}]"
        if not s.sources:
            raise MergeError(f"recipe: {where} has no sources")
        lengths = {src.layer_range[1] - src.layer_range[0] for src in s.sources}
        if len(lengths) != 1:
            raise MergeError(f"recipe: {where}: all sources must span the same number of layers, got {sorted(lengths)}")
        if lengths.pop() <= 0:
            raise MergeError(f"recipe: {where}: layer_range must be [start, stop) with start < stop")
        _check_settings(spec, s.params, f"{where}.parameters", per_model_allowed=True)
        base = s.base if s.base is not None else self.base
        if spec.base == "unused":
            base = None
        keep, base_range = [], None
        base_real = os.path.realpath(base) if base is not None else None
        for j, src in enumerate(s.sources):
            _check_settings(spec, src.params, f"{where}.sources[{j}].parameters", per_model_allowed=True,
                            per_model_only=True)
            if base_real is not None and os.path.realpath(src.path) == base_real:
                base_range = src.layer_range
            else:
                keep.append(src)
        if base is not None and base_range is None:
            base_range = s.sources[0].layer_range
        try:
            spec.check_model_count(len(keep), base is not None)
        except MergeError as e:
            raise MergeError(f"recipe: {where}: {e}") from None
        return InputGroup(base=base, models=[src.path for src in keep], model_settings=[dict(src.params) for src in keep],
                          settings=dict(s.params), ranges=[tuple(src.layer_range) for src in keep], base_range=base_range)

    def validate(self) -> "Recipe":
        self.resolve()
        return self

    @property
    def tokenizer_settings(self) -> TokenizerSettings | None:
        """The output tokenizer's settings: the tokenizer section, or tokenizer_source alone."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerSettings(source=self.tokenizer_source)
        return None

    def referenced_models(self) -> list[str]:
        """Every input model path, the base first, each once (by real path)."""
        paths = ([self.base] if self.base is not None else []) + [m.path for m in self.models]
        for s in self.slices:
            paths += [src.path for src in s.sources] + ([s.base] if s.base is not None else [])
        seen: dict[str, str] = {}
        for p in paths:
            seen.setdefault(os.path.realpath(p), p)
        return list(seen.values())

    # -- own layout -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "operator": self.operator,
            "params": dict(self.params),
            "base": self.base,
            "models": [{"path": m.path, "params": dict(m.params)} for m in self.models],
            "dtype": self.dtype,
            "out_dtype": self.out_dtype,
            "seed": self.seed,
        }
        if self.slices:
            out["slices"] = [_slice_to_dict(s, "path") for s in self.slices]
        for key in ("tokenizer_source", "chat_template", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_layout()
        if self.module is not None:
            out["module"] = self.module
            out["module_params"] = dict(self.module_params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Read either layout: the own record (operator, models, ...) or the merge YAML
        layout (merge_method, base_model, ...)."""
        if not isinstance(data, Mapping):
            raise MergeError("a recipe must be a mapping")
        if "merge_method" in data:
            return cls._from_merge_layout(data)
        _refuse_unknown(data, OWN_LAYOUT_KEYS, "recipe")
        if "operator" not in data:
            raise MergeError("recipe: no operator (or merge_method)")
        models = []
        for i, m in enumerate(_list(data.get("models"), "models")):
            if isinstance(m, str):
                models.append(RecipeModel(m, {}))
            elif isinstance(m, Mapping) and isinstance(m.get("path"), str):
                _refuse_unknown(m, {"path", "params"}, f"recipe: models[{i}]")
                models.append(RecipeModel(m["path"], _mapping(m.get("params"), f"models[{i}].params")))
            else:
                raise MergeError(f"recipe: models[{i}] must be a path or {{path, params}}")
        slices = tuple(_slice_from(s, i, "path", "base", "params") for i, s in enumerate(_list(data.get("slices"), "slices")))
        return cls(operator=str(data["operator"]), models=tuple(models),
                   params=_mapping(data.get("params"), "params"), base=_path_or_none(data.get("base"), "base"),
                   dtype=data.get("dtype"), out_dtype=data.get("out_dtype"),
                   seed=_seed(data.get("seed")), slices=slices,
                   tokenizer_source=data.get("tokenizer_source"), chat_template=data.get("chat_template"),
                   name=data.get("name"), tokenizer=_tokenizer_from(data),
                   module=_path_or_none(data.get("module"), "module"),
                   module_params=_mapping(data.get("module_params"), "module_params"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # -- merge YAML layout ------------------------------------------------------------------
    def to_merge_layout(self) -> dict:
        """The recipe in mergekit's configuration layout (loadable by mergekit-yaml)."""
        out: dict[str, Any] = {"merge_method": self.operator}
        if self.base is not None:
            out["base_model"] = self.base
        inputs: dict[str, Any] = {}
        if self.slices:
            inputs["slices"] = [_slice_to_dict(s, "model") for s in self.slices]
        else:
            inputs["models"] = []
            for m in self.models:
                entry: dict[str, Any] = {"model": m.path}
                if m.params:
                    entry["parameters"] = dict(m.params)
                inputs["models"].append(entry)
        if self.module is not None:
            if self.module_params:
                inputs["parameters"] = dict(self.module_params)
            out["modules"] = {self.module: inputs}
        else:
            out.update(inputs)
        if self.params:
            out["parameters"] = dict(self.params)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_layout()
        try:
            randomized = get_operator(self.operator).randomized
        except MergeError:
            randomized = True
        if randomized or self.seed != 0:
            # Not part of mergekit's layout (it ignores the key); written only where it
            # changes the result.
            out["seed"] = self.seed
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_merge_layout(), sort_keys=False)

    @classmethod
    def _from_merge_layout(cls, data: Mapping[str, Any]) -> "Recipe":
        _refuse_unknown(data, MERGE_LAYOUT_KEYS, "recipe")
        module, module_params = None, {}
        if "modules" in data:
            if "models" in data or "slices" in data:
                raise MergeError("recipe: give exactly one of models, slices or modules")
            modules = data["modules"]
            if not isinstance(modules, Mapping) or len(modules) != 1:
                raise MergeError(f"recipe: 'modules' must hold one module ({SINGLE_MODULE!r}: the language model); "
                                 "multi-module models are not merged here")
            module, entry = next(iter(modules.items()))
            module = str(module)
            if not isinstance(entry, Mapping):
                raise MergeError(f"recipe: modules.{module} must be a mapping with models or slices")
            _refuse_unknown(entry, {"models", "slices", "parameters"}, f"recipe: modules.{module}")
            module_params = _mapping(entry.get("parameters"), f"modules.{module}.parameters")
            data = {**{k: v for k, v in data.items() if k != "modules"},
                    **{k: v for k, v in entry.items() if k in ("models", "slices")}}
        models = []
        for i, m in enumerate(_list(data.get("models"), "models")):
            if isinstance(m, str):
                models.append(RecipeModel(m, {}))
                continue
            if not isinstance(m, Mapping) or not isinstance(m.get("model"), str):
                raise MergeError(f"recipe: models[{i}] must have a 'model' path")
            _refuse_unknown(m, {"model", "parameters"}, f"recipe: models[{i}]")
            models.append(RecipeModel(m["model"], _mapping(m.get("parameters"), f"models[{i}].parameters")))
        slices = tuple(_slice_from(s, i, "model", "base_model", "parameters")
                       for i, s in enumerate(_list(data.get("slices"), "slices")))
        return cls(operator=str(data["merge_method"]), models=tuple(models),
                   params=_mapping(data.get("parameters"), "parameters"),
                   base=_path_or_none(data.get("base_model"), "base_model"),
                   dtype=data.get("dtype"), out_dtype=data.get("out_dtype"), seed=_seed(data.get("seed")),
                   slices=slices, tokenizer_source=data.get("tokenizer_source"),
                   chat_template=data.get("chat_template"), name=data.get("name"), tokenizer=_tokenizer_from(data),
                   module=module, module_params=module_params)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        documents = load_yaml_documents(text)
        if len(documents) != 1:
            raise MergeError(f"recipe: {len(documents)} YAML documents; a multi-document recipe runs with "
                             "merging.multi.run_recipe_file (bandit merge --recipe)")
        return cls.from_dict(documents[0])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        """Read a one-document recipe file, JSON or YAML (either layout)."""
        p = Path(path)
        try:
            return cls.from_yaml(read_recipe_text(p))
        except MergeError as e:
            raise MergeError(f"{p}: {e}") from None


def read_recipe_text(p: Path) -> str:
    try:
        return p.read_text()
    except OSError as e:
        raise MergeError(f"{p}: cannot read recipe ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise MergeError(f"{p}: recipe is not text") from None


def load_yaml_documents(text: str) -> list:
    """Every document of a YAML (or JSON: YAML is a superset) text, empty ones skipped."""
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "syntax error"
        raise MergeError(f"recipe: not valid YAML ({first})") from None
    if not documents:
        raise MergeError("recipe: empty")
    return documents


def _check_settings(spec: OperatorSpec, settings: Mapping[str, Any], where: str, *, per_model_allowed: bool,
                    per_model_only: bool = False) -> None:
    """Every key a parameter of the operator, every value a valid setting whose values
    pass the parameter's checks."""
    for key, value in settings.items():
        p = spec.param(key)
        if p is None:
            known = ", ".join(q.name for q in spec.params) or "none"
            raise MergeError(f"recipe: {where}: unknown parameter {key!r} for {spec.name} (it takes: {known})")
        if per_model_only and not p.per_model:
            raise MergeError(f"recipe: {where}: {key} is a global parameter of {spec.name}, not a per-model one")
        check_setting(value, f"recipe: {where}.{key}")
        for leaf in leaf_values(value):
            p.coerce(leaf, f"recipe: {where}")


def _slice_to_dict(s: RecipeSlice, path_key: str) -> dict:
    own = path_key == "path"
    out: dict[str, Any] = {"sources": []}
    for src in s.sources:
        entry: dict[str, Any] = {path_key: src.path, "layer_range": list(src.layer_range)}
        if src.params:
            entry["params" if own else "parameters"] = dict(src.params)
        out["sources"].append(entry)
    if s.base is not None:
        out["base" if own else "base_model"] = s.base
    if s.params:
        out["params" if own else "parameters"] = dict(s.params)
    if s.residual_weight is not None:
        out["residual_weight"] = s.residual_weight
    return out


def _slice_from(data: Any, i: int, path_key: str, base_key: str, params_key: str) -> RecipeSlice:
    where = f"slices[{i}]"
    if not isinstance(data, Mapping):
        raise MergeError(f"recipe: {where} must be a mapping with sources")
    _refuse_unknown(data, {"sources", base_key, params_key, "residual_weight"}, f"recipe: {where}")
    residual = data.get("residual_weight")
    if residual is not None and (isinstance(residual, bool) or not isinstance(residual, (int, float))):
        raise MergeError(f"recipe: {where}.residual_weight must be a number, got {residual!r}")
    sources = []
    for j, src in enumerate(_list(data.get("sources"), f"{where}.sources")):
        w = f"{where}.sources[{j}]"
        if not isinstance(src, Mapping) or not isinstance(src.get(path_key), str):
            raise MergeError(f"recipe: {w} must have a '{path_key}' path")
        _refuse_unknown(src, {path_key, "layer_range", params_key}, f"recipe: {w}")
        rng = src.get("layer_range")
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in rng)):
            raise MergeError(f"recipe: {w}: layer_range must be two non-negative whole numbers [start, stop)")
        sources.append(SliceSource(src[path_key], (int(rng[0]), int(rng[1])), _mapping(src.get(params_key), f"{w}.{params_key}")))
    return RecipeSlice(tuple(sources), _path_or_none(data.get(base_key), f"{where}.{base_key}"),
                       _mapping(data.get(params_key), f"{where}.{params_key}"),
                       float(residual) if residual is not None else None)


def _tokenizer_from(data: Mapping[str, Any]) -> TokenizerSettings | None:
    value = data.get("tokenizer")
    return None if value is None else TokenizerSettings.from_layout(value)


def _refuse_unknown(data: Mapping, allowed: set, where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - allowed)
    if unknown:
        raise MergeError(f"{where}: unknown key {unknown[0]!r}")


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MergeError(f"recipe: {where} must be a list, got {value!r}")
    return value


def _path_or_none(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise MergeError(f"recipe: {where} must be a path")
    return value


def _seed(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise MergeError(f"recipe: seed must be an integer, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MergeError(f"recipe: {where} must be a mapping")
    return dict(value)
