"""What every wellwatch settings file shares: reading TOML with one error format, and the rules for
ZeroMQ endpoints.

The daemon's config.toml (config.py) and the hub's hub.toml (scale/hub_config.py) are read here,
so a missing, unreadable or malformed file reads the same whichever command was given it; the
endpoint rules are the same for the daemon's [publish], the hub's tables and `wellwatch subscribe`.
Imports only the standard library and the errors, so the hub loads no science modules.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from wellwatch.core.errors import ConfigError

ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The file's tables; ConfigError('--config', path, why) when it cannot be read as TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "the file does not exist") from None
    except IsADirectoryError:
        raise ConfigError("--config", str(path), "is a folder; give the .toml file") from None
    except UnicodeDecodeError as e:
        raise ConfigError("--config", str(path), f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError("--config", str(path), f"cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", str(path), f"not valid TOML: {e}") from None


def is_endpoint(endpoint: str) -> bool:
    return endpoint.startswith(ENDPOINT_SCHEMES)


def check_endpoint(key: str, endpoint: str) -> None:
    if not is_endpoint(endpoint):
        raise ConfigError(key, endpoint, "expected a ZeroMQ endpoint like tcp://127.0.0.1:5556")


def default_snapshot_endpoint(endpoint: str) -> str:
    """tcp://host:5556 -> tcp://host:5557 (the daemon's default layout)."""
    base, _, port = endpoint.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"cannot derive a snapshot endpoint from {endpoint!r}; give --snapshot")
    return f"{base}:{int(port) + 1}"


def check_endpoint_pair(key: str, endpoint: str, snapshot_key: str, snapshot_endpoint: str) -> None:
    """A stream's PUB endpoint and its snapshot endpoint: both ZeroMQ endpoints, and not the same one
    (the second bind would fail at start, far from the key that caused it)."""
    check_endpoint(key, endpoint)
    check_endpoint(snapshot_key, snapshot_endpoint)
    if endpoint == snapshot_endpoint:
        raise ConfigError(snapshot_key, snapshot_endpoint, f"must differ from {key}")
