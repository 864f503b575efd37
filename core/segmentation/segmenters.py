"""Cell segmentation as the daemon, `wellwatch segment` and the benchmark all run it.

Two methods behind one small interface (`segment(frame) -> int32 labels`):
- ClassicalSegmenter: the seed study's threshold + distance-transform watershed
  (core/segmentation/classical.py), for images where it suffices.
- ModelSegmenter: a segmentation network with a contract (task "segmentation"), in three steps the
  daemon runs on different threads: `prepare` (reduce, normalise, tile), the network (the shared
  batched inference path), `finish` (blend the tiles' maps, seeded watershed).
- PackageSegmenter (core/segmentation/package.py): a BioImage.IO segmentation package, the same three
  steps with the package's own processing and halo, then threshold + distance-transform watershed.

The CPU-heavy steps (classical segmentation, `finish`, and cutting single-cell crops for a
cell-type model) are module-level functions so the daemon's process pool
(daemon/segmentation_pool.py) can run them on every core; the GIL would hold threads to about one.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL
from wellwatch.core.contract import CellCrop, ModelContract
from wellwatch.core.crops import cells_of, prepare_crops
from wellwatch.core.errors import ContractError
from wellwatch.core.segmentation.classical import ClassicalParams, segment_classical
from wellwatch.core.segmentation.package import PackageParams, PackageSegmenter, PackageServing, package_labels
from wellwatch.core.segmentation.maps import ServeOptions, labels_from_served, serve_tiles
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.packages.description import is_package
from wellwatch.core.config import InferenceConfig
from wellwatch.core.packages.loading import open_package

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


def model_segmenter(backend, options: ServeOptions = ServeOptions(),
                    package: PackageParams = PackageParams()) -> "ModelSegmenter | PackageSegmenter":
    """The segmenter for a loaded network: a BioImage.IO package's (PackageBackend), or a contract's."""
    if hasattr(backend, "package"):
        return PackageSegmenter(backend, package, options)
    return ModelSegmenter(backend, options)


def load_segmenter(model_path: str | None, classical: ClassicalParams | None = None, threads: int = 0,
                   device: str = "cpu", options: ServeOptions = ServeOptions(),
                   package: PackageParams = PackageParams()) -> Segmenter:
    """A model segmenter for `model_path` ("" = the bundled phase-contrast model; a BioImage.IO package
    is served as one), else classical."""
    if model_path is None:
        return ClassicalSegmenter(classical or ClassicalParams())

    path = model_path or str(BUNDLED_SEGMENTATION_MODEL)
    inference = InferenceConfig(device=device, intra_op_threads=threads, warmup=False)
    if is_package(path):
        backend = open_package(path, "segmentation", inference)
    else:
        backend = OnnxBackend(path, max_batch=16, inference=inference)
    return model_segmenter(backend, options, package)


# --- module-level functions, picklable arguments, for the daemon's process pool ----------------

CellsAndCrops = tuple  # (Cells, crops (K, C, size, size) or None, kept-cell index (N,) or None)


def _cells_and_crops(labels: np.ndarray, frame: np.ndarray | None, crop: CellCrop | None) -> CellsAndCrops:
    cells = cells_of(labels)
    if crop is None or frame is None:
        return cells, None, None
    crops, keep = prepare_crops([frame], cells, crop)
    return cells, crops, keep


def classical_cells(frame: np.ndarray, params: ClassicalParams, crop: CellCrop | None = None,
                    crop_from: np.ndarray | None = None) -> CellsAndCrops:
    """Cells segmented on `frame`; crops cut from `crop_from` (default `frame`), e.g. the label-free
    channel when `frame` is a nuclear stain."""
    return _cells_and_crops(segment_classical(frame, params), frame if crop_from is None else crop_from, crop)


def model_cells(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
                contract: ModelContract | PackageServing, frame: np.ndarray | None = None,
                crop: CellCrop | None = None, options: ServeOptions = ServeOptions()) -> CellsAndCrops:
    if isinstance(contract, PackageServing):  # a BioImage.IO package's map: threshold + watershed
        return _cells_and_crops(package_labels(outputs, origins, shape, contract), frame, crop)
    return _cells_and_crops(labels_from_served(outputs, origins, shape, contract, options), frame, crop)
