"""The stream's message schema: topics and envelopes. JSON only, never pickle.

Every message: schema, source, seq, type, plate, well, timepoint, models, t_created (epoch seconds).
`source` names the daemon (publish.source) and `seq` counts per source, so a hub can merge many
daemons' streams and a subscriber still sees each one's gaps.
The publisher adds t_published (and, for frame messages, latency_s) when it sends.
"""

from __future__ import annotations

import time

SCHEMA_VERSION = 1
SNAPSHOT_REQUEST = b"snapshot"  # what a client sends to the snapshot endpoint


def frame_topic(plate: str, well: str) -> str:
    return f"frame/{plate}/{well}"


def well_topic(plate: str, well: str) -> str:
    return f"well/{plate}/{well}"


def status_topic(kind: str) -> str:
    return f"status/{kind}"


def envelope(seq: int, type_: str, models: dict[str, str], plate: str | None = None,
             well: str | None = None, timepoint: int | None = None, source: str | None = None, **body) -> dict:
    return {"schema": SCHEMA_VERSION, "source": source, "seq": seq, "type": type_, "plate": plate, "well": well,
            "timepoint": timepoint, "models": models, "t_created": time.time(), **body}


def stamp_sent(message: dict, now: float | None = None, source: str | None = None) -> dict:
    """Add send-time fields; latency counts from the moment the file was last written.

    `source` fills in messages journaled before the field existed (re-sent after an upgrade)."""
    now = time.time() if now is None else now
    out = dict(message, t_published=now)
    if out.get("source") is None and source is not None:
        out["source"] = source
    if message.get("type") == "frame" and message.get("t_file") is not None:
        out["latency_s"] = now - message["t_file"]
    return out


def snapshot_key(message: dict) -> tuple | None:
    """What a message replaces in the snapshot state: the latest per (plate, well, timepoint)."""
    if message.get("type") == "well":
        return (message["plate"], message["well"], message["timepoint"])
    return None
