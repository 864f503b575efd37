"""The stream's message schema: topics and envelopes. JSON only, never pickle.

Every message: schema, source, seq, type, plate, well, timepoint, models, t_created (epoch seconds).
`source` names the daemon (publish.source) and `seq` counts per source, so a hub can merge many
daemons' streams and a subscriber still sees each one's gaps.
The publisher adds t_published (and, for frame messages, latency_s) when it sends. A snapshot
holds the latest timepoint of each well; older ones on request by range (`snapshot_request`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

SCHEMA_VERSION = 1
SNAPSHOT_REQUEST = b"snapshot"  # what a client sends to the snapshot endpoint: the latest timepoint per well


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


HEARTBEAT_TOPIC = "status/heartbeat"


def heartbeat(source: str | None, seq: int) -> dict:
    """Sent when the stream has been quiet for publish.heartbeat_s: the last seq sent, not a new one,
    so a subscriber that lost the messages before a quiet spell (e.g. a hub reconnecting to a
    restarted daemon) still sees the gap."""
    return {"schema": SCHEMA_VERSION, "source": source, "seq": seq, "type": "heartbeat", "t_published": time.time()}


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
    """Where a message lives in the snapshot state: one per (plate, well), its latest timepoint."""
    if message.get("type") == "well":
        return (message["plate"], message["well"])
    return None


def replaces(new: dict, old: dict | None) -> bool:
    """True if `new` takes `old`'s place in the snapshot: same or later timepoint (a late frame of an
    earlier timepoint does not push the well back in time)."""
    return old is None or (new["timepoint"] or 0) >= (old["timepoint"] or 0)


@dataclass(frozen=True)
class SnapshotRequest:
    """What a snapshot request asks for: by default each well's latest timepoint; `timepoints`
    (first, last): every well at each of them; `since` (source -> seq): every (well, timepoint)
    whose state changed after that seq (a gap healed exactly: what was lost, nothing more). A
    daemon not named in `since` answers the plain snapshot (a source the client has not met)."""
    timepoints: tuple[int, int] | None = None
    since: dict[str, int] | None = None

    def since_for(self, source: str | None) -> int | None:
        return None if self.since is None else self.since.get(source)


def snapshot_request(timepoints: tuple[int, int] | None = None, since: dict[str, int] | None = None) -> bytes:
    """The request a client sends: plain `snapshot` (latest timepoint per well), or with an
    inclusive range of timepoints, every well at each of them, or with `since` (source -> last
    seq held), every well state changed after it (both served from the journal)."""
    if timepoints is None and since is None:
        return SNAPSHOT_REQUEST
    request: dict = {"request": "snapshot"}
    if timepoints is not None:
        request["timepoints"] = [int(timepoints[0]), int(timepoints[1])]
    if since is not None:
        request["since"] = {str(k): int(v) for k, v in since.items()}
    return json.dumps(request).encode()


def parse_snapshot_request(raw: bytes) -> SnapshotRequest:
    """-> what the request asks for; ValueError (naming what is allowed) if malformed."""
    if raw == SNAPSHOT_REQUEST:
        return SnapshotRequest()
    try:
        request = json.loads(raw)
        if request.get("request") != "snapshot" or not ({"timepoints", "since"} & request.keys()):
            raise ValueError
        timepoints = since = None
        if "timepoints" in request:
            lo, hi = request["timepoints"]
            if not all(type(t) is int for t in (lo, hi)) or lo > hi:
                raise ValueError
            timepoints = (lo, hi)
        if "since" in request:
            since = request["since"]
            if not isinstance(since, dict) or not all(type(v) is int and v >= 0 for v in since.values()):
                raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(f"unknown request {raw[:40]!r}; send {SNAPSHOT_REQUEST!r} or "
                         '{"request": "snapshot", "timepoints": [first, last]} or '
                         '{"request": "snapshot", "since": {"<source>": seq}}') from None
    return SnapshotRequest(timepoints, since)
