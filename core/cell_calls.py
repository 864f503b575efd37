"""Per-cell calls from a frame's model outputs. Pure functions; no I/O.

- live/dead per cell, from tiles: the mean P(dead) of the non-empty live/dead tiles that contain the
  cell's centroid (NaN when only empty tiles do: such a cell is not called);
- live/dead per cell, from a per-cell crop model: P(dead) of the cell's own crop (NaN for cells
  outside the model's size range, which it never saw);
- cell type per cell: the cell-type model's class (the decision threshold on the positive class
  for two classes, else the most probable class).
"""

from __future__ import annotations

import numpy as np


def cell_dead_probability(centroids: np.ndarray, tile_origins: np.ndarray, tile_size: int,
                          dead_p: np.ndarray) -> np.ndarray:
    """(N,) mean P(dead) over the scored tiles holding each centroid; NaN where none does."""
    if len(centroids) == 0:
        return np.zeros(0)
    if len(tile_origins) == 0:
        return np.full(len(centroids), np.nan)
    cy, cx = centroids[:, :1], centroids[:, 1:]
    oy, ox = tile_origins[None, :, 0], tile_origins[None, :, 1]
    inside = (cy >= oy) & (cy < oy + tile_size) & (cx >= ox) & (cx < ox + tile_size)  # (N, M)
    hits = inside.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hits > 0, (inside * dead_p[None, :]).sum(axis=1) / hits, np.nan)


def crop_dead_probability(n_cells: int, cropped: np.ndarray, probabilities: np.ndarray,
                          positive_index: int) -> np.ndarray:
    """(n_cells,) P(dead) from a crop model's outputs for the cells `cropped` (boolean index); NaN elsewhere."""
    p = np.full(n_cells, np.nan)
    if len(probabilities):
        p[np.asarray(cropped, bool)] = probabilities[:, positive_index]
    return p


def live_dead_cells(p_dead: np.ndarray, threshold: float) -> tuple[int, int]:
    """(live, dead) among the cells with a call."""
    called = p_dead[~np.isnan(p_dead)]
    dead = int(np.count_nonzero(called >= threshold))
    return len(called) - dead, dead


def type_calls(probabilities: np.ndarray, positive_index: int, threshold: float) -> np.ndarray:
    """Class index per cell."""
    if len(probabilities) == 0:
        return np.zeros(0, np.int64)
    if probabilities.shape[1] == 2:
        return np.where(probabilities[:, positive_index] >= threshold, positive_index, 1 - positive_index)
    return probabilities.argmax(axis=1)


def type_counts(probabilities: np.ndarray, classes: tuple[str, ...], positive_index: int,
                threshold: float) -> dict[str, int]:
    calls = type_calls(probabilities, positive_index, threshold)
    counts = np.bincount(calls, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}
