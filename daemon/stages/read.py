"""The read stage (threads "read_N", `pipeline.read_workers` of them): file -> bytes -> content hash
-> image -> model inputs.

A thin shell around the pure steps (`core.files.tiff.decode_frame`, `core.model_inputs.prepare_frame`).
Its workers take `FrameFile`s from the readers' queue (bounded: `pipeline.queue_size`, the gate's
back-pressure) and put a `ReadFrame` on the inference queue, or a `FailedFrame` on the commit queue;
it decides what a failure means: a damaged file is retried later, then quarantined.

What a frame's model channels come from: one file (one-channel model); a field's channel files,
joined by `ChannelJoin` (a file waits there until the field's other channels arrive; the first
channel's file then carries the others as `members`; a re-written file of a field counted before
brings its partners' current files from disk, as the gate does not offer them again); one TIFF
with all channels in its pages (a name without a channel, multi-channel model); or one .nd2 frame
(channels picked by name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from wellwatch.core.contract import CellCrop
from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.multichannel_tiff import decode_channels, pick_channels
from wellwatch.core.files.nd2 import read_nd2_frame, select_channels
from wellwatch.core.files.tiff import check_file_size, decode_frame
from wellwatch.core.inference.models import Models
from wellwatch.core.model_inputs import PreparedFrame, prepare_frame
from wellwatch.core.naming import FrameMeta
from wellwatch.core.segmentation.segmenters import ModelSegmenter
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.messages import STOP, FailedFrame, FrameFile, ReadFrame
from wellwatch.daemon.preparation_processes import PreparePool, WorkerDied
from wellwatch.daemon.retry import RetrySchedule
from wellwatch.daemon.segmentation_pool import SegmentationPool

log = logging.getLogger(__name__)

# Errors of the machine, not of the frame (memory, file descriptors, a pool that was shut down)
MACHINE_FAULTS = (MemoryError, OSError, BrokenProcessPool)


def prepare_slots(cfg) -> int:
    """Shared buffers for the process pool: every worker and read thread busy, and as many frames
    again waiting in the queue or the batcher; fewer than queue_size, to bound the memory."""
    return min(cfg.queue_size, 2 * (cfg.read_workers + cfg.prepare_workers) + 4)


class ReadStage:
    def __init__(self, ctx: StageContext, models: Models, to_read: queue.Queue, to_infer: queue.Queue,
                 to_commit: queue.Queue, retries: RetrySchedule, seg_model: ModelSegmenter | None = None,
                 seg_pool: SegmentationPool | None = None, crop: CellCrop | None = None):
        config, contract = ctx.config, models.live_dead.contract
        self.ctx, self.config, self.contract, self.ledger, self.metrics = ctx, config, contract, ctx.ledger, ctx.metrics
        self.to_read, self.to_infer, self.to_commit, self.retries = to_read, to_infer, to_commit, retries
        self.seg_model, self.seg_pool, self.crop = seg_model, seg_pool, crop
        self.join, self.nd2, self.root = ctx.join, ctx.nd2, ctx.root  # a journaled rel path is under root
        self.channels = config.channels.files()  # the file channels: the model's, in its order, then segment_on
        self.model_channels = len(config.channels.label_free)
        self.segment_index = config.channels.segment_index()
        # tiles only, one file per frame: preparation can run in processes (pipeline.prepare_workers)
        tiles_only = (config.segmentation.method == "none" and contract.tiling is not None
                      and len(self.channels) == 1 and not contract.normalisation_in_graph)
        self.prepare_pool = (PreparePool(config.pipeline.prepare_workers, contract, config.limits,
                                         slots=prepare_slots(config.pipeline),
                                         on_rebuild=ctx.metrics.prepare_pool_rebuilds.inc)
                             if config.pipeline.prepare_workers and tiles_only else None)
        self.threads = [threading.Thread(target=self._worker, name=f"read_{i}", daemon=True)
                        for i in range(config.pipeline.read_workers)]

    def worker_pids(self) -> dict[str, int]:
        """The preparation processes, by label (empty when preparation runs in these threads)."""
        if self.prepare_pool is None:
            return {}
        return {f"prepare_process_{i}": pid for i, pid in enumerate(self.prepare_pool.pids())}

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        """At shutdown, once the gate has stopped: read what is queued, then end the workers."""
        for _ in self.threads:
            self.to_read.put(STOP)
        for t in self.threads:
            t.join()

    def close(self) -> None:
        """After the inference stage has drained: stop the preparation processes, free their buffers."""
        if self.prepare_pool is not None:
            self.prepare_pool.shutdown()

    def _worker(self) -> None:
        stopping = self.ctx.stopping
        while stopping.fatal is None:  # a stage died: what is still queued is left to the next start
            try:
                file = self.to_read.get(timeout=0.1)
            except queue.Empty:
                continue
            if file is STOP:
                return
            try:
                self.run(file)
            except BaseException as e:
                log.exception("reading failed on %s; stopping", file.rel)
                stopping.fail(e)
                return

    def run(self, job: FrameFile) -> None:
        t0 = time.perf_counter()
        if self.prepare_pool is not None and job.nd2_index is None and self.join is None:
            read = self._read_bytes(job)
            if read is None:
                return
            data, sha = read
            if self._prepare_in_pool(job, sha, data, t0, time.perf_counter()):
                return
            try:  # every shared buffer is busy: this thread prepares the frame
                loaded = job, sha, [decode_frame(job.path, data, self.config.limits)], ()
            except FrameReadError as e:
                self.fail(job, sha, e)
                return
        else:
            loaded = self._load_nd2(job) if job.nd2_index is not None else self._load_file(job)
        if loaded is None:
            return  # failed, a duplicate, gone, or a channel waiting for the rest of its field
        job, sha, images, members = loaded
        t1 = time.perf_counter()
        try:
            segment_image = images[self.segment_index] if self.segment_index else None
            prepared = prepare_frame(images[:self.model_channels], self.contract,
                                     segmentation=self.config.segmentation.method,
                                     classical=self.config.segmentation.classical, seg_model=self.seg_model,
                                     crop=self.crop, run_classical=self._classical_in_pool,
                                     pixel_size_um=job.pixel_size_um, tiles_as_views=True, segment_image=segment_image)
        except MACHINE_FAULTS as e:  # the machine, not the frame: try again, never a permanent quarantine
            log.warning("cannot prepare %s now (%s: %s); trying again later", job.rel, type(e).__name__, e)
            self.fail(job, sha, FrameReadError(job.path, f"could not be prepared ({type(e).__name__}: {e})"),
                      machine=True)
            return
        except Exception as e:  # a frame the model cannot take must not stop the daemon
            log.exception("cannot prepare %s", job.rel)
            reason = f"cannot be prepared for the model ({type(e).__name__}: {e})"
            self.fail(job, sha, FrameReadError(job.path, reason, retryable=False))
            for member, member_sha in members:  # the field's other channel files share its fate
                self.to_commit.put(FailedFrame(member, member_sha, f"channel of {job.rel}, which {reason}"))
            return
        self._hand_on(job, sha, prepared, members, t0, t1, time.perf_counter())

    def _hand_on(self, job: FrameFile, sha: str, prepared: PreparedFrame, members: tuple,
                 t0: float, t1: float, t2: float) -> None:
        """Record the stage times and put the frame's work on the inference queue (back-pressure)."""
        self.metrics.stage_seconds.labels("read").observe(t1 - t0)
        self.metrics.stage_seconds.labels("prepare").observe(t2 - t1)
        if prepared.segment_s is not None:
            self.metrics.stage_seconds.labels("segment").observe(prepared.segment_s)
        frame = ReadFrame(job, sha, prepared, time.monotonic(), members=members,
                          channels=self.channels[:self.model_channels])
        while self.ctx.stopping.fatal is None:  # bounded queue: back-pressure, unless the inference stage died
            try:
                self.to_infer.put(frame, timeout=0.5)
                return
            except queue.Full:
                continue

    def _prepare_in_pool(self, job: FrameFile, sha: str, data: bytes, t0: float, t1: float) -> bool:
        """Prepare a frame in a worker process (`prepare_pool`); False when every shared buffer is
        busy (then this thread prepares it), True when the frame was handed on or failed."""
        try:
            out = self.prepare_pool.prepare(job.path, data)
        except FrameReadError as e:
            self.fail(job, sha, e)
            return True
        except WorkerDied as e:
            self.metrics.frames.labels("worker_died").inc()
            self.fail(job, sha, FrameReadError(job.path, f"{e} (attempt {job.attempt + 1})"))
            return True
        except MACHINE_FAULTS as e:
            self.fail(job, sha, FrameReadError(job.path, f"could not be prepared ({type(e).__name__}: {e})"),
                      machine=True)
            return True
        if out is None:
            return False
        tiles, origins, empty = out
        prepared = PreparedFrame(tiles.planes.shape[1:], tiles, origins[~empty], int(empty.sum()))
        self._hand_on(job, sha, prepared, (), t0, t1, time.perf_counter())
        return True

    def _read_bytes(self, job: FrameFile, counted_ok: bool = False) -> tuple[bytes, str] | None:
        """The file's bytes and their sha256, unless it failed, vanished or is a duplicate (content
        already counted: wanted only when `counted_ok`, for a field scored again)."""
        try:
            check_file_size(job.path, job.size, self.config.limits)  # before reading a byte
        except FrameReadError as e:
            self.fail(job, "", e)
            return None
        try:
            with open(job.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.ledger.release(job.rel)
            return None  # removed or renamed away before we got to it; a new name is a new candidate
        except OSError as e:
            self.fail(job, "", FrameReadError(job.path, f"cannot read ({e.strerror})"))
            return None
        sha = hashlib.sha256(data).hexdigest()  # the bytes are in memory for decoding anyway
        if not counted_ok and self._duplicate(job, sha):
            return None
        return data, sha

    def _load_file(self, job: FrameFile) -> tuple[FrameFile, str, list[np.ndarray], tuple] | None:
        limits = self.config.limits
        m = job.meta
        key = (m.plate, m.well, m.timepoint, m.field, m.z)
        # unchanged, yet a partner of a field scored again that waits for it (see _bring_counted_partners)
        partner = self.join is not None and bool(m.channel) and m.channel in self.join.waiting_for(key)
        read = self._read_bytes(job, counted_ok=partner)
        if read is None:
            return None
        data, sha = read
        try:
            if self.join is not None and not job.meta.channel:  # one file holds the field's channels
                return job, sha, pick_channels(job.path, decode_channels(job.path, data), self.channels), ()
            image = decode_frame(job.path, data, limits)
        except FrameReadError as e:
            self.fail(job, sha, e)
            return None
        if self.join is None:
            return job, sha, [image], ()
        parts = self.join.add(key, m.channel, (job, sha, image)) or self._bring_counted_partners(key, job.pixel_size_um)
        if parts is None:
            return None  # stays claimed in the ledger until its field completes
        (first, first_sha, _), rest = parts[0], parts[1:]
        return first, first_sha, [image for _, _, image in parts], tuple((j, s) for j, s, _ in rest)

    def _bring_counted_partners(self, key: tuple, pixel_size_um: float | None) -> list | None:
        """A re-written channel file of a field counted before (a new version) waits for partners the
        gate will not offer again: unchanged, they are counted. Read their current files from disk,
        as the gate would have, and join them; the field is complete then, and scored again. A
        partner on its way already (re-written too) comes by itself; one gone from disk leaves the
        field waiting, reported as a missing channel."""
        parts = None
        journaled = self.ledger.field_files(key)
        for channel in self.join.waiting_for(key):
            rel = journaled.get(channel)
            if rel is None or not self.ledger.claim(rel):
                continue
            path = os.path.join(self.root, rel)
            try:
                st = os.stat(path)
            except OSError:  # gone (or unreadable): the usual missing-channel report follows
                self.ledger.release(rel)
                continue
            plate, well, timepoint, field_index, z = key
            job = FrameFile(path, rel, FrameMeta(plate, well, field_index, timepoint, z, channel), st.st_size,
                            st.st_mtime_ns, pixel_size_um=pixel_size_um)
            log.info("%s joins its re-written field again (%s %s timepoint %d field %d z %d)", rel, plate, well,
                     timepoint, field_index, z)
            parts = self._join_read(job, key) or parts
        return parts

    def _join_read(self, job: FrameFile, key: tuple) -> list | None:
        """Read, hash and decode a counted partner the usual way, and add it to its field."""
        read = self._read_bytes(job, counted_ok=True)
        if read is None:
            return None
        data, sha = read
        try:
            image = decode_frame(job.path, data, self.config.limits)
        except FrameReadError as e:
            self.fail(job, sha, e)
            return None
        return self.join.add(key, job.meta.channel, (job, sha, image))

    def _load_nd2(self, job: FrameFile) -> tuple[FrameFile, str, list[np.ndarray], tuple] | None:
        try:
            frame = read_nd2_frame(job.path, job.nd2_index)
            contents = self.nd2.contents.get(job.path) if self.nd2 is not None else None
            names = contents.channels if contents is not None else tuple(str(i) for i in range(len(frame)))
            images = select_channels(frame, names, self.channels, job.path)
        except FrameReadError as e:
            self.fail(job, "", e)
            return None
        sha = hashlib.sha256(b"".join(np.ascontiguousarray(i).tobytes() for i in images)).hexdigest()
        if self._duplicate(job, sha):
            return None
        return dataclasses.replace(job, size=sum(i.nbytes for i in images)), sha, images, ()

    def _duplicate(self, job: FrameFile, sha: str) -> bool:
        if self.ledger.is_latest_content(job.rel, sha):  # touched but unchanged: already counted
            self.metrics.frames.labels("duplicate").inc()
            self.ledger.unchanged(job.rel, job.size, job.mtime_ns)
            return True
        return False

    def _classical_in_pool(self, image: np.ndarray, params, crop, crop_from=None):
        return self.seg_pool.classical(image, params, crop, crop_from).result()

    def fail(self, job: FrameFile, sha: str, error: FrameReadError, machine: bool = False) -> None:
        """Retry a retryable failure later (up to pipeline.max_retries), else quarantine the frame.
        A machine fault is never journaled: past its retries the frame waits for the next scan."""
        cfg = self.config.pipeline
        if error.retryable and job.attempt < cfg.max_retries:
            self.metrics.frames.labels("retried").inc()
            log.info("retrying %s later (attempt %d): %s", job.rel, job.attempt + 1, error.reason)
            retry = dataclasses.replace(job, attempt=job.attempt + 1)
            self.retries.add(time.monotonic() + cfg.retry_delay_s, retry)
            return
        if machine:
            log.error("%s: %s; left for the next reconcile scan", job.rel, error.reason)
            self.metrics.frames.labels("deferred").inc()
            self.ledger.release(job.rel)
            return
        self.to_commit.put(FailedFrame(job, sha, error.reason))
