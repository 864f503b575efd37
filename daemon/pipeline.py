"""Wires the stages together: the one place that creates the queues and the threads.

A frame's path, one stage module each (daemon/stages/), talking through daemon/messages.py:

    discovery -> gate (thread "gate")          -- to_read:   FrameFile   (bounded: back-pressure)
              -> read (threads "read_N")       -- to_infer:  ReadFrame   (bounded)
              -> infer (thread "infer")        -- to_commit: ScoredFrame / FailedFrame / StatusEvent
              -> commit (thread "commit")      -- to_publish: the journaled messages
              -> publish (thread "publisher")

The frame ledger (ledger.py) is the state the stages share: what is done and what is on its way.
At start everything in memory is rebuilt from the journal (recovery.py). The networks come in as
one `Models` object, loaded once by the entry point (service.py).

With segmentation on, the CPU-heavy part runs in a process pool (all cores): classical
segmentation is called from the read workers; a segmentation network's tiles are batched by the
inference thread beside the live/dead patches, and the watershed that turns its maps into cells
(and the single-cell crops for the crop models: cell type, per-cell live/dead) runs in the pool,
handed back through a queue so the inference thread never waits for it.

A bad frame is retried, then quarantined; it never stops the pipeline. A bug in a stage stops the
daemon with the error (the entry point decides to exit).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from pathlib import Path

import zmq

from wellwatch.core.aggregate import PlateAggregate
from wellwatch.core.config import Config, check_interval_level, check_model_channels
from wellwatch.core.crops import crop_section
from wellwatch.core.errors import StartupError
from wellwatch.core.files.nd2 import Nd2Tracker
from wellwatch.core.inference.models import Models
from wellwatch.core.layouts import LayoutError, PlateLayout, detect_layout
from wellwatch.core.naming import NamingScheme
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.core.plate_map import read_plate_map
from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.core.segmentation.segmenters import model_segmenter
from wellwatch.daemon.channel_join import ChannelJoin
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.diagnostics import Diagnostics, Expectations
from wellwatch.daemon.dose_publisher import DosePublisher
from wellwatch.results.journal_reader import well_history
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.daemon.messages import STOP, LayoutEvent, StatusEvent
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.daemon.recovery import Recovered, recover
from wellwatch.daemon.retry import RetrySchedule
from wellwatch.net.security import CurveServer
from wellwatch.daemon.segmentation_pool import SegmentationPool
from wellwatch.daemon.stages.commit import CommitBuilder, CommitStage
from wellwatch.daemon.stages.gate import GateStage
from wellwatch.daemon.stages.infer import InferenceStage
from wellwatch.daemon.stages.publish import Publisher
from wellwatch.daemon.stages.read import ReadStage

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, config: Config, models: Models, metrics: DaemonMetrics, context: zmq.Context | None = None):
        self.config, self.models, self.metrics = config, models, metrics
        self.seg_model, crop = _segmentation_and_crops(config, models)
        self.root = _watch_root(config)
        backend, self.contract = models.live_dead, models.live_dead.contract
        check_model_channels(config.channels.label_free, "live_dead", backend.path, self.contract)
        naming = NamingScheme(config.watch.naming, PLATE_FORMATS[config.plate.format],
                              config.plate_name, config.watch.pattern, config.plate.default_well)
        self.layout = _vendor_layout(config, self.root)  # .pixel_size_um for rescaling
        channels = config.channels.files()  # the model's channels, then the one segmented on, if another
        self.aggregate = PlateAggregate(config.plate.fields_per_well, self.layout)
        ledger = FrameLedger(joins_channels=len(channels) > 1)
        recovered = recover(Path(config.journal.path), ledger, self.aggregate)
        nd2 = Nd2Tracker(recovered.nd2_frames, config.plate.format)
        join = ChannelJoin(channels, config.channels.missing_after_s) if len(channels) > 1 else None
        self.ctx = StageContext(config, self.root, metrics, ledger, nd2, join)
        builder = self._commit_builder(recovered)
        check_interval_level(config.intervals.level, self.contract, models.contract("cell_live_dead"))
        self._unsent = recovered.unsent
        self.publisher, self.curve = _open_publisher(config, context or zmq.Context.instance(), metrics, recovered)

        # the queues, in the order a frame meets them
        # pipeline.queue_size frames at most between the gate and the inference queue: waiting or being read
        to_read = queue.Queue(maxsize=max(1, config.pipeline.queue_size - config.pipeline.read_workers))
        self.to_infer = queue.Queue(maxsize=config.pipeline.queue_size)
        self.to_commit: queue.Queue = queue.Queue()
        retries = RetrySchedule()  # the read stage's retries, handed out again by the gate
        self.seg_pool = (SegmentationPool(config.segmentation.workers, on_rebuild=metrics.pool_rebuilds.inc)
                         if config.segmentation.method != "none" else None)
        self.diagnostics = self._diagnostics(recovered)
        self.gate = GateStage(self.ctx, naming, to_read, self.to_commit, retries, self.layout, recovered.suspects,
                              on_ignored=self.diagnostics.ignored)
        self.reader = ReadStage(self.ctx, models, to_read, self.to_infer, self.to_commit, retries, self.seg_model,
                                self.seg_pool, crop)
        self.inference = InferenceStage(self.ctx, models, self.to_infer, self.to_commit, self.seg_model, self.seg_pool)
        self.committer = CommitStage(self.ctx, builder, self.to_commit, self.publisher.inbox, self.diagnostics)
        self.discovery = self.gate.discovery
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True)
                         for n, f in (("gate", self.gate.run), ("infer", self.inference.run),
                                      ("commit", self.committer.run))]

    def _commit_builder(self, recovered: Recovered) -> CommitBuilder:
        config, models = self.config, self.models
        identities = {self.contract.name: models.live_dead.sha256}  # model name -> sha256, in every message
        if self.seg_model is not None:
            identities[self.seg_model.name] = models.segmentation.sha256
        identities.update({m.contract.name: m.sha256 for m in models.crop_models().values()})
        dose = DosePublisher(read_plate_map(config.plate.map, config.plate.format)) if config.plate.map else None
        return CommitBuilder(self.contract, identities, self.aggregate, recovered.seq, models.contract("cell_type"),
                             dose, well_history(Path(config.journal.path)) if dose is not None else (),
                             cell_live_dead=models.contract("cell_live_dead"), source=config.source,
                             interval_level=config.intervals.level)

    def _diagnostics(self, recovered: Recovered) -> Diagnostics:
        config, tiling = self.config, self.contract.tiling
        expects = Expectations(config.channels.files(), config.watch.naming,
                               tiling.tile_size if tiling is not None else None, self.contract.name)
        return Diagnostics(expects, self.metrics, emit=self.to_commit.put, in_flight=self.ctx.ledger.on_their_way,
                           nothing_counted_s=config.report.nothing_counted_s, progress_s=config.report.progress_s,
                           repeat_s=config.report.repeat_s, counted_before=recovered.frames_counted)

    @property
    def seq(self) -> int:
        return self.committer.builder.seq

    @property
    def fatal(self) -> BaseException | None:
        return self.ctx.stopping.fatal

    # --- start-up and shutdown ---------------------------------------------------------------

    def start(self) -> None:
        self.publisher.start()
        if self._unsent:
            log.info("re-sending %d journaled messages not yet published", len(self._unsent))
            self.publisher.submit(self._unsent)
        self.to_commit.put(StatusEvent("daemon", {"event": "started", "provider": self.models.live_dead.provider,
                                                  "root": self.root, "segmentation": self.segmentation_name}))
        if self.layout is not None:  # named for the plate its frames will carry
            self.to_commit.put(LayoutEvent(dataclasses.replace(self.layout, plate=self.layout.plate
                                                               or self.gate.naming.default_plate)))
        offered = self.discovery.start()  # before the gate runs: it restarts an observer it finds dead
        self.reader.start()
        for t in self._threads:
            t.start()
        self.diagnostics.start()
        log.info("watching %s (%s observer); %d files present at start", self.root,
                 self.config.watch.observer, offered)

    @property
    def segmentation_name(self) -> str | None:
        """What counts cells: "classical", the segmentation model's name, or None."""
        if self.config.segmentation.method == "none":
            return None
        return self.seg_model.name if self.seg_model is not None else "classical"

    def request_stop(self) -> None:
        self.ctx.stopping.request()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested, or a thread died (then `fatal` says why); True if so."""
        if self.ctx.stopping.event.wait(timeout):
            return True
        self._check_threads()
        return self.ctx.stopping.is_set()

    def _check_threads(self) -> None:
        """A thread that ended on its own stops the daemon with a reason, never silently."""
        if self.ctx.stopping.is_set():
            return
        if not self.publisher.is_alive():
            error = self.publisher.error
            self.ctx.stopping.fail(RuntimeError(f"the publisher thread died ({type(error).__name__}: {error}); "
                                        "nothing would reach subscribers" if error else
                                        "the publisher thread ended unexpectedly"))
            return
        for t in self._threads + self.reader.threads:
            if t.ident is not None and not t.is_alive() and self.fatal is None:
                self.ctx.stopping.fail(RuntimeError(f"the {t.name} thread ended unexpectedly"))
                return

    def shutdown(self) -> None:
        """Drain: finish frames already being read, score and commit them, publish, close."""
        self.ctx.stopping.request()
        self.diagnostics.stop()
        self._threads[0].join()  # the gate stops handing out work (and restarting the observer)
        self.discovery.stop()
        if self.fatal is None:
            self.reader.finish()  # what the gate handed out is read, then the readers end
            self.to_infer.put(STOP)  # the inference stage drains, then passes it to the commit stage
            for t in self._threads[1:]:
                t.join()
        # else a stage died: do not wait on queues it no longer drains; the journal is consistent
        self.reader.close()
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
                log.exception("stage %s failed; stopping", threading.current_thread().name)
                self.ctx.stopping.fail(e)
        return run


def _segmentation_and_crops(config: Config, models: Models):
    """The served segmentation network (None: classical or none) and the crop models' one crop section."""
    method = config.segmentation.method
    if config.segmentation.network and models.segmentation is None:
        raise StartupError(f"segmentation.method = {method!r} needs a segmentation model backend")
    serve = ServeOptions(config.plate.pixel_size_um, config.segmentation.tta, config.segmentation.cellpose.diameter_um)
    seg_model = (model_segmenter(models.segmentation, serve, config.segmentation.package)
                 if config.segmentation.network else None)
    return seg_model, crop_section(models.cell_type, models.cell_live_dead, method)


def _watch_root(config: Config) -> str:
    root = os.path.realpath(config.watch.root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise StartupError(f"watch.root {config.watch.root}: is a file, not a folder; give the folder the "
                           "acquisition writes its frames into")
    if not os.path.isdir(root):
        raise StartupError(f"watch.root {config.watch.root}: folder does not exist")
    return root


def _vendor_layout(config: Config, root: str) -> PlateLayout | None:
    """The vendor's plate layout (plate.layout = "auto"), None when there is none or it is turned off."""
    if config.plate.layout != "auto":
        return None
    try:
        return detect_layout(root)
    except LayoutError as e:
        raise StartupError(f"{e} (set plate.layout = \"none\" to ignore the vendor files)") from None


def _open_publisher(config: Config, context: zmq.Context, metrics: DaemonMetrics,
                    recovered: Recovered) -> tuple[Publisher, CurveServer | None]:
    """The publisher, its sockets bound (CURVE when configured), seeded with the snapshot state."""
    curve = (CurveServer(context, config.publish.curve_secret_key, config.publish.curve_allowed_clients)
             if config.publish.curve_secret_key else None)
    try:
        publisher = Publisher(context, config.publish.endpoint, config.publish.snapshot_endpoint,
                              Path(config.journal.path), metrics, config.publish.send_hwm, curve,
                              source=config.source, heartbeat_s=config.publish.heartbeat_s)
    except BaseException:
        if curve is not None:
            curve.close()  # its authenticator thread would keep the process alive
        raise
    publisher.seed_state(recovered.snapshot_state, recovered.last_sent)
    return publisher, curve
