"""The reference stream client (the ZeroMQ guide's Clone pattern), for dashboards to copy.

1. SUBscribe first, so updates published meanwhile are queued;
2. ask the snapshot endpoint for the current state and the seq it corresponds to;
3. apply only updates with a higher seq; a gap in seq means lost messages: take a new snapshot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator

import zmq

from .daemon.stream import snapshot_request


def default_snapshot_endpoint(endpoint: str) -> str:
    """tcp://host:5556 -> tcp://host:5557 (the daemon's default layout)."""
    base, _, port = endpoint.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"cannot derive a snapshot endpoint from {endpoint!r}; give --snapshot")
    return f"{base}:{int(port) + 1}"


@dataclass(frozen=True)
class CurveKeys:
    """For a daemon with CurveZMQ: its public key file and this client's .key_secret file."""

    server_public: str
    client_secret: str

    def apply(self, socket: zmq.Socket) -> None:
        from wellwatch.daemon.security import apply_client_keys

        apply_client_keys(socket, self.server_public, self.client_secret)


def request_snapshot(context: zmq.Context, endpoint: str, timeout_s: float = 5.0,
                     curve: CurveKeys | None = None, timepoints: tuple[int, int] | None = None) -> dict:
    """The daemon's state: the latest timepoint of each well, or with `timepoints` (first, last)
    every well at each of those timepoints (from the journal; for history in bulk read the journal
    itself: `wellwatch.daemon.history.well_history`)."""
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(req)
    # Without a send timeout, a REQ whose only peer refused it (a failed CURVE handshake) blocks forever.
    req.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    req.connect(endpoint)
    try:
        try:
            req.send(snapshot_request(timepoints))
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
    """The client's copy of the daemon's state: latest well message per (plate, well, timepoint).
    A snapshot brings each well's latest timepoint; updates add the timepoints that follow."""

    seq: int = 0
    wells: dict[tuple, dict] = field(default_factory=dict)
    gaps: int = 0     # times a gap forced a new snapshot
    missed: int = 0   # messages lost to those gaps (a slow subscriber overran its queue)

    def load_snapshot(self, snapshot: dict) -> None:
        """Take the snapshot's seq and wells; earlier timepoints already held are kept (a snapshot
        holds each well's latest timepoint only)."""
        self.seq = snapshot["seq"]
        self.wells.update({(w["plate"], w["well"], w["timepoint"]): w for w in snapshot["wells"]})

    def apply(self, message: dict) -> bool:
        """Apply an update; False if it is old (seq at or below the state's)."""
        if message["seq"] <= self.seq:
            return False
        self.seq = message["seq"]
        if message.get("type") == "well":
            self.wells[(message["plate"], message["well"], message["timepoint"])] = message
        return True


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
        while True:
            if not sub.poll(None if timeout_s is None else int(timeout_s * 1000)):
                return
            topic, payload = sub.recv_multipart()
            message = json.loads(payload)
            if check_gaps and message["seq"] > state.seq + 1:
                state.gaps += 1
                state.missed += message["seq"] - state.seq - 1
                snapshot = request_snapshot(context, snapshot_endpoint, curve=curve)
                state.load_snapshot(snapshot)
                yield "snapshot", snapshot, state
            if state.apply(message):
                yield "update", dict(message, topic=topic.decode()), state
    finally:
        sub.close()
