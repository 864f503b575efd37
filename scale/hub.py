"""The facility hub: many daemons' streams fanned into one, and one merged snapshot.

- Updates: a ZeroMQ XSUB/XPUB proxy (`zmq.proxy_steerable`): XSUB connects to every daemon's PUB,
  XPUB binds the hub's endpoint; subscriptions travel upstream, messages down, untouched. Each
  message names its `source` and counts `seq` per source, so a subscriber still sees gaps.
  ZeroMQ reconnects to a daemon that restarts on its endpoint and re-sends the subscriptions.
- Late joiners: the hub's ROUTER answers a snapshot request (plain, a range of timepoints, or the
  states changed since each source's seq: a subscriber healing a gap) by asking every daemon's
  snapshot endpoint the same and replying with the union (`merge_snapshots`), plus each source's
  seq (`seqs`). The hub holds no state of its own:
  whatever the daemons' snapshots hold, it passes on.
"""

from __future__ import annotations

import json
import logging
import threading

import zmq

from wellwatch.client import request_snapshot
from wellwatch.daemon.stages.publish import MAX_REQUEST_BYTES, bind
from wellwatch.core.stream_schema import SCHEMA_VERSION, parse_snapshot_request

from .hub_config import HubConfig

log = logging.getLogger(__name__)

_ENVELOPE_KEYS = {"schema", "type", "source", "seq"}
_SAME_FOR_ALL = {"timepoints"}  # echoes of the request: one copy in the merged reply


def merge_snapshots(replies: list[tuple[str, dict]], unreachable: list[str]) -> dict:
    """(daemon endpoint, its snapshot) pairs -> one snapshot: list-valued parts (e.g. `wells`)
    concatenated, each item tagged with its source; `seqs` source -> seq; other parts per source."""
    merged: dict = {"schema": SCHEMA_VERSION, "type": "snapshot", "seqs": {}, "sources": {},
                    "unreachable": list(unreachable), "wells": []}
    for endpoint, reply in replies:
        if reply.get("type") != "snapshot":
            log.error("daemon %s answered the snapshot request with %s", endpoint, reply)
            merged["unreachable"].append(endpoint)
            continue
        source = reply.get("source") or endpoint  # a daemon from before `source`: its endpoint names it
        if source in merged["seqs"]:
            log.error("two daemons call themselves %r (%s and %s): give each its own publish.source",
                      source, merged["sources"][source]["endpoint"], endpoint)
        merged["seqs"][source] = reply["seq"]
        extra = {"endpoint": endpoint}
        for key, value in reply.items():
            if key in _ENVELOPE_KEYS:
                continue
            if key in _SAME_FOR_ALL:
                merged[key] = value
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(
                    dict(item, source=item.get("source") or source) if isinstance(item, dict) else item
                    for item in value)
            else:
                extra[key] = value
        merged["sources"][source] = extra
    owners: dict[str, set] = {}
    for w in merged["wells"]:
        if isinstance(w, dict) and "plate" in w:
            owners.setdefault(w["plate"], set()).add(w["source"])
    for plate, sources in owners.items():
        if len(sources) > 1:  # subscribers key wells by (plate, well, timepoint): one would hide another
            log.warning("plate %r comes from %s: give each acquisition its own plate.name", plate, sorted(sources))
    return merged


class Hub:
    """Two threads: the proxy (updates) and the snapshot server. `stop()` ends both."""

    def __init__(self, config: HubConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._control_endpoint = f"inproc://hub-control-{id(self)}"
        self._control = self.context.socket(zmq.PAIR)
        self._control.bind(self._control_endpoint)
        self.xpub = self.context.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, 1_000_000)
        self.xpub.setsockopt(zmq.LINGER, 0)
        bind(self.xpub, config.hub.endpoint, "hub.endpoint")
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # as the daemons: requests are small
        try:
            bind(self.router, config.hub.snapshot_endpoint, "hub.snapshot_endpoint")
        except BaseException:
            self.xpub.close()
            raise
        self.xsub = self.context.socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.RCVHWM, 1_000_000)
        self.xsub.setsockopt(zmq.LINGER, 0)
        for d in config.daemons:
            self.xsub.connect(d.endpoint)
        self.snapshots_served = 0
        self._threads = [threading.Thread(target=self._proxy, name="hub-proxy", daemon=True),
                         threading.Thread(target=self._serve_snapshots, name="hub-snapshot", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()
        log.info("hub: %d daemons -> %s (snapshots on %s)", len(self.config.daemons),
                 self.config.hub.endpoint, self.config.hub.snapshot_endpoint)

    def stop(self) -> None:
        self._stop.set()
        self._control.send(b"TERMINATE")
        for t in self._threads:
            t.join(10)
        self._control.close()

    def _proxy(self) -> None:
        control = self.context.socket(zmq.PAIR)
        control.connect(self._control_endpoint)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close()
            self.xsub.close()
            self.xpub.close()

    def merged_snapshot(self, timepoints: tuple[int, int] | None = None,
                        since: dict[str, int] | None = None) -> dict:
        """Every daemon asked the same; with `since` (source -> seq) each answers for its own source."""
        replies, unreachable = [], []
        for d in self.config.daemons:
            try:
                replies.append((d.snapshot_endpoint, request_snapshot(
                    self.context, d.snapshot_endpoint, timeout_s=self.config.hub.snapshot_timeout_s,
                    timepoints=timepoints, since=since)))
            except TimeoutError:
                log.warning("daemon %s: no snapshot within %.1f s; left out of this one",
                            d.snapshot_endpoint, self.config.hub.snapshot_timeout_s)
                unreachable.append(d.snapshot_endpoint)
        return merge_snapshots(replies, unreachable)

    def _serve_snapshots(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.router.poll(100):
                    continue
                frames = self.router.recv_multipart()
                ident, request = frames[0], frames[-1]
                try:
                    asked = parse_snapshot_request(request)  # the daemons' own request format
                except ValueError as e:
                    reply = {"schema": SCHEMA_VERSION, "type": "error", "error": str(e)}
                else:
                    reply = self.merged_snapshot(asked.timepoints, asked.since)
                    self.snapshots_served += 1
                self.router.send_multipart([ident, b"", json.dumps(reply).encode()])
        finally:
            self.router.close()
