"""The one validator for settings held in frozen dataclasses: config.toml's tables, hub.toml's,
`ClassicalParams` built in code and the simulator's `SimulationSpec`.

A field says what it allows in its metadata (`choice(...)`, `between(lo, hi)`, `not_above(other)`)
and its type hint; `build` makes a dataclass from a TOML table, `check_fields` checks one built in
code. Both raise ConfigError naming the key, the value and what is allowed. Imports nothing of the daemon
but its errors, so any module may use it without an import cycle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, get_type_hints

import numpy as np

from wellwatch.core.errors import ConfigError


def choice(*allowed: object) -> dict:
    return {"choices": allowed}


def between(lo: float | None = None, hi: float | None = None) -> dict:
    return {"range": (lo, hi)}


def not_above(other: str, zero_is_no_limit: bool = False) -> dict:
    """The field is at most the field `other` of the same table (a min_area beside a max_area);
    `zero_is_no_limit`: `other` = 0 means unbounded."""
    return {"not_above": (other, zero_is_no_limit)}


def build(cls: type, data: Any, prefix: str) -> Any:
    """A `cls` from a table (a dict); unknown keys and bad values raise ConfigError(prefix + key)."""
    section = prefix.rstrip(".") or "<top level>"
    if not isinstance(data, dict):
        raise ConfigError(section, data, "expected a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", data[unknown[0]],
                          f"unknown key; keys allowed in [{section}]: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in data:
            continue
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, data[name], key + ".")
            continue
        value = coerce(key, data[name], hint)
        check_allowed(key, value, f.metadata)
        values[name] = value
    built = cls(**values)
    check_between_fields(built, prefix)
    return built


def check_fields(obj: Any, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Check every field of a built dataclass (not nested ones, not those in `skip`: the caller checks
    them itself) as `build` checks a table's values."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(hints[f.name]) or f.name in skip:
            continue
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        coerce(key, value, hints[f.name], exact=True)
        check_allowed(key, value, f.metadata)
    check_between_fields(obj, prefix)


def check_between_fields(obj: Any, prefix: str) -> None:
    """The rules a field's metadata states about another field of the same dataclass (`not_above`)."""
    for f in dataclasses.fields(obj):
        if "not_above" not in f.metadata:
            continue
        other, zero_is_no_limit = f.metadata["not_above"]
        value, limit = getattr(obj, f.name), getattr(obj, other)
        if zero_is_no_limit and limit == 0:
            continue
        if value > limit:
            raise ConfigError(f"{prefix}{f.name}", value, f"allowed: at most {prefix}{other} ({limit})"
                                                          + (f", or {other} = 0" if zero_is_no_limit else ""))


def coerce(key: str, value: Any, hint: Any, exact: bool = False) -> Any:
    """`value` as the type `hint` says (an int is a float), else ConfigError. `exact`: a choice
    field's value must already have its type (2.0 is not the integer 2)."""
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(key, value, "expected true or false")
        return value
    if hint is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(key, value, "expected an integer")
        return value
    if hint is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(key, value, "expected a number")
        if not math.isfinite(value):
            raise ConfigError(key, value, "expected a finite number")
        return value if exact else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "expected a string")
        return value
    if hint == tuple[str, ...]:
        if exact and isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, value, "expected a non-empty string or list of non-empty strings")
        return tuple(value)
    if hint == tuple[int, ...]:
        if exact and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(key, value, "expected a list of integers")
        return tuple(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def check_allowed(key: str, value: Any, metadata: Any) -> None:
    if "choices" in metadata and value not in metadata["choices"]:
        raise ConfigError(key, value, f"allowed: {', '.join(map(str, metadata['choices']))}")
    if "range" in metadata:
        lo, hi = metadata["range"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(key, value, f"allowed range {lo}..{hi}" if lo is not None and hi is not None
                              else f"allowed: at least {lo}" if lo is not None else f"allowed: at most {hi}")
