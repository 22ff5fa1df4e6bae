"""Every value a user types, parsed in one place, each failure one line (`InvalidInput`).

The rules, for the CLI and the HTTP server alike:
- numbers (rewards, features, parameter values) are plain decimals: `0.5`, `-3`, `1e-4`,
  `+.5`. No `1_0`, `0x1f`, `1:30`, `inf` or `nan`: a typo must not become a different number.
- rewards and context features lie within ±MAX_ABS_VALUE (1e6). The ridge statistics sum
  x·xᵀ and r·x over every reward: with |x|, |r| ≤ 1e6 an entry grows by at most 1e12 per
  reward, so 10⁹ rewards stay far below float64's 1.8e308. A value outside is refused at
  the door (propose, reward), never stored; before this bound a single
  `-f a=1e200` made every later propose of that database fail for good.
- a context has at most MAX_CONTEXT_FEATURES (256) features: each feature name adds a row
  and a column to every arm's statistics, so an unbounded context (60k names) would make
  the first reward allocate tens of GB.
- event ids are whole numbers 1 ≤ id < 2⁶³ (SQLite's INTEGER).
- seeds are whole numbers 0 ≤ seed < 2⁶³: numpy's generators take any non-negative
  integer, SQLite stores up to 2⁶³ − 1, and a random seed is drawn from 63 bits.
- `k=v` parameters (arms, policies, merges): a value is `true`/`false`, a plain decimal
  number (int when it has no `.`/exponent), a list of those (`0.7,0.3` or `[0.7, 0.3]`), or
  else kept as a string (`explore=squarecb`, `arm=ties`). Nothing else is interpreted.

Runs without numpy or re: `bandit reward` imports it and must start fast.
"""
from __future__ import annotations

from bandit.errors import InvalidInput

MAX_ABS_VALUE = 1e6
MAX_ID = 2**63  # exclusive
MAX_SEED = 2**63  # exclusive
MAX_NAME_LENGTH = 200
MAX_CONTEXT_FEATURES = 256

_DIGITS = frozenset("0123456789")
_DECIMAL_CHARS = frozenset("0123456789+-.eE")


def _is_plain_decimal(text: str) -> bool:
    """`[+-]digits[.digits][e[+-]digits]` with at least one digit before the exponent."""
    if not text or not set(text) <= _DECIMAL_CHARS:
        return False
    mantissa, _, exponent = text.lower().partition("e")
    if "e" in text.lower():
        exponent_digits = exponent[1:] if exponent[:1] in "+-" else exponent
        if not exponent_digits or not set(exponent_digits) <= _DIGITS:
            return False
    if mantissa[:1] in "+-":
        mantissa = mantissa[1:]
    whole, dot, frac = mantissa.partition(".")
    if not (whole or frac) or not set(whole + frac) <= _DIGITS:
        return False
    return True


def _bounded(value: float, what: str, text: object) -> float:
    if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # NaN fails both comparisons
        raise InvalidInput(f"{what}: {text!r} is outside the accepted range ±{MAX_ABS_VALUE:g}")
    return value


def parse_number(text: str | float | int, what: str, *, bounded: bool = False) -> float:
    """A finite float from a plain decimal string (or a number already parsed, say from
    JSON). With `bounded`, also within ±MAX_ABS_VALUE. Anything else: one line naming `what`."""
    if isinstance(text, bool):
        raise InvalidInput(f"{what}: {text!r} is not a number")
    if isinstance(text, int):
        if bounded:
            _bounded(text, what, text)  # compares exactly: a 400-digit int never reaches float()
        try:
            return float(text)
        except OverflowError:
            raise InvalidInput(f"{what}: {text!r} is not a finite number") from None
    if isinstance(text, float):
        value = text
    else:
        raw = str(text).strip()
        if not _is_plain_decimal(raw):
            if raw.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise InvalidInput(f"{what}: {str(text)[:40]!r} is not a finite number")
            raise InvalidInput(f"{what}: {str(text)[:40]!r} is not a number (write a plain decimal such as 0.5 or -1e-3)")
        value = float(raw)
        if bounded and value in (float("inf"), float("-inf")):  # 1e400, or 400 digits
            return _bounded(value, what, raw[:40])
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInput(f"{what}: {str(text)[:40]!r} is not a finite number")
    return _bounded(value, what, str(text)[:40]) if bounded else value


def parse_finite(text: str | float, what: str) -> float:
    """A finite plain-decimal number (outcome tables, options): no range beyond float64's."""
    return parse_number(text, what)


def parse_reward(text: str | float) -> float:
    return parse_number(text, "reward", bounded=True)


def _parse_whole(text: str | int, what: str, low: int, high: int, rule: str) -> int:
    if isinstance(text, bool):
        raise InvalidInput(f"{text!r} is not {what} ({rule})")
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip()
        digits = raw[1:] if raw[:1] in "+-" else raw
        if not digits or not set(digits) <= _DIGITS or len(digits) > 30:
            raise InvalidInput(f"{str(text)[:40]!r} is not {what} ({rule})")
        value = int(raw)
    if not low <= value < high:
        raise InvalidInput(f"{str(text)[:40]!r} is not {what} ({rule})")
    return value


def parse_event_id(text: str | int) -> int:
    return _parse_whole(text, "an event id", 1, MAX_ID, "event ids are whole numbers from 1 to 2^63 - 1")


def parse_seed(text: str | int | None) -> int | None:
    if text is None:
        return None
    return _parse_whole(text, "a seed", 0, MAX_SEED, "seeds are whole numbers from 0 to 2^63 - 1")


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{what} names must be non-empty strings, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
    return name


def check_context(context: object) -> dict[str, float]:
    """A context as the policies take it: feature name → finite number within ±MAX_ABS_VALUE."""
    if not isinstance(context, dict):
        raise InvalidInput("a context is an object of feature name: number")
    if len(context) > MAX_CONTEXT_FEATURES:
        raise InvalidInput(f"a context has at most {MAX_CONTEXT_FEATURES} features, got {len(context)}")
    out: dict[str, float] = {}
    for k, v in context.items():
        check_name(k, "feature")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidInput(f"feature {k!r} must be a finite number, got {str(v)[:40]!r}")
        out[k] = parse_number(v, f"feature {k!r}", bounded=True)
    return out


def parse_context(features: tuple[str, ...] | list[str], context_json: str | None) -> dict[str, float]:
    """`--feature NAME=VALUE` (repeatable) over `--context-json '{...}'`."""
    import json

    context: dict[str, object] = {}
    if context_json:
        try:
            loaded = json.loads(context_json)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"--context-json is not valid JSON ({e.msg} at position {e.pos})") from None
        except ValueError as e:  # e.g. an integer beyond Python's digit limit
            raise InvalidInput(f"--context-json: {e}") from None
        if not isinstance(loaded, dict):
            raise InvalidInput("--context-json must be a JSON object of name: number")
        context.update(loaded)
    for item in features:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"bad --feature {item[:40]!r}: write it as NAME=VALUE")
        context[name.strip()] = parse_number(value, f"feature {name.strip()!r}", bounded=True)
    return check_context(context)


def parse_value(text: str) -> object:
    """One `k=v` value by the rules of this module's docstring."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [_scalar(p) for p in inner.split(",")] if inner else []
    if "," in t:
        return [_scalar(p) for p in t.split(",")]
    return _scalar(t)


def _scalar(text: str) -> object:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if _is_plain_decimal(t):
        number = parse_number(t, "parameter value")
        is_int = not any(c in t for c in ".eE")
        return int(t) if is_int else number
    if not t:
        raise InvalidInput("empty parameter value")
    unsigned = t[1:] if t[0] in "+-" else t
    if (unsigned[:1] in tuple("0123456789.")
            or unsigned.lower() in ("inf", "infinity", "nan", ".inf", ".nan", "null", "none", "~")):
        raise InvalidInput(f"parameter value {t[:40]!r} is not a number (write a plain decimal such as 0.5), "
                           "true/false or a name")
    return t


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict[str, object]:
    """`k=v` strings into a dict; a key given twice or without `=` is an error."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"parameter {pair[:40]!r}: expected key=value")
        if key in params:
            raise InvalidInput(f"parameter {key!r} given twice")
        params[key] = parse_value(raw)
    return params


def read_text_lines(path: str, what: str) -> list[str]:
    """A UTF-8 text file's lines; a binary file (NUL bytes, not UTF-8) is refused."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if b"\x00" in data:
        raise InvalidInput(f"{path}: the {what} file is binary; expected UTF-8 text, one entry per line")
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: the {what} file is not UTF-8 text") from None
