"""A subscriber heals a gap in seq exactly: every well state changed since the last seq it held,
older timepoints and (well, timepoint)s it never held included (the since-request).

The gap is made on purpose by a lossy link: a ZeroMQ XSUB/XPUB forwarder between the daemon and
the subscribers (as the hub is) that drops every message while told to, like a subscriber cut off
during a daemon restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import zmq

from wellwatch.client import StreamState, follow
from wellwatch.results.journal_reader import well_history
from wellwatch.core.stream_schema import SnapshotRequest, parse_snapshot_request, snapshot_request
from wellwatch.harness import free_port, local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

from .conftest import wait_ready


class LossyLink(threading.Thread):
    """XSUB (to the daemon) -> XPUB (to subscribers); drops every message while `dropping` is set."""

    def __init__(self, upstream: str):
        super().__init__(daemon=True)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.context = zmq.Context()
        self.xsub = self.context.socket(zmq.XSUB)
        self.xsub.connect(upstream)
        self.xpub = self.context.socket(zmq.XPUB)
        self.xpub.bind(self.endpoint)
        self.dropping = threading.Event()
        self.dropped: list[dict] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        while not self.stopped.is_set():
            ready = dict(poller.poll(50))
            if self.xpub in ready:  # subscriptions travel upstream
                self.xsub.send_multipart(self.xpub.recv_multipart())
            if self.xsub in ready:
                topic, payload = self.xsub.recv_multipart()
                if self.dropping.is_set():
                    self.dropped.append(json.loads(payload))
                else:
                    self.xpub.send_multipart([topic, payload])
        self.xsub.close(0)
        self.xpub.close(0)
        self.context.term()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


@pytest.mark.unit
def test_since_requests_round_trip_and_bad_ones_name_what_is_allowed():
    asked = parse_snapshot_request(snapshot_request(since={"scope-a": 41}))
    assert asked == SnapshotRequest(None, {"scope-a": 41}) and asked.since_for("scope-a") == 41
    assert asked.since_for("scope-b") is None  # another daemon: its plain snapshot
    assert parse_snapshot_request(snapshot_request()) == SnapshotRequest()
    assert parse_snapshot_request(snapshot_request((1, 3))).timepoints == (1, 3)
    for bad in (b'{"request": "snapshot", "since": 5}', b'{"request": "snapshot", "since": {"a": -1}}',
                b'{"request": "snapshot"}'):
        with pytest.raises(ValueError, match='"since": {"<source>": seq}'):
            parse_snapshot_request(bad)


@pytest.mark.unit
def test_load_since_keeps_what_it_holds_and_takes_each_sources_seq():
    state = StreamState()
    state.load_snapshot({"seqs": {"a": 5, "b": 9}, "wells": [
        {"source": "a", "plate": "p", "well": "A1", "timepoint": 3, "seq": 5, "frames": 1}]})
    state.load_since({"seqs": {"a": 12, "b": 9}, "wells": [
        {"source": "a", "plate": "p", "well": "A1", "timepoint": 1, "seq": 8, "frames": 2}]})
    assert state.seqs == {"a": 12, "b": 9}
    assert set(state.wells) == {("p", "A1", 3), ("p", "A1", 1)}


def wait_done(config, n: int, timeout: float = 60) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(config.journal.path) as db:
            if db.execute("SELECT COUNT(*) FROM frames WHERE state = 'done'").fetchone()[0] >= n:
                return
        assert time.monotonic() < deadline, f"fewer than {n} frames done"
        time.sleep(0.05)


def view(wells) -> dict:
    return {(w["plate"], w["well"], w["timepoint"]): (w["seq"], w["frames"], w["complete"], w["counts"])
            for w in wells}


@pytest.mark.integration
def test_a_gap_spanning_timepoints_is_healed_exactly(tmp_path):
    """Timepoints 1 and 2 of every well are lost on the way (the subscriber never held any of them);
    at the gap the daemon's latest timepoint is 2, so the plain snapshot plus ranges of open
    timepoints held (the old healing) lost every well at timepoint 1 for good."""
    spec = SimulationSpec(wells=("A1", "A2", "A3"), fields=1, timepoints=4, size=128, cells_per_field=6,
                          channels=("BF",), plate_name="gap", seed=5, write_mode="rename")
    config = local_config(tmp_path, spec, **{"publish.heartbeat_s": 0.3})
    staging = tmp_path / "staging"
    write_plate(spec, staging)
    by_t: dict[int, list] = {}
    for p in sorted((staging / "data").glob("*.tif")):
        by_t.setdefault(int(p.name.split("--T")[1][:5]), []).append(p)
    data = tmp_path / "acquisition" / "data"
    running = start_daemon(config)
    link = LossyLink(config.publish.endpoint)
    link.start()
    states: list[StreamState] = []
    replies: list[dict] = []

    def subscriber() -> None:
        for kind, message, state in follow(link.endpoint, config.publish.snapshot_endpoint, timeout_s=20):
            if kind == "snapshot":
                replies.append(message)
            states[:] = [state]

    sub = None
    try:
        wait_ready(config)
        follower = threading.Thread(target=subscriber, daemon=True)
        follower.start()
        cli = [sys.executable, "-m", "wellwatch", "subscribe", link.endpoint, "--snapshot",
               config.publish.snapshot_endpoint, "--timeout", "60"]
        sub = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # both subscribed and snapshotted
        for t in range(4):
            if t == 1:
                link.dropping.set()
            for p in by_t[t]:
                p.rename(data / p.name)
            wait_done(config, 3 * (t + 1))
            time.sleep(0.5)  # the last messages of the timepoint went by (or were dropped)
            if t == 2:
                link.dropping.clear()
        assert {(m["well"], m["timepoint"]) for m in link.dropped if m["type"] == "well"} >= \
            {(w, t) for w in spec.wells for t in (1, 2)}
        own = well_history(config.journal.path)
        deadline = time.monotonic() + 20
        while not states or view(states[0].wells.values()) != view(own):
            held = view(states[0].wells.values()) if states else {}
            assert time.monotonic() < deadline, ("the subscriber never caught up; (well, timepoint)s it lacks: "
                                                 f"{sorted(k for k in view(own) if k not in held)}")
            time.sleep(0.1)
        state = states[0]
        assert state.gaps >= 1 and len(state.wells) == 12
        assert all(w["frames"] == 1 and w["complete"] for w in state.wells.values())
        healing = [r for r in replies[1:] if "since" in r]
        assert healing and {(w["well"], w["timepoint"]) for r in healing for w in r["wells"]} >= \
            {(w, t) for w in spec.wells for t in (1, 2)}
        time.sleep(1)  # the command line subscriber healed the same gap (it prints each line at once)
        sub.terminate()
        out, err = sub.communicate(timeout=30)
        printed = [json.loads(line) for line in out.splitlines()]
        healed = [m for m in printed if m["type"] == "snapshot" and "since" in m]
        assert healed, err
        assert {(w["well"], w["timepoint"]) for m in healed for w in m["wells"]} >= \
            {(w, t) for w in spec.wells for t in (1, 2)}
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
        link.stop()
        assert running.stop() == 0
