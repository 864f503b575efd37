"""The inference stage: every model's inputs pooled across frames, and a frame's parts joined.

A frame may need up to four networks: the live/dead classifier (tiles), a segmentation network
(covering tiles; its maps become cells in the process pool) and the crop classifiers, a cell-type
and a per-cell live/dead one (one crop per cell, cut in the pool once the cells are known, the same
crops for both). Each network has its own batcher, so its inputs from many frames share batches; `FrameWork` carries one frame through, and a frame leaves
(`emit`) when every part it needs has its outputs. Driven by one thread (the pipeline's inference
thread); pool results come back through a thread-safe queue, so that thread never waits on the pool.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from wellwatch.core.inference.backend import InferenceBackend
from wellwatch.daemon.batcher import PatchBatcher
from wellwatch.core.contract import CellCrop
from wellwatch.core.crops import Cells
from wellwatch.core.segmentation.segmenters import ModelSegmenter
from wellwatch.daemon.segmentation_pool import SegmentationPool

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity, not value: a frame's work is one object
class FrameWork:
    job: object
    sha256: str
    shape: tuple[int, int]
    patches: np.ndarray | None  # live/dead inputs of the non-empty tiles (dropped once batched)
    tile_origins: np.ndarray    # their top-left corners
    n_empty: int
    t_added: float
    seg_input: tuple[np.ndarray, np.ndarray] | None = None  # segmentation network tiles, origins
    image: np.ndarray | None = None  # kept only until the pool has cut the cell crops
    cells: Cells | None = None
    crops: np.ndarray | None = None
    crop_keep: np.ndarray | None = None  # which cells were in the classifier's size range
    scores: np.ndarray | None = None       # live/dead probabilities per patch
    maps: np.ndarray | None = None         # segmentation network outputs per tile
    type_scores: np.ndarray | None = None  # cell-type probabilities per cropped cell
    cell_dead_scores: np.ndarray | None = None  # per-cell live/dead probabilities per cropped cell
    finishing: bool = False
    cropped: bool = False  # its crops are in the crop lanes
    members: tuple = ()    # (job, sha256) of the field's other channel files, journaled with this one
    channels: tuple = ()   # the file channels the model read, in its order
    pixel_size_um: float | None = None

    @classmethod
    def of(cls, job, sha256: str, prepared, t_added: float, members: tuple = (), channels: tuple = (),
           pixel_size_um: float | None = None) -> "FrameWork":
        """A frame's work from `daemon.prepare.prepare_frame`'s result."""
        return cls(job, sha256, prepared.shape, prepared.patches, prepared.tile_origins, prepared.n_empty,
                   t_added, seg_input=prepared.seg_input, image=prepared.image, cells=prepared.cells,
                   crops=prepared.crops, crop_keep=prepared.crop_keep, members=members, channels=channels,
                   pixel_size_um=pixel_size_um)


@dataclass(eq=False)
class Lane:
    """One network's batched path: inputs from many frames share its batches."""
    name: str                # live_dead, segmentation, cell_type, cell_live_dead (the model slot)
    batcher: PatchBatcher
    backend: InferenceBackend
    output: str              # the FrameWork attribute its outputs go to
    stage: str               # stage label in the latency metrics


class InferenceStage:
    def __init__(self, live_dead: InferenceBackend, max_batch: int, max_delay_s: float, metrics,
                 emit: Callable[[FrameWork], None], fail: Callable[[FrameWork, str], None],
                 seg_model: ModelSegmenter | None = None, seg_batch: int = 16, pool: SegmentationPool | None = None,
                 cell_type: InferenceBackend | None = None, cell_live_dead: InferenceBackend | None = None):
        self.metrics = metrics
        self.emit, self.fail = emit, fail
        self.seg_model, self.pool, self.cell_type = seg_model, pool, cell_type
        # the pipeline checks that the crop models share one crop section (`crops.crop_section`)
        self.crop: CellCrop | None = next((m.contract.crop for m in (cell_type, cell_live_dead) if m is not None), None)
        # a new network is one more lane here plus its step in _advance
        lanes = [Lane("live_dead", PatchBatcher(max_batch, max_delay_s), live_dead, "scores", "infer")]
        if seg_model is not None:
            lanes.append(Lane("segmentation", PatchBatcher(seg_batch, max_delay_s), seg_model.backend, "maps",
                              "infer_segmentation"))
        # crop lanes: each frame's cell crops go to all of them at once
        self.crop_lanes = [name for name, backend in (("cell_type", cell_type), ("cell_live_dead", cell_live_dead))
                           if backend is not None]
        if cell_type is not None:
            lanes.append(Lane("cell_type", PatchBatcher(max_batch, max_delay_s), cell_type, "type_scores",
                              "infer_cell_type"))
        if cell_live_dead is not None:
            lanes.append(Lane("cell_live_dead", PatchBatcher(max_batch, max_delay_s), cell_live_dead,
                              "cell_dead_scores", "infer_cell_live_dead"))
        self.lanes: dict[str, Lane] = {lane.name: lane for lane in lanes}
        self.returned: queue.Queue = queue.Queue()  # frames back from the pool, with cells (and crops)
        self._in_pool = 0
        self._lock = threading.Lock()

    # --- intake ----------------------------------------------------------------------------

    def admit(self, work: FrameWork) -> None:
        self._add("live_dead", work, work.patches)
        work.patches = None
        if work.seg_input is not None:
            tiles, _ = work.seg_input
            self._add("segmentation", work, tiles)
        self._advance(work)

    def _add(self, lane_name: str, work: FrameWork, inputs: np.ndarray) -> None:
        lane = self.lanes[lane_name]
        for item, out in lane.batcher.add(work, inputs, work.t_added):  # no inputs: done at once
            setattr(item, lane.output, out)

    def take_returned(self) -> None:
        while True:
            try:
                work = self.returned.get_nowait()
            except queue.Empty:
                return
            self._advance(work)

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
                for work, out in batcher.distribute(outputs, owners):
                    setattr(work, lane.output, out)
                    self._advance(work)

    def drain(self) -> None:
        """At shutdown: until every admitted frame has left (emitted or failed)."""
        while True:
            self.run_due(flush=True)
            self.take_returned()
            with self._lock:
                busy = self._in_pool
            if not busy and not self.waiting and self.returned.empty():
                return
            time.sleep(0.005)

    # --- a frame's next step ---------------------------------------------------------------

    def _advance(self, work: FrameWork) -> None:
        if work.scores is None:
            return
        if self.seg_model is not None and work.cells is None:
            if work.maps is not None and not work.finishing:
                work.finishing = True
                _, origins = work.seg_input
                work.seg_input = None
                self._to_pool(work, self.pool.finish(work.maps, origins, work.shape, self.seg_model.contract,
                                                     work.image, self.crop,
                                                     self.seg_model.options_for(work.pixel_size_um)))
            return
        if self.crop_lanes and not work.cropped:
            work.cropped = True
            for name in self.crop_lanes:  # no cells in range: done at once
                self._add(name, work, work.crops)
        if any(getattr(work, self.lanes[name].output) is None for name in self.crop_lanes):
            return
        work.image = work.crops = work.maps = None
        self.emit(work)

    def _to_pool(self, work: FrameWork, future) -> None:
        with self._lock:
            self._in_pool += 1
        t0 = time.perf_counter()

        def done(f) -> None:
            try:
                self.metrics.stage_seconds.labels("segment").observe(time.perf_counter() - t0)
                error = f.exception()
                if error is not None:
                    log.error("segmentation of %s failed: %s", work.job.rel, error)
                    self.fail(work, f"segmentation failed ({type(error).__name__}: {error})")
                else:
                    work.cells, work.crops, work.crop_keep = f.result()
                    work.image = None
                    self.returned.put(work)
            finally:
                with self._lock:
                    self._in_pool -= 1

        future.add_done_callback(done)
