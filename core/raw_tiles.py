"""Tiles for a model that normalises inside its graph: raw uint16 tiles and their affine maps.

The daemon computes each channel's frame statistics (on a subsample, as normalise_frame does) and
cuts uint16 tiles; the graph casts and applies (x - offset) * scale. So the frame is never
converted to float32 on the CPU, and half the bytes cross to the GPU. The empty filter is the same
test as on normalised tiles: the std of (x - offset) * scale is scale * std(x).
"""

from __future__ import annotations

import numpy as np

from wellwatch.core.contract import ModelContract
from wellwatch.core.preprocess import cut_tiles, normalisation_affine, tile_origins


def raw_tile_dtype(channels: int, tile: int) -> np.dtype:
    """One row of a raw-input batch: the uint16 tile and its per-channel (offset, scale)."""
    return np.dtype([("raw", np.uint16, (channels, tile, tile)), ("affine", np.float32, (channels, 2))])


def prepare_raw_tiles(frames: list[np.ndarray], contract: ModelContract) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One field's channels -> (raw-tile rows of the non-empty tiles, all origins, empty mask), the
    counterpart of preprocess.prepare_tiles for contracts with normalisation_in_graph."""
    assert contract.tiling is not None and contract.normalisation_in_graph
    t = contract.tiling.tile_size
    for f in frames:
        if f.dtype != np.uint16:
            raise ValueError(f"a model normalising in its graph takes uint16 frames, got {f.dtype}")
    affine = np.array([normalisation_affine(f, contract.normalisation) for f in frames], np.float32)  # (C, 2)
    origins = tile_origins(frames[0].shape, contract.tiling)
    first = cut_tiles(frames[0], origins, t)
    qc = contract.empty_filter
    if qc.method == "std":
        spread = first.reshape(len(first), -1).std(axis=1, dtype=np.float32) * abs(affine[0, 1])
        empty = spread < qc.params["threshold"]
    elif qc.method == "none":
        empty = np.zeros(len(origins), dtype=bool)
    else:
        raise ValueError(f"unknown empty filter {qc.method!r}")
    keep = origins[~empty]
    rows = np.empty(len(keep), raw_tile_dtype(len(frames), t))
    rows["raw"][:, 0] = first[~empty]
    for c, f in enumerate(frames[1:], start=1):
        rows["raw"][:, c] = cut_tiles(f, keep, t)
    rows["affine"] = affine
    return rows, origins, empty
