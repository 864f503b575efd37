"""The read workers (thread pool "prepare"): file -> bytes -> content hash -> image -> model inputs.

A thin shell around the pure steps (`reader.decode_frame`, `prepare.prepare_frame`). It owns the
worker pool and the back-pressure semaphore (at most `pipeline.queue_size` frames in flight), and
decides what a failure means: a damaged file is retried later, then quarantined.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .config import Config
from .contract import CellCrop, ModelContract
from .errors import FrameReadError
from .gate_stage import RetrySchedule
from .inference_stage import FrameWork
from .jobs import FailedFrame, FrameJob
from .ledger import FrameLedger
from .metrics import DaemonMetrics
from .prepare import prepare_frame
from .reader import decode_frame
from .segment import ModelSegmenter, SegmentationPool

log = logging.getLogger(__name__)


class ReadStage:
    def __init__(self, config: Config, contract: ModelContract, ledger: FrameLedger, metrics: DaemonMetrics,
                 retries: RetrySchedule, prepared: queue.Queue, failed: Callable[[FailedFrame], None],
                 stop_event: threading.Event, is_fatal: Callable[[], bool], on_bug: Callable[[BaseException], None],
                 seg_model: ModelSegmenter | None = None, seg_pool: SegmentationPool | None = None,
                 crop: CellCrop | None = None):
        self.config, self.contract, self.ledger, self.metrics = config, contract, ledger, metrics
        self.retries, self.prepared, self.failed = retries, prepared, failed
        self.stop_event, self.is_fatal, self.on_bug = stop_event, is_fatal, on_bug
        self.seg_model, self.seg_pool, self.crop = seg_model, seg_pool, crop
        self._in_flight = threading.BoundedSemaphore(config.pipeline.queue_size)
        self.pool = ThreadPoolExecutor(config.pipeline.read_workers, thread_name_prefix="prepare")

    def submit(self, job: FrameJob) -> None:
        """Hand a job to a worker; blocks while queue_size frames are in flight (back-pressure)."""
        while not self._in_flight.acquire(timeout=0.1):
            if self.stop_event.is_set():
                return
        self.pool.submit(self._guarded, job)

    def shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)

    def _guarded(self, job: FrameJob) -> None:
        try:
            self.run(job)
        except BaseException as e:
            log.exception("prepare failed on %s; stopping", job.rel)
            self.on_bug(e)
        finally:
            self._in_flight.release()

    def run(self, job: FrameJob) -> None:
        t0 = time.perf_counter()
        try:
            with open(job.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.ledger.release(job.rel)
            return  # removed or renamed away before we got to it; a new name is a new candidate
        except OSError as e:
            self.fail(job, "", FrameReadError(job.path, f"cannot read ({e.strerror})"))
            return
        sha = hashlib.sha256(data).hexdigest()  # the bytes are in memory for decoding anyway
        if self.ledger.has_content(job.rel, sha):  # touched but unchanged: the same frame, already counted
            self.metrics.frames.labels("duplicate").inc()
            self.ledger.release(job.rel)
            return
        try:
            image = decode_frame(job.path, data)
        except FrameReadError as e:
            self.fail(job, sha, e)
            return
        t1 = time.perf_counter()
        try:
            prepared = prepare_frame(image, self.contract, segmentation=self.config.segmentation.method,
                                     classical=self.config.segmentation.classical, seg_model=self.seg_model,
                                     crop=self.crop, run_classical=self._classical_in_pool)
        except Exception as e:  # a frame the model cannot take must not stop the daemon
            log.exception("cannot prepare %s", job.rel)
            self.fail(job, sha, FrameReadError(job.path, f"cannot be prepared for the model "
                                                         f"({type(e).__name__}: {e})", retryable=False))
            return
        t2 = time.perf_counter()
        self.metrics.stage_seconds.labels("read").observe(t1 - t0)
        self.metrics.stage_seconds.labels("prepare").observe(t2 - t1)
        if prepared.segment_s is not None:
            self.metrics.stage_seconds.labels("segment").observe(prepared.segment_s)
        work = FrameWork.of(job, sha, prepared, time.monotonic())
        while not self.is_fatal():  # bounded queue: back-pressure, unless the inference stage died
            try:
                self.prepared.put(work, timeout=0.5)
                return
            except queue.Full:
                continue

    def _classical_in_pool(self, image: np.ndarray, params, crop):
        return self.seg_pool.classical(image, params, crop).result()

    def fail(self, job: FrameJob, sha: str, error: FrameReadError) -> None:
        """Retry a retryable failure later (up to pipeline.max_retries), else quarantine the frame."""
        cfg = self.config.pipeline
        if error.retryable and job.attempt < cfg.max_retries:
            self.metrics.frames.labels("retried").inc()
            log.info("retrying %s later (attempt %d): %s", job.rel, job.attempt + 1, error.reason)
            retry = FrameJob(job.path, job.rel, job.meta, job.size, job.mtime_ns, job.attempt + 1)
            self.retries.add(time.monotonic() + cfg.retry_delay_s, retry)
            return
        self.failed(FailedFrame(job, sha, error.reason))
