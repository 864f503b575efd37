"""The reference stream client (the ZeroMQ guide's Clone pattern), for dashboards to copy.

Works against one daemon or a hub (`wellwatch hub`): seq is tracked per message `source`.

1. SUBscribe first, so updates published meanwhile are queued;
2. ask the snapshot endpoint for the current state and the seq it corresponds to;
3. apply only updates with a higher seq; a gap in seq means lost messages: ask for every well
   state changed since the last seq held (per source), which heals the gap exactly, older
   timepoints and (well, timepoint)s never held included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator

import zmq

from wellwatch.core.config_files import default_snapshot_endpoint
from wellwatch.core.stream_schema import snapshot_request
from wellwatch.net.security import apply_client_keys


@dataclass(frozen=True)
class CurveKeys:
    """For a daemon with CurveZMQ: its public key file and this client's .key_secret file."""

    server_public: str
    client_secret: str

    def apply(self, socket: zmq.Socket) -> None:
        apply_client_keys(socket, self.server_public, self.client_secret)


def request_snapshot(context: zmq.Context, endpoint: str, timeout_s: float = 5.0,
                     curve: CurveKeys | None = None, timepoints: tuple[int, int] | None = None,
                     since: dict[str, int] | None = None) -> dict:
    """The daemon's state: the latest timepoint of each well, or with `timepoints` (first, last)
    every well at each of those timepoints, or with `since` (source -> seq) every well state changed
    after that seq (both from the journal; for history in bulk read the journal itself:
    `wellwatch.results.journal_reader.well_history`)."""
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(req)
    # Without a send timeout, a REQ whose only peer refused it (a failed CURVE handshake) blocks forever.
    req.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    req.connect(endpoint)
    try:
        try:
            req.send(snapshot_request(timepoints, since))
        except zmq.Again:
            raise TimeoutError(f"cannot send a snapshot request to {endpoint} within {timeout_s} s; "
                               "is the daemon running (and are the CurveZMQ keys right)?") from None
        if not req.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no snapshot from {endpoint} within {timeout_s} s; is the daemon running?")
        return json.loads(req.recv())
    finally:
        req.close()


@dataclass
class StreamState:
    """The client's copy of the state: latest well message per (plate, well, timepoint).
    A snapshot brings each well's latest timepoint; updates add the timepoints that follow.

    `seqs` holds the last seq applied per source: one entry behind a daemon, one per daemon behind
    a hub (`wellwatch hub`), whose streams interleave but each count on their own.
    """

    seqs: dict[str | None, int] = field(default_factory=dict)
    wells: dict[tuple, dict] = field(default_factory=dict)
    gaps: int = 0     # times a gap forced a new snapshot
    missed: int = 0   # messages lost to those gaps (a slow subscriber overran its queue)

    @property
    def seq(self) -> int:
        """The last seq applied (the highest over sources behind a hub)."""
        return max(self.seqs.values(), default=0)

    def load_snapshot(self, snapshot: dict) -> None:
        """A daemon's snapshot ({source, seq}) or a hub's merged one ({seqs: source -> seq}); earlier
        timepoints already held are kept (a snapshot holds each well's latest timepoint only)."""
        if "seqs" in snapshot:
            self.seqs = dict(snapshot["seqs"])
        else:
            self.seqs = {snapshot.get("source"): snapshot["seq"]}
        self.wells.update({(w["plate"], w["well"], w["timepoint"]): w for w in snapshot["wells"]})

    def open_timepoints(self) -> tuple[int, int] | None:
        """(first, last) timepoint among the wells held that are not complete: what a gap may have
        left stale beyond the snapshot's latest timepoints (None: nothing open)."""
        open_ = [t for (_, _, t), w in self.wells.items() if not w.get("complete")]
        return (min(open_), max(open_)) if open_ else None

    def load_range(self, reply: dict) -> None:
        """Well messages of older timepoints (a range snapshot): each replaces an older one it holds."""
        for w in reply.get("wells", []):
            key = (w["plate"], w["well"], w["timepoint"])
            held = self.wells.get(key)
            if held is None or held.get("source") != w.get("source") or w["seq"] > held["seq"]:
                self.wells[key] = w

    def load_since(self, reply: dict) -> None:
        """A since-reply (from a daemon, or merged by a hub): the well states changed after the seqs
        asked for, each source's seq now; a source not asked about answered its plain snapshot."""
        if "seqs" in reply:
            self.seqs.update(reply["seqs"])
        else:
            self.seqs[reply.get("source")] = reply["seq"]
        self.load_range(reply)

    def missing_before(self, message: dict) -> int | None:
        """How many of the message's source's messages were lost before it (0: none); None for a source
        the last snapshot did not know (a daemon that joined the hub since)."""
        last = self.seqs.get(message.get("source"))
        if last is None:
            return None
        return max(0, message["seq"] - last - 1)

    def apply(self, message: dict) -> bool:
        """Apply an update; False if it is old (seq at or below its source's)."""
        source = message.get("source")
        if message["seq"] <= self.seqs.get(source, 0):
            return False
        self.seqs[source] = message["seq"]
        if message.get("type") == "well":
            self.wells[(message["plate"], message["well"], message["timepoint"])] = message
        return True


def heal(context: zmq.Context, snapshot_endpoint: str, state: StreamState, curve: CurveKeys | None = None,
         approximate: bool = True) -> dict:
    """Bring `state` up to date after lost messages (or a source new since the snapshot): every well
    state changed since each source's last seq held, exactly. The reply (what it holds) is returned.

    A daemon from before since-requests answers an error: then the plain snapshot, plus by range the
    older timepoints held as incomplete (`approximate`; a (well, timepoint) never held stays lost)."""
    reply = request_snapshot(context, snapshot_endpoint, curve=curve,
                             since={str(s): seq for s, seq in state.seqs.items() if s is not None})
    if reply.get("type") == "snapshot":
        state.load_since(reply)
        return reply
    snapshot = request_snapshot(context, snapshot_endpoint, curve=curve)
    state.load_snapshot(snapshot)
    if approximate and (open_ := state.open_timepoints()) is not None:
        older = request_snapshot(context, snapshot_endpoint, curve=curve, timepoints=open_)
        if older.get("type") == "snapshot":
            state.load_range(older)
            snapshot = dict(snapshot, wells=snapshot["wells"] + older["wells"], timepoints=older["timepoints"])
    return snapshot


def follow(endpoint: str, snapshot_endpoint: str | None = None, topics: tuple[str, ...] = ("",),
           timeout_s: float | None = None, context: zmq.Context | None = None,
           curve: CurveKeys | None = None) -> Iterator[tuple[str, dict, StreamState]]:
    """Yield ("snapshot", snapshot, state) first, then ("update", message, state) for each new message.

    Stops after `timeout_s` without a message (None: never).
    """
    context = context or zmq.Context.instance()
    snapshot_endpoint = snapshot_endpoint or default_snapshot_endpoint(endpoint)
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    if curve is not None:
        curve.apply(sub)
    sub.connect(endpoint)
    for t in topics:
        sub.setsockopt_string(zmq.SUBSCRIBE, t)
    check_gaps = topics == ("",)  # seq counts every topic: gaps are only visible to a full subscriber
    state = StreamState()
    try:
        time.sleep(0.2)  # let the subscription reach the publisher before the snapshot is cut
        snapshot = request_snapshot(context, snapshot_endpoint, curve=curve)
        state.load_snapshot(snapshot)
        yield "snapshot", snapshot, state
        quiet_since = time.monotonic()  # heartbeats do not count as messages for `timeout_s`
        while True:
            wait = None if timeout_s is None else max(0.0, quiet_since + timeout_s - time.monotonic())
            if not sub.poll(None if wait is None else int(wait * 1000)):
                return
            topic, payload = sub.recv_multipart()
            message = json.loads(payload)
            beat = message.get("type") == "heartbeat"  # the last seq sent, repeated while quiet: not an update
            if not beat:
                quiet_since = time.monotonic()
            missing = state.missing_before(message) if check_gaps else 0
            if beat and missing is not None and message["seq"] > state.seqs[message.get("source")]:
                missing += 1  # a heartbeat's seq was sent already: that message itself was lost too
            if missing is None or missing:  # lost messages, or a source new since the snapshot
                if missing:
                    state.gaps += 1
                    state.missed += missing
                snapshot = heal(context, snapshot_endpoint, state, curve, approximate=bool(missing))
                # a source the snapshot lacks: from here on (a heartbeat's seq was sent already)
                state.seqs.setdefault(message.get("source"), message["seq"] - (0 if beat else 1))
                yield "snapshot", snapshot, state
            if not beat and state.apply(message):
                yield "update", dict(message, topic=topic.decode()), state
    finally:
        sub.close()
