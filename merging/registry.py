"""The operator registry: the built-in operators, entry-point and `module:function`
plugins, looked up by name, and validation of an arm's params.

This module is plain Python and never imports torch, so the bandit can build and check
recipes (`propose`) without paying for it. The operators' math lives in
`merging.operators`, whose functions import torch only when they run; how an operator is
declared lives in `merging.spec` (re-exported here for plugin authors).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from merging.errors import MergeError
from merging.spec import SPEC_ATTRIBUTE, OperatorParams, OperatorSpec, Param, merge_operator

__all__ = ["OperatorParams", "OperatorSpec", "Param", "merge_operator", "get_operator", "list_operators",
           "load_plugin", "register", "validate_params", "spec_of"]

ENTRY_POINT_GROUP = "simmerge.operators"

# -- the registry ------------------------------------------------------------------------

_registry: dict[str, OperatorSpec] = {}
_builtins_loaded = False
_entry_points_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        # merging.operators imports torch only inside its functions.
        import merging.operators as builtin

        for value in vars(builtin).values():
            spec = getattr(value, SPEC_ATTRIBUTE, None)
            if isinstance(spec, OperatorSpec):
                _registry[spec.name] = spec


def spec_of(fn: Any, where: str) -> OperatorSpec:
    spec = getattr(fn, SPEC_ATTRIBUTE, None)
    if not isinstance(spec, OperatorSpec):
        raise MergeError(f"{where}: not a merge operator (decorate it with merging.registry.merge_operator)")
    return spec


def register(fn: Callable, *, replace: bool = False) -> OperatorSpec:
    """Add a decorated function to the registry; a name clash is an error unless replace."""
    _load_builtins()
    spec = spec_of(fn, getattr(fn, "__qualname__", repr(fn)))
    existing = _registry.get(spec.name)
    if existing is not None and existing.function is not fn and not replace:
        raise MergeError(f"operator {spec.name!r} is already registered ({existing.target})")
    _registry[spec.name] = spec
    return spec


def load_plugin(ref: str) -> OperatorSpec:
    """Register the operator named by `module:function` (the --plugin option)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise MergeError(f"plugin {ref!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise MergeError(f"plugin {ref!r}: cannot import {module_name} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise MergeError(f"plugin {ref!r}: {module_name} has no {attr}")
    return register(fn, replace=True)


def _load_entry_points(only: str | None = None) -> None:
    """Register operators published in the simmerge.operators entry-point group.

    Loading an entry point imports its module, so when one name is wanted only that
    entry point is loaded."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and ep.name != only:
            continue
        try:
            fn = ep.load()
        except Exception as e:  # a broken third-party package must not break the rest
            raise MergeError(f"operator plugin {ep.name!r} ({ep.value}) failed to load: {e}") from None
        spec = spec_of(fn, f"operator plugin {ep.name!r} ({ep.value})")
        _registry.setdefault(spec.name, spec)
        if ep.name != spec.name:
            _registry.setdefault(ep.name, spec)
    if only is None:
        _entry_points_loaded = True


def get_operator(name: str) -> OperatorSpec:
    """The spec registered under name; unknown names are a one-line MergeError."""
    _load_builtins()
    spec = _registry.get(name)
    if spec is None:
        _load_entry_points(only=name)
        spec = _registry.get(name)
    if spec is None:
        raise MergeError(f"unknown operator {name!r} (known: {', '.join(sorted(_registry))})")
    return spec


def list_operators() -> list[OperatorSpec]:
    """Every registered operator, built-in and plugged in, sorted by name."""
    _load_builtins()
    _load_entry_points()
    seen: dict[str, OperatorSpec] = {}
    for spec in _registry.values():
        seen.setdefault(spec.name, spec)
    return [seen[k] for k in sorted(seen)]


def validate_params(operator: str, params: Mapping[str, Any], n_models: int) -> dict[str, Any]:
    """Check an arm's params dict ({"weight": [0.5, 0.5], "normalize": true}) for an
    operator applied to n_models models; return it with defaults filled in, per-model
    values as lists. Raises MergeError with one line."""
    spec = get_operator(operator)
    g, per_model = spec.resolve(params, [{} for _ in range(n_models)])
    out = dict(g)
    for p in spec.params:
        if p.per_model:
            out[p.name] = [m[p.name] for m in per_model]
    return out


def merge_meaning(operator: str, params: Mapping[str, Any], n_models: int = 2) -> dict[str, Any]:
    """What a merge with these params does: every parameter, defaults filled in. Caches of
    merge results (outcome tables, trial features) are keyed by this, not by the params as
    written, so a changed default invalidates what it changes."""
    return validate_params(operator, params, n_models)
