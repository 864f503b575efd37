"""The inference stage: every model's inputs pooled across frames, and a frame's parts joined.

A frame may need up to three networks: the live/dead classifier (tiles), a segmentation network
(covering tiles; its maps become cells in the process pool) and a cell-type classifier (one crop
per cell, cut in the pool once the cells are known). Each network has its own batcher, so its
inputs from many frames share batches; `FrameWork` carries one frame through, and a frame leaves
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

from .backend import InferenceBackend
from .batcher import PatchBatcher
from .contract import CellCrop
from .crops import Cells
from .segment import ModelSegmenter, SegmentationPool

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
    finishing: bool = False
    typing: bool = False


class InferenceStage:
    def __init__(self, live_dead: InferenceBackend, max_batch: int, max_delay_s: float, metrics,
                 emit: Callable[[FrameWork], None], fail: Callable[[FrameWork, str], None],
                 seg_model: ModelSegmenter | None = None, seg_batch: int = 16, pool: SegmentationPool | None = None,
                 cell_type: InferenceBackend | None = None):
        self.metrics = metrics
        self.emit, self.fail = emit, fail
        self.seg_model, self.pool, self.cell_type = seg_model, pool, cell_type
        self.crop: CellCrop | None = cell_type.contract.crop if cell_type is not None else None
        # (batcher, backend, what its outputs are on the frame, stage name for the metrics)
        self.lanes = [(PatchBatcher(max_batch, max_delay_s), live_dead, "scores", "infer")]
        if seg_model is not None:
            self.lanes.append((PatchBatcher(seg_batch, max_delay_s), seg_model.backend, "maps", "infer_segmentation"))
        if cell_type is not None:
            self.lanes.append((PatchBatcher(max_batch, max_delay_s), cell_type, "type_scores", "infer_cell_type"))
        self.returned: queue.Queue = queue.Queue()  # frames back from the pool, with cells (and crops)
        self._in_pool = 0
        self._lock = threading.Lock()

    # --- intake ----------------------------------------------------------------------------

    def admit(self, work: FrameWork) -> None:
        self._add(0, work, work.patches)
        work.patches = None
        if work.seg_input is not None:
            tiles, _ = work.seg_input
            self._add(1, work, tiles)
        self._advance(work)

    def _add(self, lane: int, work: FrameWork, inputs: np.ndarray) -> None:
        batcher, _, attr, _ = self.lanes[lane]
        for item, out in batcher.add(work, inputs, work.t_added):  # no inputs: done at once
            setattr(item, attr, out)

    def take_returned(self) -> None:
        while True:
            try:
                work = self.returned.get_nowait()
            except queue.Empty:
                return
            self._advance(work)

    # --- batches ---------------------------------------------------------------------------

    def seconds_until_due(self, now: float) -> float | None:
        waits = [w for w in (b.seconds_until_due(now) for b, *_ in self.lanes) if w is not None]
        return min(waits) if waits else None

    @property
    def waiting(self) -> int:
        return sum(b.waiting_patches for b, *_ in self.lanes)

    def run_due(self, flush: bool = False) -> None:
        for batcher, backend, attr, stage in self.lanes:
            while batcher.due(time.monotonic()) or (flush and batcher.waiting_patches):
                batch, owners = batcher.next_batch()
                t0 = time.perf_counter()
                outputs = backend.infer(batch)
                self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - t0)
                self.metrics.batch_size.observe(len(batch))
                for work, out in batcher.distribute(outputs, owners):
                    setattr(work, attr, out)
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
                                                     work.image, self.crop, self.seg_model.options))
            return
        if self.cell_type is not None and work.type_scores is None:
            if not work.typing:
                work.typing = True
                self._add(len(self.lanes) - 1, work, work.crops)
                if work.type_scores is not None:  # no cells in range: done at once
                    self._advance(work)
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
