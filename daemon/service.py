"""The daemon's entry point: load, start, wait for a signal or a fatal error, drain, exit.

Signal handlers only set a flag; shutdown happens here, in one place.
"""

from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import CollectorRegistry, start_http_server

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.inference.models import Models
from wellwatch.core.packages.description import is_package
from wellwatch.core.config import Config, check_model_channels
from wellwatch.core.errors import StartupError
from wellwatch.daemon.journal_lock import JournalLock
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.core.packages.loading import open_package
from wellwatch.daemon.pipeline import Pipeline
from wellwatch.core.segmentation.cellpose_flows import cellpose_modules, served_model_file
from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL, bundled_demo_model

log = logging.getLogger(__name__)



def open_slot(slot: str, path: str, task: str, max_batch: int, config: Config, metrics: DaemonMetrics) -> OnnxBackend:
    """Load the model of [models.<slot>], check its task, and report it (log line and metrics)."""
    if is_package(path):
        backend = open_package(path, task, config.inference, max_batch)
        if not hasattr(backend, "contract"):  # a package made elsewhere: served by its description
            log.info("%s: %s", slot, backend.describe())
            metrics.provider.labels(slot, backend.provider).set(1)
            metrics.model.labels(slot).info({"name": backend.name, "sha256": backend.sha256, "path": backend.path,
                                             "provider": backend.provider})
            return backend
    else:
        backend = OnnxBackend(path, max_batch=max_batch, inference=config.inference)
    if backend.contract.task != task:
        raise StartupError(f"models.{slot}.path {path}: the model's task is {backend.contract.task!r}, not {task!r}")
    log.info("%s: %s", slot, backend.describe())
    metrics.provider.labels(slot, backend.provider).set(1)
    metrics.model.labels(slot).info({"name": backend.contract.name, "sha256": backend.sha256,
                                     "path": backend.path, "provider": backend.provider,
                                     "precision": backend.precision, "io_binding": str(backend.io_binding).lower(),
                                     "pinned": str(backend.pinned).lower(),
                                     "batch_sizes": ",".join(map(str, backend.buckets))})
    return backend


def load_backend(config: Config, metrics: DaemonMetrics) -> OnnxBackend:
    path = config.models.live_dead.path or str(bundled_demo_model())
    if not config.models.live_dead.path:
        log.warning("models.live_dead.path is empty: using the bundled DEMO model %s, trained on simulated "
                    "frames only; its counts on a real plate mean nothing. Next step: run `wellwatch calibrate` "
                    "on a stained calibration plate of your cells and set models.live_dead.path to the model it "
                    "writes (the docs' page on making a real model shows each step)", path)
    backend = open_slot("live_dead", path, "live_dead", config.batching.max_batch, config, metrics)
    if backend.contract.per_cell:
        raise StartupError(f"models.live_dead.path {path}: a per-cell live/dead model (crop section); it goes in "
                           "[models.cell_live_dead] (with segmentation.method classical or model); "
                           "[models.live_dead] takes a tile model")
    return backend


def load_segmentation_backend(config: Config, metrics: DaemonMetrics) -> OnnxBackend | None:
    """The segmentation network when segmentation.method = 'model' ("" = the bundled model) or 'cellpose'."""
    if config.segmentation.method == "cellpose":
        return load_cellpose_backend(config, metrics)
    if config.segmentation.method != "model":
        return None
    path = config.models.segmentation.path or str(BUNDLED_SEGMENTATION_MODEL)
    return open_slot("segmentation", path, "segmentation", config.segmentation.max_batch, config, metrics)


def load_cellpose_backend(config: Config, metrics: DaemonMetrics) -> OnnxBackend:
    path = served_model_file(config.segmentation.cellpose.model)
    backend = open_slot("segmentation", path, "segmentation", config.segmentation.max_batch, config, metrics)
    if not backend.contract.is_cellpose:
        raise StartupError(f"segmentation.cellpose.model {path}: not a Cellpose network (its maps are "
                           f"{list(backend.contract.segmentation.maps)}); serve it with segmentation.method = 'model'")
    cellpose_modules()  # refuse now, not on the first frame, when the cellpose package is missing
    return backend


def load_crop_backend(config: Config, metrics: DaemonMetrics, slot: str, task: str) -> OnnxBackend | None:
    """The single-cell crop classifier of [models.<slot>] (cell_type, cell_live_dead), if one is configured."""
    path = getattr(config.models, slot).path
    if not path:
        return None
    backend = open_slot(slot, path, task, config.batching.max_batch, config, metrics)
    c = backend.contract
    if c.crop is None:
        dataset = "dataset cells --dead-stain" if task == "live_dead" else "dataset cells"
        raise StartupError(f"models.{slot}.path {path}: a {task} model without a crop section; a model "
                           f"trained on single-cell crops (a `wellwatch {dataset}` dataset) is needed")
    check_model_channels(config.channels.label_free, slot, path, c)
    return backend


def load_cell_type_backend(config: Config, metrics: DaemonMetrics) -> OnnxBackend | None:
    """The cell-type classifier of [models.cell_type], if one is configured."""
    return load_crop_backend(config, metrics, "cell_type", "cell_type")


def load_cell_live_dead_backend(config: Config, metrics: DaemonMetrics) -> OnnxBackend | None:
    """The per-cell live/dead classifier of [models.cell_live_dead], if one is configured."""
    return load_crop_backend(config, metrics, "cell_live_dead", "live_dead")


def start_metrics_server(config: Config, registry: CollectorRegistry) -> None:
    if config.metrics.port == 0:
        return
    try:
        start_http_server(config.metrics.port, addr=config.metrics.host, registry=registry)
    except OSError as e:
        raise StartupError(f"metrics.port {config.metrics.port}: cannot listen on {config.metrics.host} "
                           f"({e.strerror}); pick another port or 0 to turn metrics off") from None
    log.info("metrics on http://%s:%d/metrics", config.metrics.host, config.metrics.port)


class Daemon:
    """A running daemon; `run()` blocks until stopped. Also used in-process by demo, bench and tests."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None, backend=None,
                 segmentation_backend=None, cell_type_backend=None, cell_live_dead_backend=None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        # every network, loaded once; a caller (tests, bench) may hand in any slot's backend
        self.models = Models(backend or load_backend(config, self.metrics),
                             segmentation_backend or load_segmentation_backend(config, self.metrics),
                             cell_type_backend or load_cell_type_backend(config, self.metrics),
                             cell_live_dead_backend or load_cell_live_dead_backend(config, self.metrics))
        self.backend = self.models.live_dead
        self.journal_lock = JournalLock(config.journal.path)  # before anything writes to the journal
        try:
            self.pipeline = Pipeline(config, self.models, self.metrics)
        except BaseException:
            self.journal_lock.release()
            raise
        self._stopped = threading.Event()

    def start(self) -> None:
        start_metrics_server(self.config, self.registry)
        self.pipeline.start()

    def stop(self) -> None:
        self.pipeline.request_stop()

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: self.pipeline.request_stop())
        try:
            self.start()
            while not self.pipeline.wait(0.5):  # a timed wait keeps signals deliverable
                pass
            log.info("stopping: finishing frames in flight")
            self.pipeline.shutdown()
        finally:
            self.journal_lock.release()
        if self.pipeline.fatal is not None:
            log.error("stopped by an internal error: %s", self.pipeline.fatal)
            return 1
        return 0
