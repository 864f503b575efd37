"""The gate stage (thread "gate"): discovery in, complete files out to the readers.

It owns the watcher (`Discovery`: observer + scans), the completeness gate, the names it has
ignored and the retry schedule's hand-outs. A file's name is parsed once, when discovery offers it,
and travels with it as a `FrameFile`, which also carries the vendor's pixel size. `.nd2` files skip
the gate: each poll hands out the frames that became readable in them (Nd2Tracker), and the first
one supplies the plate layout when no vendor file did. Fields still short of a model channel are
reported from here (ChannelJoin). Per poll: take what discovery offered, let the gate decide what is
complete, journal those as on their way (`inflight`), put them on the readers' queue, and put back
retries that are due. A periodic reconcile scan finds what events missed and notices the root going
and coming.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import time
from typing import Callable

from wellwatch.core.errors import FrameReadError, NamingError
from wellwatch.core.files.nd2 import frame_key, nd2_layout
from wellwatch.core.files.tiff_complete import tiff_is_complete, tiff_being_filled
from wellwatch.core.layouts import PlateLayout
from wellwatch.core.naming import FrameMeta, NamingScheme
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.journal import Journal
from wellwatch.daemon.messages import FailedFrame, FrameFile, LayoutEvent, StatusEvent
from wellwatch.daemon.retry import RetrySchedule
from wellwatch.daemon.settle_gate import CompletenessGate, ReadyFile
from wellwatch.daemon.suspect_read import SuspectReads
from wellwatch.daemon.watcher import Discovery

log = logging.getLogger(__name__)

_WATCH_CHECK_S = 0.2  # how often the gate checks the root folder and the observer (a stat call)


class GateStage:
    def __init__(self, ctx: StageContext, naming: NamingScheme, to_read: queue.Queue, to_commit: queue.Queue,
                 retries: RetrySchedule, layout: PlateLayout | None = None,
                 suspects: dict[tuple[str, int, int], tuple[int, int]] | None = None,
                 on_ignored: Callable[..., None] = lambda rel, reason, channel=None: None):
        config = ctx.config
        self.config, self.root, self.naming, self.metrics = config, ctx.root, naming, ctx.metrics
        self.ledger, self.nd2, self.join, self.stop_event = ctx.ledger, ctx.nd2, ctx.join, ctx.stopping.event
        self.to_read, self.to_commit, self.retries = to_read, to_commit, retries
        self.on_ignored = on_ignored  # diagnostics
        self.layout = layout  # the vendor's plate layout: the pixel size the frames carry
        # no vendor layout yet: an .nd2 file's metadata may give one
        self.needs_layout = layout is None and config.plate.layout == "auto"
        self._nd2_files: set[str] = set()  # .nd2 paths still growing or not yet fully handed out
        self._nd2_seen: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) at its last look
        # (rel, size, mtime_ns) -> daemon deaths while it was being read (with others, alone): each
        # is read first in an isolated process, which alone decides a quarantine (suspect_read.py)
        self.suspects = suspects or {}
        self.suspect_reads = SuspectReads(config.limits)
        self._outgoing: list[FrameFile] = []  # claimed this poll, handed to readers at its end
        self.discovered: queue.Queue = queue.Queue()
        self._ignored: set[str] = set()
        self._inflight_marks: list[tuple[str, int, int, str]] = []
        self._root_was_available = True
        self.discovery = Discovery(self.root, self._on_path, config.watch.observer, config.watch.recursive,
                                   config.watch.extensions)
        self._root_identity = self.discovery.root_identity()  # the folder the observer watches
        self._next_watch_check = 0.0

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _on_path(self, path: str, renamed: bool) -> None:
        self.discovered.put((path, renamed))

    def accept_name(self, path: str) -> FrameMeta | None:
        """Parse the name; a non-matching or other-channel file is counted and logged once."""
        if path in self._ignored:
            return None
        try:  # the path below the root: folder-aware presets (imagexpress) read TimePoint_N/ZStep_M
            meta = self.naming.parse(self.rel(path))
        except NamingError as e:
            self._ignored.add(path)
            self.metrics.frames.labels("unmatched_name").inc()
            log.warning("ignoring %s: %s", self.rel(path), e.reason)
            self.on_ignored(self.rel(path), "unmatched_name")
            return None
        # a name without a channel holds the one channel (NIS-Elements without the c dimension),
        # or with a multi-channel model all of them, in its pages
        if meta.channel and meta.channel not in self.config.channels.files():
            self._ignored.add(path)
            self.metrics.frames.labels("other_channel").inc()
            self.on_ignored(self.rel(path), "other_channel", meta.channel)
            return None
        return meta

    # --- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        journal = Journal(self.config.journal.path)  # this thread's connection: records files seen and read
        try:
            self._polls(journal)
        finally:
            journal.close()
            self.suspect_reads.close()

    def _polls(self, journal: Journal) -> None:
        cfg = self.config.watch
        structure = cfg.completeness == "structure"
        gate = CompletenessGate(cfg.settle_polls, prove=tiff_is_complete if structure else None,
                                zero_tail=tiff_being_filled if structure else None,
                                zero_tail_max_wait_s=cfg.zero_tail_max_wait_s)
        interval = max(cfg.settle_s / cfg.settle_polls, 0.005)
        next_reconcile = time.monotonic() + cfg.reconcile_s
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            self._watch_the_watcher(t0)
            self._drain_discovered(gate)
            if t0 >= next_reconcile:
                self._reconcile()
                self._drain_discovered(gate)
                next_reconcile = t0 + cfg.reconcile_s
            for r in gate.poll():
                self._dispatch(r)
            self._take_suspect_verdicts()
            outgoing, self._outgoing = self._outgoing, []
            # "read" only for what is really handed to a reader now: a death counts against these
            self._inflight_marks += [(j.rel, j.size, j.mtime_ns, "read") for j in outgoing]
            released = self.ledger.take_released()
            if self._inflight_marks or released:  # one transaction per poll, and before readers can finish them
                journal.mark_inflight(self._inflight_marks, forget=released)
                self._inflight_marks = []
            for file in outgoing:
                self._hand_to_readers(file)
            self._offer_nd2_frames(journal)
            self._report_missing_channels()
            self._dispatch_due_retries(t0)
            self.metrics.queue_depth.labels("gate").set(len(gate))
            self._wait_for_discovery(t0 + interval)

    def _hand_to_readers(self, file: FrameFile) -> None:
        """Put a file on the readers' queue; blocks while it is full (back-pressure on discovery)."""
        while not self.stop_event.is_set():
            try:
                self.to_read.put(file, timeout=0.1)
                return
            except queue.Full:
                continue

    def _wait_for_discovery(self, until: float) -> None:
        """Sleep until the next poll, but wake at once for a new file: renamed files need no settling."""
        try:
            path, renamed = self.discovered.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return
        self.discovered.put((path, renamed))  # handled by the next drain, in order with the rest

    def _drain_discovered(self, gate: CompletenessGate) -> None:
        while True:
            try:
                path, renamed = self.discovered.get_nowait()
            except queue.Empty:
                return
            if path.lower().endswith(".nd2"):
                self._nd2_files.add(path)  # polled for readable frames; no naming, no gate
                continue
            candidate = gate.candidates.get(path)  # a file being written: its name was parsed at its first event
            meta = candidate.meta if candidate is not None else self.accept_name(path)
            if meta is None:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            identity = (self.rel(path), st.st_size, st.st_mtime_ns)
            if self.ledger.needs_look(identity):
                if path not in gate.candidates:
                    self._inflight_marks.append((*identity, "seen"))
                # a file holding a field's channels may be a stack written page by page: each page
                # leaves a valid, shorter TIFF that no structure tells from the finished one
                gate.offer(path, renamed, provable=self.join is None or bool(meta.channel), meta=meta)

    def _watch_the_watcher(self, now: float) -> None:
        """The root gone, back, or replaced by a new folder, or the observer dead: act at once (a
        restarted observer and a scan), not at the next reconcile scan."""
        if now < self._next_watch_check:
            return
        self._next_watch_check = now + _WATCH_CHECK_S
        identity = self.discovery.root_identity()
        available = identity is not None
        self.metrics.watch_root_up.set(1 if available else 0)
        came_back = available and not self._root_was_available
        if available != self._root_was_available:
            self._root_was_available = available
            event = "root_available" if available else "root_unavailable"
            log.warning("watch.root %s is %s", self.root, "back" if available else
                        "gone (share dropped?); results so far are kept, watching for its return")
            self.to_commit.put(StatusEvent("watch", {"event": event, "root": self.root}))
        if not available or self.stop_event.is_set():
            return
        why = ("root_replaced" if identity != self._root_identity or self.discovery.root_lost.is_set() else
               "observer_died" if not self.discovery.observer_alive() else None)
        if why is not None and self.discovery.restart_observer():
            self._root_identity = identity
            if not came_back:  # a folder deleted and re-created between two checks, or a dead thread
                log.warning("watch.root %s: %s; observer restarted", self.root, why.replace("_", " "))
                self.to_commit.put(StatusEvent("watch", {"event": "observer_restarted", "reason": why,
                                                         "root": self.root}))
            self.discovery.scan()  # what was written while nothing watched

    def _reconcile(self) -> None:
        if self.discovery.root_identity() is not None:
            self.discovery.scan()

    def _dispatch(self, ready: ReadyFile) -> None:
        job = FrameFile(ready.path, self.rel(ready.path), ready.meta, ready.size, ready.mtime_ns,
                        pixel_size_um=self.layout.pixel_size_um if self.layout is not None else None)
        if not self.ledger.claim(job.rel):
            return
        if (job.rel, job.size, job.mtime_ns) in self.suspects:
            # nothing waits behind it: the other files of the plate (its field's other channels
            # too) go on to the readers while it is checked
            log.info("%s was being read when the daemon died: reading it in an isolated process first", job.rel)
            self.suspect_reads.submit(job, channels=self.join is not None and not job.meta.channel)
        else:
            self._outgoing.append(job)

    def _take_suspect_verdicts(self) -> None:
        """Suspects that read in their isolated process go to the readers; the others are quarantined."""
        for job, reason in self.suspect_reads.take_done():
            self.suspects.pop((job.rel, job.size, job.mtime_ns), None)
            if reason is None:
                self._outgoing.append(job)
            else:
                log.error("%s: %s; quarantined instead of read in the daemon", job.rel, reason)
                self.to_commit.put(FailedFrame(job, "", reason))

    def _dispatch_due_retries(self, now: float) -> None:
        for job in self.retries.take_due(now):
            try:
                st = os.stat(job.path)
            except OSError:
                st = None
            if st is not None and job.nd2_index is None:
                job = dataclasses.replace(job, size=st.st_size, mtime_ns=st.st_mtime_ns)
            self._hand_to_readers(job)

    # --- .nd2 files and multi-channel fields -------------------------------------------------

    def _offer_nd2_frames(self, journal: Journal) -> None:
        """Hand out each .nd2 frame that became readable (complete on disk) since the last poll."""
        for path in sorted(self._nd2_files):
            rel = self.rel(path)
            try:
                st = os.stat(path)
                if self._nd2_seen.get(path) == (st.st_size, st.st_mtime_ns):
                    continue  # unchanged since the last look: nothing new can be readable
                self._nd2_seen[path] = (st.st_size, st.st_mtime_ns)
                frames = self.nd2.offer(path, rel)
            except (FrameReadError, OSError) as e:
                log.warning("ignoring %s: %s", rel, getattr(e, "reason", e))
                self._nd2_files.discard(path)
                continue
            contents = self.nd2.contents.get(path)
            if contents is not None and self.needs_layout:
                self.needs_layout = False
                self.layout = nd2_layout(contents, self.naming.default_well, self.naming.default_plate)
                self.to_commit.put(LayoutEvent(self.layout))
            marks, jobs = [], []
            for f in frames:
                meta = FrameMeta(self.naming.default_plate, f.well or self.naming.default_well, f.field,
                                 f.timepoint, f.z, self.config.channels.label_free[0])
                job = FrameFile(path, frame_key(rel, f.index), meta, 0, st.st_mtime_ns, nd2_index=f.index,
                                pixel_size_um=contents.pixel_size_um if contents is not None else None)
                marks.append((job.rel, 0, st.st_mtime_ns, "read"))
                jobs.append(job)
            if marks:  # as for files: the frame_status view shows them on their way
                journal.mark_inflight(marks)
            for job in jobs:
                if self.ledger.claim(job.rel):
                    self._hand_to_readers(job)
            if self.nd2.finished(path):
                self._nd2_files.discard(path)  # closed and all handed out; a later write re-adds it

    def _report_missing_channels(self) -> None:
        if self.join is None:
            return
        for m in self.join.overdue():
            plate, well, timepoint, field_index, z = m.key
            self.metrics.frames.labels("channel_missing").inc()
            log.warning("%s %s timepoint %d field %d z %d: channel(s) %s missing %.0f s after %s arrived; "
                        "the field is scored if they arrive", plate, well, timepoint, field_index, z,
                        list(m.missing), m.waited_s, list(m.present))
            self.to_commit.put(StatusEvent("channel_missing", {
                "plate": plate, "well": well, "timepoint": timepoint, "field": field_index, "z": z,
                "present": list(m.present), "missing": list(m.missing), "waited_s": round(m.waited_s, 3)}))
