"""A frame's model outputs -> its counts: the one scoring function of the daemon and of reprocessing.

Pure; no I/O. The daemon's commit stage and `wellwatch reprocess` (scale/stages.py) both call
`frame_counts`, so a frame counts the same however it was scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from wellwatch.core.aggregate import TileCounts, count_tiles
from wellwatch.core.cell_calls import cell_dead_probability, crop_dead_probability, live_dead_cells, type_counts
from wellwatch.core.contract import ModelContract
from wellwatch.core.crops import Cells


@dataclass(frozen=True, eq=False)  # arrays inside: identity, not value
class FrameOutputs:
    """What the networks said about one frame, with the geometry needed to count it."""
    shape: tuple[int, ...]
    tile_origins: np.ndarray            # top-left corners of the scored (non-empty) tiles
    n_empty: int                        # tiles dropped as empty before scoring
    tile_scores: np.ndarray             # live/dead probabilities per scored tile
    cells: Cells | None = None          # with segmentation
    crop_keep: np.ndarray | None = None  # which cells were in the crop models' size range
    cell_type_scores: np.ndarray | None = None  # per cropped cell, with a cell-type model
    cell_dead_scores: np.ndarray | None = None  # per cropped cell, with a per-cell live/dead model


def frame_counts(outputs: FrameOutputs, contract: ModelContract, cell_type: ModelContract | None = None,
                 cell_live_dead: ModelContract | None = None) -> TileCounts:
    """Tile calls; with segmentation also cells, their live/dead calls (from a per-cell crop model's
    calls on each cell's crop, else from the tiles at each centroid) and (with a model) types."""
    c, o = contract, outputs
    dead_p = o.tile_scores[:, c.positive_index] if len(o.tile_scores) else np.zeros(0, np.float32)
    counts = count_tiles(dead_p, o.n_empty, c.decision_threshold)
    if o.cells is None:
        return counts
    if cell_live_dead is not None:
        k = cell_live_dead
        p_cell = crop_dead_probability(len(o.cells), o.crop_keep, o.cell_dead_scores, k.positive_index)
        cell_live, cell_dead = live_dead_cells(p_cell, k.decision_threshold)
    else:
        p_cell = cell_dead_probability(o.cells.centroids, o.tile_origins, c.tiling.tile_size, dead_p)
        cell_live, cell_dead = live_dead_cells(p_cell, c.decision_threshold)
    cell_p_sum = float(np.nansum(p_cell)) if len(p_cell) else 0.0  # over the called cells (NaN = no call)
    types = None
    if cell_type is not None:
        t = cell_type
        types = type_counts(o.cell_type_scores if len(o.cell_type_scores) else np.zeros((0, len(t.classes))),
                            t.classes, t.positive_index, t.decision_threshold)
    return dataclasses.replace(counts, cells=len(o.cells), cell_live=cell_live, cell_dead=cell_dead,
                               cell_types=types, cell_dead_p_sum=cell_p_sum)
