"""Cell segmentation as the daemon, `wellwatch segment` and the benchmark all run it.

Two methods behind one small interface (`segment(frame) -> int32 labels`):
- ClassicalSegmenter: the seed study's threshold + distance-transform watershed
  (daemon/segment_classical.py), for images where it suffices.
- ModelSegmenter: a segmentation network with a contract (task "segmentation"), in three steps the
  daemon runs on different threads: `prepare` (reduce, normalise, tile), the network (the shared
  batched inference path), `finish` (blend the tiles' maps, seeded watershed).

The CPU-heavy steps (classical segmentation, `finish`, and cutting single-cell crops for a
cell-type model) are module-level functions so a process pool can run them on every core
(`SegmentationPool`); the GIL would hold threads to about one.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from .contract import CellCrop, ModelContract
from .crops import cells_of, prepare_crops
from .errors import ContractError
from .segment_classical import ClassicalParams, segment_classical
from .segment_maps import ServeOptions, labels_from_served, serve_tiles

log = logging.getLogger(__name__)

BUNDLED_SEGMENTATION_MODEL = Path(__file__).resolve().parents[1] / "wellwatch" / "models" / "phase-segmentation.onnx"


class Segmenter(Protocol):
    name: str

    def segment(self, frame: np.ndarray) -> np.ndarray:
        """One 2-D frame -> int32 labels of its shape (0 = background, 1..n cells)."""
        ...


class ClassicalSegmenter:
    def __init__(self, params: ClassicalParams = ClassicalParams()):
        self.params = params.validate()
        self.name = "classical"

    def segment(self, frame: np.ndarray) -> np.ndarray:
        return segment_classical(frame, self.params)


class ModelSegmenter:
    """`options`: the acquisition's pixel size (frames are resampled to the model's) and TTA."""

    def __init__(self, backend, options: ServeOptions = ServeOptions()):
        contract = backend.contract
        if contract.task != "segmentation":
            raise ContractError(backend.path, f"is a {contract.task} model; a segmentation model is needed here")
        self.backend = backend
        self.contract: ModelContract = contract
        self.options = options
        self.name = contract.name

    def options_for(self, frame_pixel_size_um: float | None) -> ServeOptions:
        """The options for one frame: a configured pixel size wins; else the frame's own (vendor metadata)."""
        if self.options.frame_pixel_size_um > 0 or not frame_pixel_size_um:
            return self.options
        return dataclasses.replace(self.options, frame_pixel_size_um=float(frame_pixel_size_um))

    def prepare(self, frame: np.ndarray, frame_pixel_size_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tiles (N, 1, t, t) float32 (4N with TTA), their origins at model resolution)."""
        return serve_tiles(frame, self.contract, self.options_for(frame_pixel_size_um))

    def finish(self, outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
               frame_pixel_size_um: float | None = None) -> np.ndarray:
        return labels_from_served(outputs, origins, shape, self.contract, self.options_for(frame_pixel_size_um))

    def segment(self, frame: np.ndarray) -> np.ndarray:
        tiles, origins = self.prepare(frame)
        return self.finish(self.backend.infer(tiles), origins, frame.shape)


def load_segmenter(model_path: str | None, classical: ClassicalParams | None = None, threads: int = 0,
                   device: str = "cpu", options: ServeOptions = ServeOptions()) -> Segmenter:
    """A model segmenter for `model_path` ("" = the bundled phase-contrast model), else classical."""
    if model_path is None:
        return ClassicalSegmenter(classical or ClassicalParams())
    from .backend import OnnxBackend

    path = model_path or str(BUNDLED_SEGMENTATION_MODEL)
    backend = OnnxBackend(path, device=device, intra_op_threads=threads, max_batch=16, warmup=False)
    return ModelSegmenter(backend, options)


# --- the process pool: module-level functions, picklable arguments --------------------------

CellsAndCrops = tuple  # (Cells, crops (K, C, size, size) or None, kept-cell index (N,) or None)


def _cells_and_crops(labels: np.ndarray, frame: np.ndarray | None, crop: CellCrop | None) -> CellsAndCrops:
    cells = cells_of(labels)
    if crop is None or frame is None:
        return cells, None, None
    crops, keep = prepare_crops([frame], cells, crop)
    return cells, crops, keep


def classical_cells(frame: np.ndarray, params: ClassicalParams, crop: CellCrop | None = None) -> CellsAndCrops:
    return _cells_and_crops(segment_classical(frame, params), frame, crop)


def model_cells(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], contract: ModelContract,
                frame: np.ndarray | None = None, crop: CellCrop | None = None,
                options: ServeOptions = ServeOptions()) -> CellsAndCrops:
    return _cells_and_crops(labels_from_served(outputs, origins, shape, contract, options), frame, crop)


class SegmentationPool:
    """Processes that run segmentation's CPU-heavy steps, one frame per task, on every core."""

    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        context = multiprocessing.get_context("spawn")  # fork is unsafe beside the daemon's threads
        self.executor = ProcessPoolExecutor(self.workers, mp_context=context)
        for f in [self.executor.submit(int, 0) for _ in range(self.workers)]:
            f.result()  # start the workers now, not on the first frame

    def classical(self, frame: np.ndarray, params: ClassicalParams, crop: CellCrop | None = None) -> Future:
        """-> (Cells, crops or None, kept index or None); crops when a cell-type model needs them."""
        return self.executor.submit(classical_cells, frame, params, crop)

    def finish(self, outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], contract: ModelContract,
               frame: np.ndarray | None = None, crop: CellCrop | None = None,
               options: ServeOptions = ServeOptions()) -> Future:
        return self.executor.submit(model_cells, outputs, origins, shape, contract, frame, crop, options)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
