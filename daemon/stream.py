"""The stream's message schema: topics and envelopes. JSON only, never pickle.

Every message: schema, seq, type, plate, well, timepoint, models, t_created (epoch seconds).
The publisher adds t_published (and, for frame messages, latency_s) when it sends. A snapshot
holds the latest timepoint of each well; older ones on request by range (`snapshot_request`).
"""

from __future__ import annotations

import json
import time

SCHEMA_VERSION = 1
SNAPSHOT_REQUEST = b"snapshot"  # what a client sends to the snapshot endpoint: the latest timepoint per well


def frame_topic(plate: str, well: str) -> str:
    return f"frame/{plate}/{well}"


def well_topic(plate: str, well: str) -> str:
    return f"well/{plate}/{well}"


def status_topic(kind: str) -> str:
    return f"status/{kind}"


def envelope(seq: int, type_: str, models: dict[str, str], plate: str | None = None,
             well: str | None = None, timepoint: int | None = None, **body) -> dict:
    return {"schema": SCHEMA_VERSION, "seq": seq, "type": type_, "plate": plate, "well": well,
            "timepoint": timepoint, "models": models, "t_created": time.time(), **body}


def stamp_sent(message: dict, now: float | None = None) -> dict:
    """Add send-time fields; latency counts from the moment the file was last written."""
    now = time.time() if now is None else now
    out = dict(message, t_published=now)
    if message.get("type") == "frame" and message.get("t_file") is not None:
        out["latency_s"] = now - message["t_file"]
    return out


def snapshot_key(message: dict) -> tuple | None:
    """Where a message lives in the snapshot state: one per (plate, well), its latest timepoint."""
    if message.get("type") == "well":
        return (message["plate"], message["well"])
    return None


def replaces(new: dict, old: dict | None) -> bool:
    """True if `new` takes `old`'s place in the snapshot: same or later timepoint (a late frame of an
    earlier timepoint does not push the well back in time)."""
    return old is None or (new["timepoint"] or 0) >= (old["timepoint"] or 0)


def snapshot_request(timepoints: tuple[int, int] | None = None) -> bytes:
    """The request a client sends: plain `snapshot` (latest timepoint per well), or with an
    inclusive range of timepoints, every well at each of them (served from the journal)."""
    if timepoints is None:
        return SNAPSHOT_REQUEST
    lo, hi = timepoints
    return json.dumps({"request": "snapshot", "timepoints": [int(lo), int(hi)]}).encode()


def parse_snapshot_request(raw: bytes) -> tuple[int, int] | None:
    """-> None for the latest timepoint per well, or (first, last) timepoint; ValueError if malformed."""
    if raw == SNAPSHOT_REQUEST:
        return None
    try:
        request = json.loads(raw)
        lo, hi = request["timepoints"]
        if request.get("request") != "snapshot" or not all(type(t) is int for t in (lo, hi)) or lo > hi:
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(f"unknown request {raw[:40]!r}; send {SNAPSHOT_REQUEST!r} or "
                         '{"request": "snapshot", "timepoints": [first, last]}') from None
    return lo, hi
