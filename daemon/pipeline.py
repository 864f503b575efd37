"""Wires the stages together: the one place that knows about threads and queues.

    discovery -> gate thread (gate_stage) -> read workers (read_stage; prepare.prepare_frame, or
                 with pipeline.prepare_workers the process pool over shared memory: prepare_pool)
              -> inference thread (inference_stage: pooled batches per model lane)
              -> commit thread (commit: aggregate + journal + outbox, one transaction per group)
              -> publisher thread (publish: ZeroMQ PUB + snapshot ROUTER)

The frame ledger (ledger.py) is the state the stages share: what is done and what is on its way.
At start everything in memory is rebuilt from the journal (recovery.py).

With segmentation on, the CPU-heavy part runs in a process pool (all cores): classical
segmentation is called from the read workers; a segmentation network's tiles are batched by the
inference thread beside the live/dead patches, and the watershed that turns its maps into cells
(and the single-cell crops for the crop models: cell type, per-cell live/dead) runs in the pool,
handed back through a queue so the inference thread never waits for it (daemon/inference_stage.py).

A bad frame is retried, then quarantined; it never stops the pipeline. A bug in a stage stops the
daemon with the error (the entry point decides to exit).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path

import zmq

from wellwatch.core.aggregate import PlateAggregate
from wellwatch.core.inference.backend import InferenceBackend
from wellwatch.daemon.channel_join import ChannelJoin
from wellwatch.daemon.stages.commit import CommitBuilder
from wellwatch.daemon.dose_publisher import DosePublisher
from wellwatch.core.plate_map import read_plate_map
from wellwatch.core.config import Config
from wellwatch.core.crops import crop_section
from wellwatch.daemon.diagnostics import Diagnostics, Expectations
from wellwatch.core.errors import StartupError
from wellwatch.daemon.stages.gate import GateStage
from wellwatch.daemon.history import well_history
from wellwatch.daemon.stages.infer import InferenceStage
from wellwatch.daemon.jobs import FailedFrame, FrameJob, LayoutEvent, StatusEvent
from wellwatch.daemon.journal import Journal
from wellwatch.core.layouts import LayoutError, PlateLayout, detect_layout
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.core.naming import NamingScheme
from wellwatch.core.files.nd2 import Nd2Tracker
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.daemon.stages.publish import Publisher
from wellwatch.daemon.stages.read import ReadStage
from wellwatch.daemon.recovery import recover
from wellwatch.daemon.security import CurveServer
from wellwatch.core.segmentation.segmenters import model_segmenter
from wellwatch.daemon.segmentation_pool import SegmentationPool

log = logging.getLogger(__name__)


def check_interval_level(level: float, *contracts) -> None:
    """intervals.level must be one the served models' calibrations measured."""
    for c in contracts:
        if c is not None and c.calibration is not None and not any(abs(level - x) < 1e-9 for x in c.calibration.levels):
            raise StartupError(f"intervals.level {level} is not calibrated in model {c.name!r}; its calibration "
                               f"measured levels {', '.join(f'{x:g}' for x in c.calibration.levels)}")

_STOP = object()
_COMMIT_GROUP = 256  # outcomes per transaction at most


class Pipeline:
    def __init__(self, config: Config, backend: InferenceBackend, metrics: DaemonMetrics,
                 context: zmq.Context | None = None, segmentation_backend: InferenceBackend | None = None,
                 cell_type_backend: InferenceBackend | None = None,
                 cell_live_dead_backend: InferenceBackend | None = None):
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.contract = backend.contract
        self.seg_method = config.segmentation.method
        serve = ServeOptions(config.plate.pixel_size_um, config.segmentation.tta, config.segmentation.cellpose.diameter_um)
        self.seg_model = (model_segmenter(segmentation_backend, serve, config.segmentation.package)
                          if config.segmentation.network and segmentation_backend is not None else None)
        if config.segmentation.network and segmentation_backend is None:
            raise StartupError(f"segmentation.method = {self.seg_method!r} needs a segmentation model backend")
        self.cell_type, self.cell_live_dead = cell_type_backend, cell_live_dead_backend
        crop = crop_section(cell_type_backend, cell_live_dead_backend, self.seg_method)
        self.root = os.path.realpath(config.watch.root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StartupError(f"watch.root {config.watch.root}: is a file, not a folder; give the folder the "
                               "acquisition writes its frames into")
        if not os.path.isdir(self.root):
            raise StartupError(f"watch.root {config.watch.root}: folder does not exist")
        if len(config.channels.label_free) != len(self.contract.channels):
            raise StartupError(
                f"channels.label_free {list(config.channels.label_free)} gives {len(config.channels.label_free)} "
                f"channel(s) but model {backend.path} ({self.contract.name!r}) expects "
                f"{len(self.contract.channels)} ({', '.join(self.contract.channels)})")
        naming = NamingScheme(config.watch.naming, PLATE_FORMATS[config.plate.format],
                              config.plate_name, config.watch.pattern, config.plate.default_well)
        self.models = {self.contract.name: backend.sha256}
        if self.seg_model is not None:
            self.models[self.seg_model.name] = segmentation_backend.sha256
        for crop_backend in (cell_type_backend, cell_live_dead_backend):
            if crop_backend is not None:
                self.models[crop_backend.contract.name] = crop_backend.sha256
        self.journal_path = Path(config.journal.path)

        self.layout: PlateLayout | None = None  # the vendor's plate layout; .pixel_size_um for rescaling
        if config.plate.layout == "auto":
            try:
                self.layout = detect_layout(self.root)
            except LayoutError as e:
                raise StartupError(f"{e} (set plate.layout = \"none\" to ignore the vendor files)") from None
        self.ledger = FrameLedger(joins_channels=len(config.channels.files()) > 1)
        aggregate = PlateAggregate(config.plate.fields_per_well, self.layout)
        recovered = recover(self.journal_path, self.ledger, aggregate)
        self.aggregate = aggregate
        self.nd2 = Nd2Tracker(recovered.nd2_frames, config.plate.format)
        channels = config.channels.files()  # the model's channels, then the one segmented on, if another
        self.join = ChannelJoin(channels, config.channels.missing_after_s) if len(channels) > 1 else None
        self._unsent = recovered.unsent
        dose = DosePublisher(read_plate_map(config.plate.map, config.plate.format)) if config.plate.map else None
        self.commits = CommitBuilder(self.contract, self.models, aggregate, recovered.seq,
                                     cell_type_backend.contract if cell_type_backend is not None else None, dose,
                                     well_history(self.journal_path) if dose is not None else (),
                                     cell_live_dead=cell_live_dead_backend.contract if cell_live_dead_backend else None,
                                     source=config.source, interval_level=config.intervals.level)
        check_interval_level(config.intervals.level, self.contract, self.cell_live_dead and self.cell_live_dead.contract)

        self.context = context or zmq.Context.instance()
        self.curve = (CurveServer(self.context, config.publish.curve_secret_key, config.publish.curve_allowed_clients)
                      if config.publish.curve_secret_key else None)
        try:
            self.publisher = Publisher(self.context, config.publish.endpoint, config.publish.snapshot_endpoint,
                                       self.journal_path, metrics, config.publish.send_hwm, self.curve,
                                       source=config.source, heartbeat_s=config.publish.heartbeat_s)
        except BaseException:
            if self.curve is not None:
                self.curve.close()  # its authenticator thread would keep the process alive
            raise
        self.publisher.seed_state(recovered.snapshot_state, recovered.last_sent)

        self.stop_event = threading.Event()
        self.fatal: BaseException | None = None
        self.prepared: queue.Queue = queue.Queue(maxsize=config.pipeline.queue_size)
        self.to_commit: queue.Queue = queue.Queue()
        self.seg_pool = (SegmentationPool(config.segmentation.workers, on_rebuild=metrics.pool_rebuilds.inc)
                         if self.seg_method != "none" else None)
        tiling = self.contract.tiling
        self.diagnostics = Diagnostics(
            Expectations(channels, config.watch.naming, tiling.tile_size if tiling is not None else None,
                         self.contract.name),
            metrics, emit=self.to_commit.put, in_flight=self.ledger.on_their_way,
            nothing_counted_s=config.report.nothing_counted_s, progress_s=config.report.progress_s,
            repeat_s=config.report.repeat_s, counted_before=recovered.frames_counted)
        self.gate = GateStage(config, self.root, naming, self.ledger, metrics, self.journal_path, self.stop_event,
                              submit=lambda job: self.reader.submit(job), status=self.to_commit.put,
                              nd2=self.nd2, join=self.join,
                              needs_layout=self.layout is None and config.plate.layout == "auto",
                              suspects=recovered.suspects, on_ignored=self.diagnostics.ignored)
        self.reader = ReadStage(config, self.contract, self.ledger, metrics, self.gate.retries, self.prepared,
                                failed=self.to_commit.put, stop_event=self.stop_event,
                                is_fatal=lambda: self.fatal is not None, on_bug=self._stop_for,
                                seg_model=self.seg_model, seg_pool=self.seg_pool, crop=crop,
                                join=self.join, nd2=self.nd2, pixel_size=self.pixel_size_um)
        self.discovery = self.gate.discovery
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True)
                         for n, f in (("gate", self.gate.run), ("infer", self._infer_loop),
                                      ("commit", self._commit_loop))]

    @property
    def seq(self) -> int:
        return self.commits.seq

    def pixel_size_um(self, job: FrameJob) -> float | None:
        """The vendor's pixel size for a frame: its .nd2 file's, else the plate layout's (None: unknown)."""
        if job.nd2_index is not None and (contents := self.nd2.contents.get(job.path)) is not None:
            return contents.pixel_size_um
        layout = self.aggregate.layout
        return layout.pixel_size_um if layout is not None else None

    # --- start-up and shutdown ---------------------------------------------------------------

    def start(self) -> None:
        self.publisher.start()
        if self._unsent:
            log.info("re-sending %d journaled messages not yet published", len(self._unsent))
            self.publisher.submit(self._unsent)
        self.to_commit.put(StatusEvent("daemon", {"event": "started", "provider": self.backend.provider,
                                                  "root": self.root, "segmentation": self.segmentation_name}))
        if self.layout is not None:  # named for the plate its frames will carry
            self.to_commit.put(LayoutEvent(dataclasses.replace(self.layout, plate=self.layout.plate
                                                               or self.gate.naming.default_plate)))
        offered = self.discovery.start()  # before the gate runs: it restarts an observer it finds dead
        for t in self._threads:
            t.start()
        self.diagnostics.start()
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
        """Block until a stop is requested, or a thread died (then `fatal` says why); True if so."""
        if self.stop_event.wait(timeout):
            return True
        self._check_threads()
        return self.stop_event.is_set()

    def _check_threads(self) -> None:
        """A thread that ended on its own stops the daemon with a reason, never silently."""
        if self.stop_event.is_set():
            return
        if not self.publisher.is_alive():
            error = self.publisher.error
            self._stop_for(RuntimeError(f"the publisher thread died ({type(error).__name__}: {error}); "
                                        "nothing would reach subscribers" if error else
                                        "the publisher thread ended unexpectedly"))
            return
        for t in self._threads:
            if t.ident is not None and not t.is_alive() and self.fatal is None:
                self._stop_for(RuntimeError(f"the {t.name} thread ended unexpectedly"))
                return

    def shutdown(self) -> None:
        """Drain: finish frames already being read, score and commit them, publish, close."""
        self.stop_event.set()
        self.diagnostics.stop()
        self._threads[0].join()  # the gate stops handing out work (and restarting the observer)
        self.discovery.stop()
        if self.fatal is None:
            self.reader.shutdown(wait=True)
            self.prepared.put(_STOP)
            for t in self._threads[1:]:
                t.join()
        else:  # a stage died: do not wait on queues it no longer drains; the journal is consistent
            self.reader.shutdown(wait=False)
        self.reader.close()
        if self.seg_pool is not None:
            self.seg_pool.shutdown()
        self.publisher.stop()
        self.publisher.join(timeout=30)
        if self.curve is not None:
            self.curve.close()
        log.info("stopped after seq %d", self.seq)

    def _stop_for(self, error: BaseException) -> None:
        self.fatal = error
        self.stop_event.set()

    def _guard(self, loop):
        def run():
            try:
                loop()
            except BaseException as e:
                log.exception("stage %s failed; stopping", threading.current_thread().name)
                self._stop_for(e)
        return run

    # --- inference ---------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        cfg = self.config.batching
        stage = InferenceStage(self.backend, cfg.max_batch, cfg.max_delay_ms / 1000.0, self.metrics,
                               emit=self.to_commit.put,
                               fail=lambda work, reason: self.to_commit.put(FailedFrame(work.job, work.sha256, reason)),
                               seg_model=self.seg_model, seg_batch=self.config.segmentation.max_batch,
                               pool=self.seg_pool, cell_type=self.cell_type, cell_live_dead=self.cell_live_dead)
        while True:
            wait = stage.seconds_until_due(time.monotonic())
            try:
                msg = self.prepared.get(timeout=0.05 if wait is None else min(wait, 0.05))
            except queue.Empty:
                msg = None
            # every frame already prepared joins before the next batch (up to a full one): after a
            # long batch they are all overdue, and admitting one at a time ran a batch per frame
            while msg is not None:
                if msg is _STOP:
                    stage.drain()
                    self.to_commit.put(_STOP)
                    return
                stage.admit(msg)
                if stage.waiting >= cfg.max_batch:
                    break
                try:
                    msg = self.prepared.get_nowait()
                except queue.Empty:
                    msg = None
            stage.take_returned()
            self.metrics.queue_depth.labels("prepared").set(self.prepared.qsize())
            self.metrics.queue_depth.labels("batch_patches").set(stage.waiting)
            stage.run_due()

    # --- aggregate, journal, outbox ----------------------------------------------------------

    def _commit_loop(self) -> None:
        journal = Journal(self.journal_path)  # this thread's own connection
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
                    self._commit_group(group, journal)
        finally:
            journal.close()

    def _commit_group(self, group: list, journal: Journal) -> None:
        """Aggregate, journal and announce a group of outcomes in one transaction.

        A database error here is fatal: the daemon stops, and a restart rebuilds the in-memory
        state (aggregates, seq) from the journal, so nothing half-done survives.
        """
        t0 = time.perf_counter()
        built = self.commits.build(group, journal)
        for job in built.duplicates:
            self.metrics.frames.labels("duplicate").inc()
            self.ledger.unchanged(job.rel, job.size, job.mtime_ns)
        journal.commit(built.records, built.messages)
        self.diagnostics.committed(group)
        for record in built.records:
            self.ledger.remember(record.path, record.size, record.mtime_ns, record.sha256)
            self.ledger.remember_field_file(record)
            if record.state == "done" and record.live is not None:  # not a channel file joined into another
                for call in ("live", "dead", "empty"):
                    self.metrics.tiles.labels(call).inc(getattr(record, call))
                if record.version > 1:
                    log.warning("%s was re-written with new content: version %d replaces the earlier result",
                                record.path, record.version)
        for outcome in built.outcomes:
            self.metrics.frames.labels(outcome).inc()
        self.publisher.submit(built.messages)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
