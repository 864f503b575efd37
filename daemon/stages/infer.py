"""The inference stage (thread "infer"): every model's inputs pooled across frames, a frame's parts joined.

A frame may need up to four networks (`Models`): the live/dead classifier (tiles), a segmentation
network (covering tiles; its maps become cells in the process pool) and the crop classifiers, a
cell-type and a per-cell live/dead one (one crop per cell, cut in the pool once the cells are known,
the same crops for both). Each network has its own lane (a batcher and its backend), so its inputs
from many frames share batches. `ReadFrame`s come in from the read stage; a frame's outputs gather
in an `_InFlight` record that only this thread touches (pool results come back through a queue,
so this thread never waits on the pool), and it leaves as a `ScoredFrame` for the commit stage when
every lane it needs has answered.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field

import numpy as np

from wellwatch.core.contract import CellCrop
from wellwatch.core.crops import Cells
from wellwatch.core.inference.backend import InferenceBackend
from wellwatch.core.inference.models import Models
from wellwatch.core.scoring import FrameOutputs
from wellwatch.core.segmentation.segmenters import ModelSegmenter
from wellwatch.daemon.batcher import PatchBatcher
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.messages import STOP, FailedFrame, FrameFile, ReadFrame, ScoredFrame
from wellwatch.daemon.segmentation_pool import SegmentationPool

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _InFlight:
    """One frame between intake and emission. Not the `ReadFrame` itself: its inputs go to the lanes'
    batchers, and the arrays kept here are dropped as soon as they are used, so a frame waiting on
    the segmentation pool holds no patches."""
    file: FrameFile
    sha256: str
    members: tuple
    channels: tuple
    shape: tuple[int, ...]
    tile_origins: np.ndarray
    n_empty: int
    t_added: float
    seg_origins: np.ndarray | None = None  # the segmentation network's tile origins, until its maps are in
    image: np.ndarray | None = None        # kept only until the pool has cut the cell crops
    cells: Cells | None = None
    crops: np.ndarray | None = None
    crop_keep: np.ndarray | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # lane name -> the frame's outputs
    finishing: bool = False  # its maps are in the pool
    cropped: bool = False    # its crops are in the crop lanes


@dataclass(eq=False)
class Lane:
    """One network's batched path: inputs from many frames share its batches."""
    name: str                # live_dead, segmentation, cell_type, cell_live_dead (the model slot)
    batcher: PatchBatcher
    backend: InferenceBackend
    stage: str               # stage label in the latency metrics


class InferenceStage:
    def __init__(self, ctx: StageContext, models: Models, to_infer: queue.Queue, to_commit: queue.Queue,
                 seg_model: ModelSegmenter | None = None, pool: SegmentationPool | None = None):
        batching = ctx.config.batching
        self.max_batch, max_delay_s = batching.max_batch, batching.max_delay_ms / 1000.0
        self.metrics, self.to_infer, self.to_commit = ctx.metrics, to_infer, to_commit
        self.seg_model, self.pool = seg_model, pool
        crop_models = models.crop_models()
        # the pipeline checks that the crop models share one crop section (`crops.crop_section`)
        self.crop: CellCrop | None = next((m.contract.crop for m in crop_models.values()), None)
        # a new network is one more lane here plus its step in _advance
        lanes = [Lane("live_dead", PatchBatcher(self.max_batch, max_delay_s), models.live_dead, "infer")]
        if seg_model is not None:
            lanes.append(Lane("segmentation", PatchBatcher(ctx.config.segmentation.max_batch, max_delay_s),
                              seg_model.backend, "infer_segmentation"))
        # crop lanes: each frame's cell crops go to all of them at once
        self.crop_lanes = list(crop_models)
        lanes += [Lane(slot, PatchBatcher(self.max_batch, max_delay_s), backend, f"infer_{slot}")
                  for slot, backend in crop_models.items()]
        self.lanes: dict[str, Lane] = {lane.name: lane for lane in lanes}
        self.returned: queue.Queue = queue.Queue()  # (frame, pool future) once the pool is done with it
        self._in_pool = 0

    # --- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            wait = self.seconds_until_due(time.monotonic())
            try:
                msg = self.to_infer.get(timeout=0.05 if wait is None else min(wait, 0.05))
            except queue.Empty:
                msg = None
            # every frame already prepared joins before the next batch (up to a full one): after a
            # long batch they are all overdue, and admitting one at a time ran a batch per frame
            while msg is not None:
                if msg is STOP:
                    self.drain()
                    self.to_commit.put(STOP)
                    return
                self.admit(msg)
                if self.waiting >= self.max_batch:
                    break
                try:
                    msg = self.to_infer.get_nowait()
                except queue.Empty:
                    msg = None
            self.take_returned()
            self.metrics.queue_depth.labels("prepared").set(self.to_infer.qsize())
            self.metrics.queue_depth.labels("batch_patches").set(self.waiting)
            self.run_due()

    # --- intake ----------------------------------------------------------------------------

    def admit(self, read: ReadFrame) -> None:
        p = read.prepared
        frame = _InFlight(read.file, read.sha256, read.members, read.channels, p.shape, p.tile_origins, p.n_empty,
                          read.t_read, image=p.image, cells=p.cells, crops=p.crops, crop_keep=p.crop_keep)
        self._add("live_dead", frame, p.patches)
        if p.seg_input is not None:
            tiles, frame.seg_origins = p.seg_input
            self._add("segmentation", frame, tiles)
        self._advance(frame)

    def _add(self, lane_name: str, frame: _InFlight, inputs: np.ndarray) -> None:
        for item, out in self.lanes[lane_name].batcher.add(frame, inputs, frame.t_added):  # no inputs: done at once
            item.outputs[lane_name] = out

    def take_returned(self) -> None:
        """Frames back from the segmentation pool: their cells (and crops) in, or their failure out."""
        while True:
            try:
                frame, future = self.returned.get_nowait()
            except queue.Empty:
                return
            self._in_pool -= 1
            error = future.exception()
            if error is not None:
                log.error("segmentation of %s failed: %s", frame.file.rel, error)
                self.to_commit.put(FailedFrame(frame.file, frame.sha256,
                                               f"segmentation failed ({type(error).__name__}: {error})"))
                continue
            frame.cells, frame.crops, frame.crop_keep = future.result()
            frame.image = None
            self._advance(frame)

    # --- batches ---------------------------------------------------------------------------

    def seconds_until_due(self, now: float) -> float | None:
        waits = [w for w in (lane.batcher.seconds_until_due(now) for lane in self.lanes.values()) if w is not None]
        return min(waits) if waits else None

    @property
    def waiting(self) -> int:
        return sum(lane.batcher.waiting_patches for lane in self.lanes.values())

    def run_due(self, flush: bool = False) -> None:
        for lane in self.lanes.values():
            batcher = lane.batcher
            while batcher.due(time.monotonic()) or (flush and batcher.waiting_patches):
                batch, owners = batcher.next_batch()
                # how long the oldest patch of the batch waited for it (max_delay_ms bounds it when idle)
                self.metrics.stage_seconds.labels("batch_wait").observe(
                    time.monotonic() - min(p.t_added for p, _ in owners))
                t0 = time.perf_counter()
                outputs = lane.backend.infer(batch)
                self.metrics.stage_seconds.labels(lane.stage).observe(time.perf_counter() - t0)
                self.metrics.batch_size.observe(len(batch))
                for frame, out in batcher.distribute(outputs, owners):
                    frame.outputs[lane.name] = out
                    self._advance(frame)

    def drain(self) -> None:
        """At shutdown: until every admitted frame has left (emitted or failed)."""
        while True:
            self.run_due(flush=True)
            self.take_returned()
            if not self._in_pool and not self.waiting:
                return
            time.sleep(0.005)

    # --- a frame's next step ---------------------------------------------------------------

    def _advance(self, frame: _InFlight) -> None:
        if "live_dead" not in frame.outputs:
            return
        if self.seg_model is not None and frame.cells is None:
            if "segmentation" in frame.outputs and not frame.finishing:
                frame.finishing = True
                maps, origins = frame.outputs.pop("segmentation"), frame.seg_origins
                frame.seg_origins = None
                self._to_pool(frame, self.pool.finish(maps, origins, frame.shape,
                                                      self.seg_model.contract, frame.image, self.crop,
                                                      self.seg_model.options_for(frame.file.pixel_size_um)))
            return
        if self.crop_lanes and not frame.cropped:
            frame.cropped = True
            for name in self.crop_lanes:  # no cells in range: done at once
                self._add(name, frame, frame.crops)
        if any(name not in frame.outputs for name in self.crop_lanes):
            return
        out = frame.outputs
        outputs = FrameOutputs(frame.shape, frame.tile_origins, frame.n_empty, out["live_dead"], cells=frame.cells,
                               crop_keep=frame.crop_keep, cell_type_scores=out.get("cell_type"),
                               cell_dead_scores=out.get("cell_live_dead"))
        self.to_commit.put(ScoredFrame(frame.file, frame.sha256, outputs, members=frame.members,
                                       channels=frame.channels))

    def _to_pool(self, frame: _InFlight, future) -> None:
        self._in_pool += 1
        t0 = time.perf_counter()

        def done(f) -> None:  # on a pool thread: only the metric and the queue, never the frame
            self.metrics.stage_seconds.labels("segment").observe(time.perf_counter() - t0)
            self.returned.put((frame, f))

        future.add_done_callback(done)
