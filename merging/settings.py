"""Parameter settings as merge recipes write them, and their value for one tensor.

A setting is one of:
- a scalar (`0.5`, `true`);
- a gradient, a list of scalars (`[0, 0.5, 1]`): for a tensor of layer i of n, at
  t = i / (n - 1), the value is interpolated linearly between the two nearest points
  (t = 0 for tensors outside the layers); a list of booleans picks item int(t * (len-1));
- a list of filters, `[{filter: self_attn, value: ...}, {value: ...}]`: the first entry
  whose filter is a substring of the tensor's name (or has no filter, or `*`) gives the
  value, itself a scalar or a gradient. No entry matching means "not set here".
These are the merge toolkits' meanings (mergekit's `evaluate_setting`). Plain Python.
"""
from __future__ import annotations

from typing import Any, Mapping

from merging.errors import MergeError

SCALARS = (bool, int, float, str)
FILTER_KEYS = {"filter", "value"}


def check_setting(value: Any, where: str) -> None:
    """Refuse anything that is not a scalar, a gradient or a list of filters (one line)."""
    if isinstance(value, SCALARS):
        return
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise MergeError(f"{where}: an empty list")
        if all(isinstance(v, SCALARS) for v in value):
            return
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise MergeError(f"{where}[{i}]: mix of values and filters; give a list of {{filter, value}}")
            unknown = sorted(set(entry) - FILTER_KEYS)
            if unknown:
                raise MergeError(f"{where}[{i}]: unknown key {unknown[0]!r} (a filter entry takes filter and value)")
            if "value" not in entry:
                raise MergeError(f"{where}[{i}]: no value")
            if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                raise MergeError(f"{where}[{i}]: filter must be a string")
            inner = entry["value"]
            if isinstance(inner, Mapping) or (isinstance(inner, (list, tuple))
                                               and not all(isinstance(v, SCALARS) for v in inner)):
                raise MergeError(f"{where}[{i}]: a filter's value must be a value or a gradient list")
            check_setting(inner, f"{where}[{i}].value")
        return
    raise MergeError(f"{where}: must be a value, a gradient list or a list of {{filter, value}}, got {value!r}")


def is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """The setting's value for one tensor at layer position t in [0, 1]; None when a filter
    list has no entry for this tensor."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, SCALARS) or setting is None:
        return setting
    values = list(setting)
    if all(isinstance(v, SCALARS) for v in values):
        numbers = [_number(v) for v in values]
        if not all(is_numeric(v) for v in numbers):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(numbers) - 1)
        i0 = int(scaled)
        i1 = min(len(numbers) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * numbers[i0] + frac * numbers[i1]
    for entry in values:
        pattern = entry.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate(entry["value"], tensor_name, t)
    return None


def _number(v: Any) -> Any:
    """YAML leaves `1e-3` as a string; as a gradient point it is the number."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def leaf_values(setting: Any) -> list:
    """Every scalar a setting can evaluate to at a gradient point or filter (for validation)."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, SCALARS):
        return [setting]
    out: list = []
    for v in setting:
        if isinstance(v, Mapping):
            out += leaf_values(v["value"])
        else:
            out.append(_number(v))
    return out


def is_varying(setting: Any) -> bool:
    """True when the value depends on the tensor (a gradient or filters)."""
    return not isinstance(setting, SCALARS)
