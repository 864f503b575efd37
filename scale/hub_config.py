"""hub.toml -> HubConfig, validated once at start; errors name the key, the value and what is allowed.

    [hub]
    endpoint = "tcp://127.0.0.1:5600"           # XPUB: subscribers connect here
    snapshot_endpoint = "tcp://127.0.0.1:5601"  # ROUTER: the merged snapshot
    snapshot_timeout_s = 2.0                    # per daemon; a daemon that does not answer is left out

    [[daemons]]                                 # one table per daemon behind the hub
    endpoint = "tcp://scope-1:5556"
    snapshot_endpoint = "tcp://scope-1:5557"    # default: endpoint's port + 1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wellwatch.core.config_files import check_endpoint, check_endpoint_pair, default_snapshot_endpoint, read_toml
from wellwatch.core.errors import ConfigError
from wellwatch.core.validation import between, build


@dataclass(frozen=True)
class HubSection:
    endpoint: str = "tcp://127.0.0.1:5600"
    snapshot_endpoint: str = "tcp://127.0.0.1:5601"
    snapshot_timeout_s: float = field(default=2.0, metadata=between(0.05, 600.0))


@dataclass(frozen=True)
class DaemonEndpoints:
    endpoint: str = ""
    snapshot_endpoint: str = ""


@dataclass(frozen=True)
class HubConfig:
    hub: HubSection
    daemons: tuple[DaemonEndpoints, ...]


def hub_config_from(data: dict[str, Any]) -> HubConfig:
    unknown = sorted(set(data) - {"hub", "daemons"})
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], "unknown key; allowed at the top level: [hub], [[daemons]]")
    hub = build(HubSection, data.get("hub", {}), "hub.")
    check_endpoint_pair("hub.endpoint", hub.endpoint, "hub.snapshot_endpoint", hub.snapshot_endpoint)
    tables = data.get("daemons", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError("daemons", tables, "give at least one [[daemons]] table with an endpoint")
    daemons = []
    for i, table in enumerate(tables):
        d = build(DaemonEndpoints, table, f"daemons[{i}].")
        check_endpoint(f"daemons[{i}].endpoint", d.endpoint)
        if not d.snapshot_endpoint:
            try:
                d = DaemonEndpoints(d.endpoint, default_snapshot_endpoint(d.endpoint))
            except ValueError:
                raise ConfigError(f"daemons[{i}].snapshot_endpoint", "",
                                  f"required: cannot derive it from endpoint {d.endpoint!r}") from None
        check_endpoint_pair(f"daemons[{i}].endpoint", d.endpoint, f"daemons[{i}].snapshot_endpoint",
                            d.snapshot_endpoint)
        daemons.append(d)
    seen = [d.endpoint for d in daemons]
    if dup := next((e for e in seen if seen.count(e) > 1), None):
        raise ConfigError("daemons.endpoint", dup, "listed twice; each daemon once")
    return HubConfig(hub, tuple(daemons))


def load_hub_config(path: str | Path) -> HubConfig:
    return hub_config_from(read_toml(path))
