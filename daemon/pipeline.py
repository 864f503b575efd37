"""Wires the stages together: the one place that knows about threads and queues.

    discovery -> gate thread -> read/prepare workers -> inference thread (pooled batches)
              -> commit thread (aggregate + journal + outbox, one transaction per frame)
              -> publisher thread (ZeroMQ PUB + snapshot ROUTER)

With segmentation on, the CPU-heavy part runs in a process pool (all cores): classical
segmentation is called from the prepare workers; a segmentation network's tiles are batched by the
inference thread beside the live/dead patches, and the watershed that turns its maps into cells
(and the single-cell crops for a cell-type model) runs in the pool, handed back through a queue so
the inference thread never waits for it (daemon/inference_stage.py).

Each stage thread only moves data between queues and calls the pure stage functions. A bad frame
is retried, then quarantined; it never stops the pipeline. A bug in a stage stops the daemon with
the error (the entry point decides to exit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from .aggregate import PlateAggregate, TileCounts, cell_fields, count_tiles, live_fraction
from .backend import InferenceBackend
from .config import Config
from .errors import FrameReadError, NamingError, StartupError
from .gate import CompletenessGate, ReadyFile
from .journal import FrameRecord, Journal, OutboxMessage
from .metrics import DaemonMetrics
from .naming import FrameMeta, NamingScheme
from .plate import PLATE_FORMATS
from .cell_calls import cell_dead_probability, live_dead_cells, type_counts
from .inference_stage import FrameWork, InferenceStage
from .preprocess import prepare_tiles
from .segment import ModelSegmenter, SegmentationPool
from .segment_maps import ServeOptions
from .publish import Publisher
from .security import CurveServer
from .reader import decode_frame
from .stream import envelope, frame_topic, status_topic, well_topic
from .watcher import Discovery

log = logging.getLogger(__name__)

_STOP = object()
_COMMIT_GROUP = 256  # outcomes per transaction at most


@dataclass(frozen=True)
class FrameJob:
    path: str
    rel: str
    meta: FrameMeta
    size: int
    mtime_ns: int
    attempt: int = 0


@dataclass(frozen=True)
class FailedFrame:
    job: FrameJob
    sha256: str
    reason: str


@dataclass(frozen=True)
class StatusEvent:
    kind: str
    body: dict


class Pipeline:
    def __init__(self, config: Config, backend: InferenceBackend, metrics: DaemonMetrics,
                 context: zmq.Context | None = None, segmentation_backend: InferenceBackend | None = None,
                 cell_type_backend: InferenceBackend | None = None):
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.contract = backend.contract
        self.seg_method = config.segmentation.method
        self.seg_model = (ModelSegmenter(segmentation_backend, ServeOptions(config.plate.pixel_size_um, config.segmentation.tta))
                          if self.seg_method == "model" else None)
        if self.seg_method == "model" and segmentation_backend is None:
            raise StartupError("segmentation.method = 'model' needs a segmentation model backend")
        self.cell_type = cell_type_backend
        if cell_type_backend is not None and self.seg_method == "none":
            raise StartupError("models.cell_type.path is set but segmentation.method = 'none': cell types need "
                               "segmented cells; set segmentation.method to classical or model")
        self.crop = cell_type_backend.contract.crop if cell_type_backend is not None else None
        self.root = os.path.realpath(config.watch.root)
        if not os.path.isdir(self.root):
            raise StartupError(f"watch.root {config.watch.root}: folder does not exist")
        if len(config.channels.label_free) != len(self.contract.channels):
            raise StartupError(
                f"channels.label_free {list(config.channels.label_free)} gives {len(config.channels.label_free)} "
                f"channel(s) but model {backend.path} ({self.contract.name!r}) expects "
                f"{len(self.contract.channels)} ({', '.join(self.contract.channels)})")
        if len(config.channels.label_free) > 1:
            raise StartupError("channels.label_free: multi-channel models are not supported yet; "
                               "give one channel")
        self.naming = NamingScheme(config.watch.naming, PLATE_FORMATS[config.plate.format],
                                   config.plate_name, config.watch.pattern, config.plate.default_well)
        self.models = {self.contract.name: backend.sha256}
        if self.seg_model is not None:
            self.models[self.seg_model.name] = segmentation_backend.sha256
        if cell_type_backend is not None:
            self.models[cell_type_backend.contract.name] = cell_type_backend.sha256
        self.journal_path = Path(config.journal.path)
        self.aggregate = PlateAggregate(config.plate.fields_per_well)
        self.known: set[tuple[str, int, int]] = set()  # (rel path, size, mtime_ns) already journaled
        # rel paths handed to a reader and not yet journaled: a scan must not hand them out again
        # (a slow stage, e.g. segmentation on a CPU, would otherwise redo in-flight frames)
        self.on_their_way: set[str] = set()
        self.known_content: set[tuple[str, str]] = set()  # (rel path, sha256)
        journal = Journal(self.journal_path)  # SQLite connections stay in their thread: this one is for start-up
        try:
            self.seq = journal.last_seq()
            self._rebuild_from_journal(journal)
            if stale := journal.clear_inflight():
                log.info("%d files were on their way in at the last stop; the start-up scan finds them again", stale)
            snapshot_state = list(journal.sent_payloads("well/"))
            last_sent = journal.last_sent_seq()
            self._unsent = journal.unsent()
        finally:
            journal.close()
        self.context = context or zmq.Context.instance()
        self.curve = (CurveServer(self.context, config.publish.curve_secret_key, config.publish.curve_allowed_clients)
                      if config.publish.curve_secret_key else None)
        try:
            self.publisher = Publisher(self.context, config.publish.endpoint, config.publish.snapshot_endpoint,
                                       self.journal_path, metrics, config.publish.send_hwm, self.curve)
        except BaseException:
            if self.curve is not None:
                self.curve.close()  # its authenticator thread would keep the process alive
            raise
        self.publisher.seed_state(snapshot_state, last_sent)
        self.journal: Journal | None = None  # the commit thread's own connection

        self.stop_event = threading.Event()
        self.fatal: BaseException | None = None
        self._lock = threading.Lock()
        self.discovered: queue.Queue = queue.Queue()
        self.prepared: queue.Queue = queue.Queue(maxsize=config.pipeline.queue_size)
        self.to_commit: queue.Queue = queue.Queue()
        self._ignored: set[str] = set()
        self._retries: list[tuple[float, FrameJob]] = []
        self._inflight_marks: list[tuple[str, int, int, str]] = []  # gate thread only
        self._in_flight = threading.BoundedSemaphore(config.pipeline.queue_size)
        self.pool = ThreadPoolExecutor(config.pipeline.read_workers, thread_name_prefix="prepare")
        self.seg_pool = SegmentationPool(config.segmentation.workers) if self.seg_method != "none" else None
        self.discovery = Discovery(self.root, self._on_path, config.watch.observer, config.watch.recursive,
                                   config.watch.extensions)
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True)
                         for n, f in (("gate", self._gate_loop), ("infer", self._infer_loop),
                                      ("commit", self._commit_loop))]
        self._root_was_available = True

    # --- start-up and shutdown ---------------------------------------------------------------

    def _rebuild_from_journal(self, journal: Journal) -> None:
        """After a restart: what is done, and the per-well state, come from the journal."""
        n = 0
        for r in journal.records():
            self.known.add((r.path, r.size, r.mtime_ns))
            self.known_content.add((r.path, r.sha256))
            if r.state == "done" and r.channel is not None:
                self.aggregate.add(r.plate, r.well, r.timepoint, r.field, r.counts())
            n += 1
        if n:
            log.info("journal %s: %d frames already recorded; last seq %d", self.journal_path, n, self.seq)

    def start(self) -> None:
        self.publisher.start()
        if self._unsent:
            log.info("re-sending %d journaled messages not yet published", len(self._unsent))
            self.publisher.submit(self._unsent)
        for t in self._threads:
            t.start()
        self.to_commit.put(StatusEvent("daemon", {"event": "started", "provider": self.backend.provider,
                                                  "root": self.root, "segmentation": self.segmentation_name}))
        offered = self.discovery.start()
        log.info("watching %s (%s observer); %d files present at start", self.root,
                 self.config.watch.observer, offered)

    @property
    def segmentation_name(self) -> str | None:
        """What counts cells: "classical", the segmentation model's name, or None."""
        if self.seg_method == "none":
            return None
        return self.seg_model.name if self.seg_model is not None else "classical"

    def request_stop(self) -> None:
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested; True if it was."""
        return self.stop_event.wait(timeout)

    def shutdown(self) -> None:
        """Drain: finish frames already being read, score and commit them, publish, close."""
        self.stop_event.set()
        self.discovery.stop()
        self._threads[0].join()  # the gate stops handing out work
        if self.fatal is None:
            self.pool.shutdown(wait=True)
            self.prepared.put(_STOP)
            for t in self._threads[1:]:
                t.join()
        else:  # a stage died: do not wait on queues it no longer drains; the journal is consistent
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.seg_pool is not None:
            self.seg_pool.shutdown()
        self.publisher.stop()
        self.publisher.join(timeout=30)
        if self.curve is not None:
            self.curve.close()
        log.info("stopped after seq %d", self.seq)

    def _guard(self, loop):
        def run():
            try:
                loop()
            except BaseException as e:
                self.fatal = e
                log.exception("stage %s failed; stopping", threading.current_thread().name)
                self.stop_event.set()
        return run

    # --- discovery and gate ------------------------------------------------------------------

    def _on_path(self, path: str, renamed: bool) -> None:
        self.discovered.put((path, renamed))

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _accept_name(self, path: str) -> FrameMeta | None:
        """Parse the name; a non-matching or other-channel file is counted and logged once."""
        if path in self._ignored:
            return None
        name = os.path.basename(path)
        try:
            meta = self.naming.parse(name)
        except NamingError as e:
            self._ignored.add(path)
            self.metrics.frames.labels("unmatched_name").inc()
            log.warning("ignoring %s: %s", self._rel(path), e.reason)
            return None
        # a name without a channel (e.g. NIS-Elements without the c dimension) holds the one channel
        if meta.channel not in self.config.channels.label_free and (meta.channel or len(self.config.channels.label_free) > 1):
            self._ignored.add(path)
            self.metrics.frames.labels("other_channel").inc()
            return None
        return meta

    def _gate_loop(self) -> None:
        journal = Journal(self.journal_path)  # this thread's connection: records files seen and read
        try:
            self._gate_polls(journal)
        finally:
            journal.close()

    def _gate_polls(self, journal: Journal) -> None:
        cfg = self.config.watch
        gate = CompletenessGate(cfg.settle_polls)
        interval = max(cfg.settle_s / cfg.settle_polls, 0.005)
        next_reconcile = time.monotonic() + cfg.reconcile_s
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            self._drain_discovered(gate)
            if t0 >= next_reconcile:
                self._reconcile()
                self._drain_discovered(gate)
                next_reconcile = t0 + cfg.reconcile_s
            ready = gate.poll()
            self._inflight_marks += [(self._rel(r.path), r.size, r.mtime_ns, "read") for r in ready]
            if self._inflight_marks:  # one transaction per poll, and before readers can finish them
                journal.mark_inflight(self._inflight_marks)
                self._inflight_marks = []
            for r in ready:
                self._dispatch(r)
            self._dispatch_due_retries(t0)
            self.metrics.queue_depth.labels("gate").set(len(gate))
            self._wait_for_discovery(gate, t0 + interval)

    def _wait_for_discovery(self, gate: CompletenessGate, until: float) -> None:
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
            if self._accept_name(path) is None:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            identity = (self._rel(path), st.st_size, st.st_mtime_ns)
            with self._lock:
                done = identity in self.known or identity[0] in self.on_their_way
            if not done:
                if path not in gate.candidates:
                    self._inflight_marks.append((*identity, "seen"))
                gate.offer(path, renamed)

    def _reconcile(self) -> None:
        available = self.discovery.root_available()
        self.metrics.watch_root_up.set(1 if available else 0)
        if available != self._root_was_available:
            self._root_was_available = available
            event = "root_available" if available else "root_unavailable"
            log.warning("watch.root %s is %s", self.root, "back" if available else
                        "gone (share dropped?); results so far are kept, watching for its return")
            self.to_commit.put(StatusEvent("watch", {"event": event, "root": self.root}))
            if available:
                self.discovery.restart_observer()  # the old watch died with the folder
        if available:
            self.discovery.scan()

    def _dispatch(self, ready: ReadyFile) -> None:
        meta = self._accept_name(ready.path)
        if meta is None:
            return
        job = FrameJob(ready.path, self._rel(ready.path), meta, ready.size, ready.mtime_ns)
        with self._lock:
            if job.rel in self.on_their_way:
                return
            self.on_their_way.add(job.rel)
        self._submit(job)

    def _arrived(self, rel: str) -> None:
        """A path's processing ended (journaled, a duplicate, or gone): it may be handed out again."""
        with self._lock:
            self.on_their_way.discard(rel)

    def _submit(self, job: FrameJob) -> None:
        while not self._in_flight.acquire(timeout=0.1):  # back-pressure: at most queue_size in flight
            if self.stop_event.is_set():
                return
        self.pool.submit(self._guard_prepare, job)

    def _dispatch_due_retries(self, now: float) -> None:
        with self._lock:
            due = [j for t, j in self._retries if t <= now]
            self._retries = [(t, j) for t, j in self._retries if t > now]
        for job in due:
            try:
                st = os.stat(job.path)
            except OSError:
                st = None
            if st is not None:
                job = FrameJob(job.path, job.rel, job.meta, st.st_size, st.st_mtime_ns, job.attempt)
            self._submit(job)

    # --- read and prepare (worker pool) ------------------------------------------------------

    def _guard_prepare(self, job: FrameJob) -> None:
        try:
            self._prepare(job)
        except BaseException as e:
            self.fatal = e
            log.exception("prepare failed on %s; stopping", job.rel)
            self.stop_event.set()
        finally:
            self._in_flight.release()

    def _prepare(self, job: FrameJob) -> None:
        t0 = time.perf_counter()
        try:
            with open(job.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._arrived(job.rel)
            return  # removed or renamed away before we got to it; a new name is a new candidate
        except OSError as e:
            self._fail(job, "", FrameReadError(job.path, f"cannot read ({e.strerror})"))
            return
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            duplicate = (job.rel, sha) in self.known_content
        if duplicate:  # touched but unchanged: the same frame, already counted
            self.metrics.frames.labels("duplicate").inc()
            self._arrived(job.rel)
            return
        try:
            image = decode_frame(job.path, data)
        except FrameReadError as e:
            self._fail(job, sha, e)
            return
        t1 = time.perf_counter()
        try:
            patches, origins, empty = prepare_tiles([image], self.contract)
            work = FrameWork(job, sha, image.shape, patches, origins[~empty], int(empty.sum()), 0.0)
            self._segment_or_prepare(image, work)
        except Exception as e:  # a frame the model cannot take must not stop the daemon
            log.exception("cannot prepare %s", job.rel)
            self._fail(job, sha, FrameReadError(job.path, f"cannot be prepared for the model "
                                                          f"({type(e).__name__}: {e})", retryable=False))
            return
        t2 = time.perf_counter()
        self.metrics.stage_seconds.labels("read").observe(t1 - t0)
        self.metrics.stage_seconds.labels("prepare").observe(t2 - t1)
        work.t_added = time.monotonic()
        while self.fatal is None:  # bounded queue: back-pressure, unless the inference stage died
            try:
                self.prepared.put(work, timeout=0.5)
                return
            except queue.Full:
                continue

    def _segment_or_prepare(self, image: np.ndarray, work: FrameWork) -> None:
        """Classical: the cells (and crops), segmented in the pool. Model: the network's input tiles."""
        if self.seg_method == "classical":
            t0 = time.perf_counter()
            work.cells, work.crops, work.crop_keep = self.seg_pool.classical(
                image, self.config.segmentation.classical, self.crop).result()
            self.metrics.stage_seconds.labels("segment").observe(time.perf_counter() - t0)
        elif self.seg_model is not None:
            work.seg_input = self.seg_model.prepare(image)
            if self.crop is not None:
                work.image = image  # the pool cuts the crops once the cells are known

    def _fail(self, job: FrameJob, sha: str, error: FrameReadError) -> None:
        if error.retryable and job.attempt < self.config.pipeline.max_retries:
            self.metrics.frames.labels("retried").inc()
            log.info("retrying %s later (attempt %d): %s", job.rel, job.attempt + 1, error.reason)
            retry = FrameJob(job.path, job.rel, job.meta, job.size, job.mtime_ns, job.attempt + 1)
            with self._lock:
                self._retries.append((time.monotonic() + self.config.pipeline.retry_delay_s, retry))
            return
        self.to_commit.put(FailedFrame(job, sha, error.reason))

    # --- inference ---------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        cfg = self.config.batching
        stage = InferenceStage(self.backend, cfg.max_batch, cfg.max_delay_ms / 1000.0, self.metrics,
                               emit=self.to_commit.put,
                               fail=lambda work, reason: self.to_commit.put(FailedFrame(work.job, work.sha256, reason)),
                               seg_model=self.seg_model, seg_batch=self.config.segmentation.max_batch,
                               pool=self.seg_pool, cell_type=self.cell_type)
        while True:
            wait = stage.seconds_until_due(time.monotonic())
            try:
                msg = self.prepared.get(timeout=0.05 if wait is None else min(wait, 0.05))
            except queue.Empty:
                msg = None
            if msg is _STOP:
                stage.drain()
                self.to_commit.put(_STOP)
                return
            if msg is not None:
                stage.admit(msg)
            stage.take_returned()
            self.metrics.queue_depth.labels("prepared").set(self.prepared.qsize())
            self.metrics.queue_depth.labels("batch_patches").set(stage.waiting)
            stage.run_due()

    # --- aggregate, journal, outbox ----------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _commit_loop(self) -> None:
        self.journal = Journal(self.journal_path)
        try:
            stopping = False
            while not stopping:
                group = [self.to_commit.get()]
                while len(group) < _COMMIT_GROUP:  # whatever else is waiting joins this transaction
                    try:
                        group.append(self.to_commit.get_nowait())
                    except queue.Empty:
                        break
                if group[-1] is _STOP:
                    stopping = True
                    group.pop()
                self.metrics.queue_depth.labels("commit").set(self.to_commit.qsize())
                if group:
                    self._commit_group(group)
        finally:
            self.journal.close()

    def _commit_group(self, group: list) -> None:
        """Aggregate, journal and announce a group of outcomes in one transaction.

        A database error here is fatal: the daemon stops, and a restart rebuilds the in-memory
        state (aggregates, seq) from the journal, so nothing half-done survives.
        """
        t0 = time.perf_counter()
        records: list[FrameRecord] = []
        messages: list[OutboxMessage] = []
        outcomes: list[str] = []
        latest: dict[str, int] = {}  # path -> version assigned in this group
        seen: set[tuple[str, str]] = set()
        for msg in group:
            if isinstance(msg, StatusEvent):
                messages.append(self._status_message(msg))
                continue
            job, sha = msg.job, msg.sha256
            sha = sha or f"unread:{job.size}:{job.mtime_ns}"
            if (job.rel, sha) in seen or self.journal.has(job.rel, sha):
                self.metrics.frames.labels("duplicate").inc()
                self._arrived(job.rel)
                continue
            seen.add((job.rel, sha))
            version = latest[job.rel] = (latest.get(job.rel) or self.journal.latest_version(job.rel)) + 1
            if isinstance(msg, FailedFrame):
                record, new = self._quarantine(msg, sha, version)
                outcomes.append("quarantined")
            else:
                record, new = self._scored(msg, version)
                outcomes.append("processed")
            records.append(record)
            messages.extend(new)
        self.journal.commit(records, messages)
        for record in records:
            self._remember(record)
            if record.state == "done":
                for call in ("live", "dead", "empty"):
                    self.metrics.tiles.labels(call).inc(getattr(record, call))
                if record.version > 1:
                    log.warning("%s was re-written with new content: version %d replaces the earlier result",
                                record.path, record.version)
        for outcome in outcomes:
            self.metrics.frames.labels(outcome).inc()
        self.publisher.submit(messages)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)

    def _status_message(self, event: StatusEvent) -> OutboxMessage:
        return OutboxMessage(self._next_seq(), status_topic(event.kind),
                             envelope(self.seq, "status", self.models, kind=event.kind, **event.body))

    def _quarantine(self, failed: FailedFrame, sha: str, version: int) -> tuple[FrameRecord, list[OutboxMessage]]:
        job, meta = failed.job, failed.job.meta
        log.error("quarantined %s: %s", job.rel, failed.reason)
        message = OutboxMessage(self._next_seq(), status_topic("quarantine"), envelope(
            self.seq, "status", self.models, meta.plate, meta.well, meta.timepoint,
            kind="quarantine", path=job.rel, reason=failed.reason, attempts=job.attempt + 1))
        record = FrameRecord(job.rel, job.size, job.mtime_ns, sha, version, "quarantined", failed.reason,
                             meta.plate, meta.well, meta.field, meta.timepoint, meta.z, meta.channel,
                             None, None, None, job.mtime_ns / 1e9, time.time(), message.seq)
        return record, [message]

    def _scored(self, work: FrameWork, version: int) -> tuple[FrameRecord, list[OutboxMessage]]:
        job, meta = work.job, work.job.meta
        counts = self._counts(work)
        state = self.aggregate.add(meta.plate, meta.well, meta.timepoint, meta.field, counts)
        frame_msg = OutboxMessage(self._next_seq(), frame_topic(meta.plate, meta.well), envelope(
            self.seq, "frame", self.models, meta.plate, meta.well, meta.timepoint,
            path=job.rel, version=version, field=meta.field, z=meta.z, channel=meta.channel,
            counts={"live": counts.live, "dead": counts.dead, "empty": counts.empty},
            live_fraction=live_fraction(counts.live, counts.dead), unit="tile", **cell_fields(counts),
            t_file=job.mtime_ns / 1e9))
        well_msg = OutboxMessage(self._next_seq(), well_topic(meta.plate, meta.well), envelope(
            self.seq, "well", self.models, meta.plate, meta.well, meta.timepoint, **self.aggregate.summary(state)))
        record = FrameRecord(job.rel, job.size, job.mtime_ns, work.sha256, version, "done", None,
                             meta.plate, meta.well, meta.field, meta.timepoint, meta.z, meta.channel,
                             counts.live, counts.dead, counts.empty, job.mtime_ns / 1e9, time.time(), well_msg.seq,
                             counts.cells, counts.cell_live, counts.cell_dead,
                             json.dumps(counts.cell_types) if counts.cell_types is not None else None)
        return record, [frame_msg, well_msg]

    def _counts(self, work: FrameWork) -> TileCounts:
        """Tile calls; with segmentation also cells, their live/dead calls and (with a model) types."""
        c = self.contract
        dead_p = work.scores[:, c.positive_index] if len(work.scores) else np.zeros(0, np.float32)
        counts = count_tiles(dead_p, work.n_empty, c.decision_threshold)
        if work.cells is None:
            return counts
        p_cell = cell_dead_probability(work.cells.centroids, work.tile_origins, c.tiling.tile_size, dead_p)
        cell_live, cell_dead = live_dead_cells(p_cell, c.decision_threshold)
        types = None
        if self.cell_type is not None:
            t = self.cell_type.contract
            types = type_counts(work.type_scores if len(work.type_scores) else np.zeros((0, len(t.classes))),
                                t.classes, t.positive_index, t.decision_threshold)
        return dataclasses.replace(counts, cells=len(work.cells), cell_live=cell_live, cell_dead=cell_dead,
                                   cell_types=types)

    def _remember(self, record: FrameRecord) -> None:
        with self._lock:
            self.on_their_way.discard(record.path)
            self.known.add((record.path, record.size, record.mtime_ns))
            self.known_content.add((record.path, record.sha256))
