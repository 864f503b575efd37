"""From a decoded frame to the inputs the models need: a pure function, no threads, no I/O.

`prepare_frame` is the daemon's one definition of how a frame is cut up for its models; an
archive reprocessor or a notebook calls it the same way the daemon's read workers do:

    live/dead tiles (normalised, empty ones counted and dropped)
    + classical segmentation: the cells, and crops for a cell-type model
    + a segmentation model: the network's input tiles (cells follow once it has run)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from wellwatch.core.contract import CellCrop, ModelContract
from wellwatch.core.crops import Cells
from wellwatch.core.preprocess import TileSet, prepare_tile_set, prepare_tiles
from wellwatch.core.raw_tiles import prepare_raw_tiles
from wellwatch.core.segmentation.segmenters import CellsAndCrops, ModelSegmenter, classical_cells
from wellwatch.core.segmentation.classical import ClassicalParams

# (frame, params, crop, crop_from) -> (cells, crops, kept index); the daemon passes its process pool's
RunClassical = Callable[[np.ndarray, ClassicalParams, CellCrop | None, np.ndarray | None], CellsAndCrops]


@dataclass(eq=False)
class PreparedFrame:
    shape: tuple[int, ...]
    patches: np.ndarray | TileSet  # live/dead inputs (N, C, t, t) of the non-empty tiles
    tile_origins: np.ndarray  # their top-left corners
    n_empty: int
    seg_input: tuple[np.ndarray, np.ndarray] | None = None  # segmentation network tiles, origins
    image: np.ndarray | None = None  # kept when the crops can only be cut once the cells are known
    cells: Cells | None = None
    crops: np.ndarray | None = None
    crop_keep: np.ndarray | None = None
    segment_s: float | None = None  # seconds classical segmentation took (waiting included)


def prepare_frame(image: np.ndarray | list[np.ndarray], contract: ModelContract, *, segmentation: str = "none",
                  classical: ClassicalParams = ClassicalParams(), seg_model: ModelSegmenter | None = None,
                  crop: CellCrop | None = None, run_classical: RunClassical = classical_cells,
                  pixel_size_um: float | None = None, tiles_as_views: bool = False,
                  segment_image: np.ndarray | None = None) -> PreparedFrame:
    """One decoded 2-D frame (or a field's channels in the model's order) -> its model inputs.
    `segmentation`: none, classical or model (needs `seg_model`), on the first channel; `crop`: a
    crop models' (cell type, per-cell live/dead) crop section, if one is used; `pixel_size_um`: the
    frame's, from its vendor metadata (None = unknown), for a segmentation model that rescales
    frames to its own. `tiles_as_views`: the patches as a `TileSet` (copied once, into the batch).
    `segment_image`: segment this image (e.g. a nuclear stain) instead of the first channel; crops
    are still cut from the first channel."""
    channels = image if isinstance(image, list) else [image]
    shapes = {c.shape for c in channels}
    if len(shapes) != 1:
        raise ValueError(f"the field's channel images differ in shape: {sorted(shapes)}")
    image = channels[0]
    if contract.normalisation_in_graph:  # the graph normalises: raw uint16 tiles and their affine maps
        patches, origins, empty = prepare_raw_tiles(channels, contract)
    elif tiles_as_views:
        patches, origins, empty = prepare_tile_set(channels, contract)
    else:
        patches, origins, empty = prepare_tiles(channels, contract)
    prepared = PreparedFrame(image.shape, patches, origins[~empty], int(empty.sum()))
    if segment_image is not None and segment_image.shape != image.shape:
        raise ValueError(f"the segmentation channel's image is {segment_image.shape}, the model's {image.shape}")
    to_segment = image if segment_image is None else segment_image
    if segmentation == "classical":
        t0 = time.perf_counter()
        prepared.cells, prepared.crops, prepared.crop_keep = run_classical(to_segment, classical, crop, image)
        prepared.segment_s = time.perf_counter() - t0
    elif segmentation in ("model", "cellpose"):
        if seg_model is None:
            raise ValueError(f"prepare_frame: segmentation = {segmentation!r} needs seg_model")
        prepared.seg_input = seg_model.prepare(to_segment, pixel_size_um)
        if crop is not None:
            prepared.image = image  # the crops are cut once the network's cells are known
    elif segmentation != "none":
        raise ValueError(f"prepare_frame: segmentation {segmentation!r}; allowed: none, classical, model, cellpose")
    return prepared
