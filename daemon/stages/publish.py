"""ZeroMQ publishing: PUB for updates, ROUTER for snapshots (the ZeroMQ guide's Clone pattern).

One thread owns both sockets (ZeroMQ sockets are not thread-safe). It sends what the commit stage
has journaled, in seq order, keeps the latest well message per (plate, well) -- its latest
timepoint -- as the snapshot state (bounded by the plate, however long the time-lapse), and marks
messages sent in the journal. Older timepoints are answered on request from the journal.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path

import zmq

from wellwatch.daemon.journal import Journal, OutboxMessage
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.net.security import CurveServer
from wellwatch.net.sockets import MAX_REQUEST_BYTES, bind
from wellwatch.results.journal_reader import well_history
from wellwatch.core.stream_schema import (HEARTBEAT_TOPIC, SCHEMA_VERSION, SnapshotRequest, heartbeat, parse_snapshot_request, replaces,
                     snapshot_key, stamp_sent)

log = logging.getLogger(__name__)

_STOP = object()


class Publisher(threading.Thread):
    def __init__(self, context: zmq.Context, endpoint: str, snapshot_endpoint: str, journal_path: Path,
                 metrics: DaemonMetrics, send_hwm: int = 100000, curve: CurveServer | None = None,
                 source: str | None = None, heartbeat_s: float = 1.0):
        super().__init__(name="publisher", daemon=True)
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, send_hwm)
        self.pub.setsockopt(zmq.LINGER, 2000)
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # a request is a few bytes of JSON: a peer sending more is disconnected before it is buffered
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if curve is not None:
            curve.apply(self.pub)
            curve.apply(self.router)
        bind(self.pub, endpoint, "publish.endpoint")
        bind(self.router, snapshot_endpoint, "publish.snapshot_endpoint")
        self.journal_path = journal_path
        self.source = source
        self.heartbeat_s = heartbeat_s
        self._last_out = time.monotonic()
        self.metrics = metrics
        self.inbox: queue.Queue = queue.Queue()
        self.state: dict[tuple, dict] = {}
        self.last_seq = 0
        self.error: BaseException | None = None

    def seed_state(self, messages: list[dict], last_seq: int) -> None:
        """Before start: the snapshot state rebuilt from the journal after a restart."""
        for m in messages:
            self._keep(m if m.get("source") is not None else dict(m, source=self.source))
        self.last_seq = last_seq

    def _keep(self, message: dict) -> None:
        if (key := snapshot_key(message)) is not None and replaces(message, self.state.get(key)):
            self.state[key] = message

    def submit(self, messages: list[OutboxMessage]) -> None:
        self.inbox.put(messages)

    def stop(self) -> None:
        """Send everything submitted so far, then close."""
        self.inbox.put(_STOP)

    def run(self) -> None:
        journal = Journal(self.journal_path)
        try:
            self._loop(journal)
        except BaseException as e:  # surfaced to the entry point, which decides to exit
            self.error = e
            log.exception("publisher failed")
        finally:
            journal.close()
            self.pub.close()
            self.router.close()

    def _loop(self, journal: Journal) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        stopping = False
        while True:
            self._answer_snapshots(poller, journal)
            sent_upto = 0
            try:
                while True:  # drain what is waiting, then mark it sent in one transaction
                    item = self.inbox.get(timeout=0.02 if not sent_upto else 0)
                    if item is _STOP:
                        stopping = True
                        break
                    t0 = time.perf_counter()
                    for m in item:
                        self._send(m)
                        sent_upto = m.seq
                    self.metrics.stage_seconds.labels("publish").observe(time.perf_counter() - t0)
            except queue.Empty:
                pass
            if sent_upto:
                journal.mark_sent(sent_upto)
            elif self.heartbeat_s and time.monotonic() - self._last_out >= self.heartbeat_s:
                beat = heartbeat(self.source, self.last_seq)
                self.pub.send_multipart([HEARTBEAT_TOPIC.encode(), json.dumps(beat).encode()])
                self._last_out = time.monotonic()
            self.metrics.queue_depth.labels("publish").set(self.inbox.qsize())
            if stopping:
                self._answer_snapshots(poller, journal)
                return

    def _send(self, m: OutboxMessage) -> None:
        if m.seq <= self.last_seq:
            return  # already sent before a restart; subscribers dedupe by seq anyway
        payload = stamp_sent(m.payload, source=self.source)
        self.pub.send_multipart([m.topic.encode(), json.dumps(payload).encode()])
        self._last_out = time.monotonic()
        self.last_seq = m.seq
        self.metrics.messages.labels(payload["type"]).inc()
        if payload["type"] == "frame" and "latency_s" in payload:
            self.metrics.latency.observe(payload["latency_s"])
        self._keep(payload)

    def _answer_snapshots(self, poller: zmq.Poller, journal: Journal) -> None:
        while dict(poller.poll(0)).get(self.router):
            frames = self.router.recv_multipart()
            ident, request = frames[0], frames[-1]
            try:
                asked = parse_snapshot_request(request)
            except ValueError as e:
                reply = {"schema": SCHEMA_VERSION, "type": "error", "error": str(e)}
            else:
                reply = self._snapshot(asked, journal)
                self.metrics.snapshots.inc()
            self.router.send_multipart([ident, b"", json.dumps(reply).encode()])

    def _snapshot(self, asked: SnapshotRequest, journal: Journal) -> dict:
        """Plain: the latest timepoint per well (in memory). A range or a since-request: from the
        journal, cut at the seq this snapshot holds, so updates after it follow on the stream."""
        since = asked.since_for(self.source)
        if asked.timepoints is None and since is None:
            wells = [self.state[k] for k in sorted(self.state, key=str)]
        else:
            wells = [m if m.get("source") is not None else dict(m, source=self.source)
                     for m in well_history(journal.db, timepoints=asked.timepoints, up_to_seq=self.last_seq,
                                           after_seq=since)]
        reply = {"schema": SCHEMA_VERSION, "type": "snapshot", "source": self.source, "seq": self.last_seq,
                 "wells": wells}
        if asked.timepoints is not None:
            reply["timepoints"] = list(asked.timepoints)
        if since is not None:
            reply["since"] = since
        return reply
