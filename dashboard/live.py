"""The dashboard's state: every well at every timepoint (history from the journal, then the
stream), dose-response results, model identity and the stream's health.

A follower thread runs the reference client (snapshot, then updates) and records each change
with a version number; the web server hands out changes newer than a version it was given.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import zmq

from wellwatch.client import follow
from wellwatch.core.dose import dose_response, reading_from_message
from wellwatch.core.plate_map import PlateMap
from wellwatch.results.journal_reader import JournalReadError, JournalView
from wellwatch.results.summaries import well_summaries

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 5.0      # follow() returns after this long without a message; we follow again
RETRY_S = 2.0             # after a failed connection
MAX_CHANGES = 20000       # changes kept for slow pages; older ones mean "reload the state"
REFIT_EVERY_S = 1.0       # dashboard-side dose fits: at most this often (a plate's wells arrive in bursts)


@dataclass(frozen=True)
class Source:
    endpoint: str
    snapshot_endpoint: str | None = None
    journal: JournalView | None = None
    fields_expected: int = 0
    plate_format: int = 96
    plate_map: PlateMap | None = None


class LiveState:
    def __init__(self, source: Source):
        self.source = source
        self.lock = threading.Lock()
        self.version = 0
        self.changes: list[tuple[int, str, dict]] = []  # (version, kind, item)
        self.wells: dict[tuple, dict] = {}
        self.dose: dict[tuple, dict] = {}               # (plate, compound, timepoint) -> dose message
        self.models: dict[str, str] = {}
        self.daemon_status: dict = {}
        self.quarantined: list[dict] = []
        self.nothing_counted: dict | None = None  # the daemon's last "why nothing is counted", until resolved
        self.progress: dict | None = None         # its last progress report
        self.started_at: float | None = None      # the daemon's start: frames of files older are its backlog
        # last_latency_s: file -> stream of a live frame; a backlog frame (its file was there before the
        # daemon started) is counted apart, its age is not the pipeline's latency
        self.health = {"connected": False, "error": None, "seq": 0, "gaps": 0, "missed": 0, "messages": 0,
                       "last_message_at": None, "last_latency_s": None, "lag_s": None, "snapshots": 0,
                       "backlog_frames": 0, "backlog_age_s": None}
        self.dirty: set[tuple[str, int]] = set()  # (plate, timepoint) whose dose fits are out of date
        self.last_refit = 0.0
        self.stop_event = threading.Event()
        self.seq_seen = 0  # the highest seq this state has applied (from the stream)
        self.context = zmq.Context()  # our own: terminating it wakes the follower at once on stop()
        self.thread = threading.Thread(target=self._run, name="dashboard-follower", daemon=True)

    # --- reading (web server threads) --------------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {"version": self.version, "plate_format": self.source.plate_format,
                    "wells": list(self.wells.values()), "dose": list(self.dose.values()),
                    "models": dict(self.models), "daemon": dict(self.daemon_status),
                    "quarantined": list(self.quarantined), "health": self._health(),
                    "nothing_counted": self.nothing_counted, "progress": self.progress,
                    "plate_map": self._plate_map_json()}

    def changes_since(self, version: int) -> dict | None:
        """Changed items after `version`; None when they are no longer kept (take a snapshot)."""
        with self.lock:
            if self.changes and version < self.changes[0][0] - 1 and version < self.version:
                return None
            latest: dict[str, dict] = {"wells": {}, "dose": {}}  # only the newest change per item
            for v, kind, item in self.changes:
                if v > version:
                    latest[kind][(item["plate"], item.get("well") or item.get("compound"), item["timepoint"])] = item
            return {"version": self.version, "health": self._health(), "models": dict(self.models),
                    "quarantined": list(self.quarantined), "nothing_counted": self.nothing_counted,
                    "progress": self.progress,
                    **{kind: list(items.values()) for kind, items in latest.items()}}

    def well_history(self, plate: str, well: str) -> dict:
        """Time courses of one well: per timepoint totals and per field, and its frames' QC."""
        frames: list[dict] = []
        if self.source.journal is not None:
            try:
                frames = self.source.journal.frames(plate, well)
            except JournalReadError as e:
                log.warning("%s", e)
        with self.lock:
            totals = sorted((m for (p, w, _), m in self.wells.items() if p == plate and w == well),
                            key=lambda m: m["timepoint"])
        content = self.source.plate_map.wells.get(well) if self.source.plate_map else None
        return {"plate": plate, "well": well, "totals": totals, "frames": frames,
                "content": content.__dict__ if content else None}

    def _health(self) -> dict:
        h = dict(self.health)
        if h["last_message_at"] is not None:
            h["idle_s"] = time.time() - h["last_message_at"]
        return h

    def _plate_map_json(self) -> dict | None:
        pm = self.source.plate_map
        return None if pm is None else {"path": pm.path, "wells": {w: c.__dict__ for w, c in pm.wells.items()}}

    # --- writing (the follower thread) -------------------------------------------------------

    def start(self) -> "LiveState":
        self._load_journal()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.context.term()  # blocking calls in the follower end with ContextTerminated; it closes its sockets
        if self.thread.ident is not None:
            self.thread.join(IDLE_TIMEOUT_S + 2)

    def _record(self, kind: str, item: dict) -> None:
        self.version += 1
        self.changes.append((self.version, kind, item))
        if len(self.changes) > MAX_CHANGES:
            del self.changes[: len(self.changes) - MAX_CHANGES]

    def _load_journal(self) -> None:
        """History the snapshot does not hold (it keeps only recent timepoints)."""
        if self.source.journal is None:
            return
        try:
            frames = self.source.journal.frames()
            summaries = well_summaries(frames, self.source.fields_expected, self.source.journal.expected_images())
            doses = self.source.journal.dose_messages()
        except JournalReadError as e:
            log.warning("%s; time courses start with the stream", e)
            return
        with self.lock:
            for m in summaries:
                key = (m["plate"], m["well"], m["timepoint"])
                if key not in self.wells:  # the stream's message is newer than the journal's sum
                    self.wells[key] = m
                    self._record("wells", m)
            for m in doses:
                self._set_dose(dict(m, source="daemon"))
            self.quarantined = [{k: f[k] for k in ("path", "reason", "plate", "well")}
                                for f in frames if f["state"] == "quarantined"]
            self._set_nothing_counted(self.source.journal.latest_status("nothing_counted"))
            self.dirty |= {(m["plate"], m["timepoint"]) for m in summaries}
            self._refit(force=True)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                for kind, message, state in follow(self.source.endpoint, self.source.snapshot_endpoint,
                                                   timeout_s=IDLE_TIMEOUT_S, context=self.context):
                    self._apply(kind, message, state)
                    if kind == "snapshot" and message["seq"] > self.seq_seen:
                        # messages went by unseen (before the start, or in a gap): a snapshot holds only each
                        # well's latest timepoint, so the timepoints they completed come from the journal
                        self._load_journal()
                    self.seq_seen = max(self.seq_seen, state.seq)
                    if self.stop_event.is_set():
                        return
                with self.lock:  # idle: fits still due are made now
                    self._refit(force=True)
            except zmq.ContextTerminated:
                return
            except (TimeoutError, OSError, zmq.ZMQError) as e:
                with self.lock:
                    self.health.update(connected=False, error=str(e))
                self.stop_event.wait(RETRY_S)

    def _apply(self, kind: str, message: dict, state) -> None:
        now = time.time()
        with self.lock:
            self.health.update(connected=True, error=None, seq=state.seq, gaps=state.gaps, missed=state.missed)
            if kind == "snapshot":
                self.health["snapshots"] += 1
                touched = set()
                for m in message["wells"]:
                    self._set_well(m)
                    touched.add((m["plate"], m["timepoint"]))
                    if m.get("models"):  # a dashboard started after the last update knows the models from here
                        self.models = m["models"]
                self.dirty |= touched
                self._refit()
                return
            self.health["messages"] += 1
            self.health["last_message_at"] = now
            if message.get("t_published") is not None:
                self.health["lag_s"] = max(0.0, now - message["t_published"])
            if message.get("models"):
                self.models = message["models"]
            kind_ = message.get("type")
            if kind_ == "well":
                self._set_well(message)
                self.dirty.add((message["plate"], message["timepoint"]))
                self._refit()
            elif kind_ == "frame" and message.get("latency_s") is not None:
                t_file = message.get("t_file")
                if self.started_at is not None and t_file is not None and t_file < self.started_at:
                    self.health["backlog_frames"] += 1
                    self.health["backlog_age_s"] = message["latency_s"]
                else:
                    self.health["last_latency_s"] = message["latency_s"]
            elif kind_ == "dose":
                self._set_dose(dict(message, source="daemon"))
            elif kind_ == "status" and message.get("kind") == "quarantine":
                self.quarantined.append({"path": message.get("path"), "reason": message.get("reason"),
                                         "plate": message.get("plate"), "well": message.get("well")})
            elif kind_ == "status" and message.get("kind") == "daemon":
                self.daemon_status = {k: message.get(k) for k in ("event", "provider", "t_created")}
                if message.get("event") == "started":
                    self.started_at = message.get("t_created")
                    self.health.update(backlog_frames=0, backlog_age_s=None)
            elif kind_ == "status" and message.get("kind") == "nothing_counted":
                self._set_nothing_counted(message)
            elif kind_ == "status" and message.get("kind") == "progress":
                self.progress = {k: message.get(k) for k in ("frames", "seconds", "total", "last", "latency_ms",
                                                             "backlog_frames", "waiting", "t_created")}
                self.started_at = message.get("started_at", self.started_at)

    def _set_nothing_counted(self, message: dict | None) -> None:
        if message is None or message.get("event") == "resolved":
            self.nothing_counted = None
        else:
            self.nothing_counted = {k: message.get(k) for k in ("message", "files", "reasons", "channels_seen",
                                                                "expects", "examples", "t_created")}

    def _set_well(self, m: dict) -> None:
        self.wells[(m["plate"], m["well"], m["timepoint"])] = m
        self._record("wells", m)

    def _set_dose(self, m: dict) -> None:
        self.dose[(m["plate"], m["compound"], m["timepoint"])] = m
        self._record("dose", m)

    def _refit(self, force: bool = False) -> None:
        """With a plate map given to the dashboard: refit each (plate, timepoint) whose wells changed,
        at most every REFIT_EVERY_S unless forced. A dose message from the daemon takes precedence."""
        pm = self.source.plate_map
        now = time.monotonic()
        if pm is None or not self.dirty or (not force and now - self.last_refit < REFIT_EVERY_S):
            return
        self.last_refit = now
        touched, self.dirty = self.dirty, set()
        for plate, timepoint in sorted(touched):
            readings = {(w, t): reading_from_message(m) for (p, w, t), m in self.wells.items() if p == plate}
            if not readings:
                continue
            first = min(t for _, t in readings)
            for compound in pm.compounds():
                key = (plate, compound, timepoint)
                if self.dose.get(key, {}).get("source") == "daemon":
                    continue
                body = dose_response(pm, compound, readings, timepoint, first)
                if not body["points"]:
                    continue
                self._set_dose({"type": "dose", "plate": plate, "timepoint": timepoint, "source": "dashboard",
                                **body})
