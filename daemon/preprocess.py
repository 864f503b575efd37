"""Normalisation, tiling and empty-patch QC: the one implementation training and serving share.

Pure functions over numpy arrays. A model's contract names the method and its parameters;
nothing here guesses.
"""

from __future__ import annotations

import numpy as np

from .contract import EmptyFilter, ModelContract, Normalisation, Tiling

_MAD_TO_SIGMA = 1.4826
_STATS_STEP = 4  # frame statistics from every 4th pixel in each axis: 16x less work, same answer


def normalise_frame(frame: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Return float32, normalised as the contract says."""
    x = frame.astype(np.float32, copy=False)
    sample = x[::_STATS_STEP, ::_STATS_STEP]
    if norm.method == "robust_zscore":
        centre = float(np.median(sample))
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(sample - centre)))
        scale = 1.0 / max(sigma, 1e-6)
        return (x - centre) * np.float32(scale)
    if norm.method == "fixed":
        return (x - np.float32(norm.params["mean"])) * np.float32(1.0 / norm.params["std"])
    if norm.method == "percentile":
        lo, hi = np.percentile(sample, [norm.params["low"], norm.params["high"]])
        return (x - np.float32(lo)) * np.float32(1.0 / max(float(hi - lo), 1e-6))
    raise ValueError(f"unknown normalisation {norm.method!r}")


def tile_origins(shape: tuple[int, int], tiling: Tiling) -> np.ndarray:
    """Top-left (y, x) of every whole tile; a border narrower than a tile is not covered."""
    h, w = shape
    ys = np.arange(0, h - tiling.tile_size + 1, tiling.stride)
    xs = np.arange(0, w - tiling.tile_size + 1, tiling.stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def cut_tiles(image: np.ndarray, origins: np.ndarray, tile_size: int) -> np.ndarray:
    """(N, tile, tile) copies of the windows at `origins` (works for any 2-D array)."""
    if len(origins) == 0:  # also a frame smaller than one tile
        return np.zeros((0, tile_size, tile_size), image.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(image, (tile_size, tile_size))
    return np.ascontiguousarray(windows[origins[:, 0], origins[:, 1]])


def tile_std(tiles: np.ndarray) -> np.ndarray:
    """Standard deviation of each tile (N, ...) -> (N,): the empty filter's statistic, here and in training."""
    return tiles.std(axis=tuple(range(1, tiles.ndim)))


def empty_mask(tiles: np.ndarray, qc: EmptyFilter) -> np.ndarray:
    """True where a (normalised) tile holds no cell: its standard deviation is noise-like."""
    if qc.method == "none":
        return np.zeros(len(tiles), dtype=bool)
    if qc.method == "std":
        return tile_std(tiles) < qc.params["threshold"]
    raise ValueError(f"unknown empty filter {qc.method!r}")


def prepare_tiles(frames: list[np.ndarray], contract: ModelContract) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One field's channels -> (patches NCHW float32 of the non-empty tiles, their origins, empty mask).

    The empty test is made on the first channel, the label-free image the model was trained on.
    """
    assert contract.tiling is not None
    shape = frames[0].shape
    normed = [normalise_frame(f, contract.normalisation) for f in frames]
    origins = tile_origins(shape, contract.tiling)
    first = cut_tiles(normed[0], origins, contract.tiling.tile_size)
    empty = empty_mask(first, contract.empty_filter)
    keep = origins[~empty]
    channels = [first[~empty]] + [cut_tiles(n, keep, contract.tiling.tile_size) for n in normed[1:]]
    return np.stack(channels, axis=1), origins, empty
