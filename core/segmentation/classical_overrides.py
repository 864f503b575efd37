"""`--classical KEY=VALUE` options (`wellwatch bench segment`, `wellwatch dataset cells`) -> ClassicalParams,
checked as config.toml's [segmentation.classical] is."""

from __future__ import annotations

from wellwatch.core.errors import ConfigError
from wellwatch.core.segmentation.classical import ClassicalParams


def _parse_value(text: str) -> object:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


def classical_params(overrides: list[str]) -> ClassicalParams:
    table = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--classical {item}", item, "expected KEY=VALUE, e.g. downsample=1")
        table[key.strip()] = _parse_value(value)
    return ClassicalParams.from_mapping(table, prefix="--classical ")
