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
    if norm.method == "flatfield":
        return flatfield_normalise(x, float(norm.params["sigma"]))
    offset, scale = normalisation_affine(x, norm)
    return (x - np.float32(offset)) * np.float32(scale)


def normalisation_affine(frame: np.ndarray, norm: Normalisation) -> tuple[float, float]:
    """(offset, scale) with normalised = (x - offset) * scale, for the methods that are one affine map
    per frame (robust_zscore, fixed, percentile); a model with the normalisation in its graph gets
    these two numbers per tile and channel (daemon/raw_tiles.py)."""
    if norm.method == "fixed":
        return float(norm.params["mean"]), 1.0 / norm.params["std"]
    sample = frame[::_STATS_STEP, ::_STATS_STEP].astype(np.float32, copy=False)
    if norm.method == "robust_zscore":
        centre = float(np.median(sample))
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(sample - centre)))
        return centre, 1.0 / max(sigma, 1e-6)
    if norm.method == "percentile":
        lo, hi = np.percentile(sample, [norm.params["low"], norm.params["high"]])
        return float(lo), 1.0 / max(float(hi - lo), 1e-6)
    raise ValueError(f"normalisation {norm.method!r} is not one affine map per frame")


def smooth_background(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian (sigma px) estimate of the illumination, made on a block-mean reduced copy.

    Reducing first (blocks of about sigma/4) makes it cost a few ms whatever sigma; the result is
    brought back to full size by bilinear interpolation, which is smooth at that scale anyway.
    """
    from scipy import ndimage as ndi

    block = max(1, int(sigma // 4))
    h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
    if block == 1 or h == 0 or w == 0:
        return ndi.gaussian_filter(x, sigma, mode="reflect")
    small = x[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3), dtype=np.float32)
    small = ndi.gaussian_filter(small, sigma / block, mode="reflect")
    # separable bilinear interpolation back to the full shape (pixel centres aligned): two small matmuls
    return _linear_weights(x.shape[0], small.shape[0], block) @ small @ _linear_weights(x.shape[1], small.shape[1], block).T


def _linear_weights(n: int, m: int, block: int) -> np.ndarray:
    """(n, m) matrix that interpolates m block centres linearly onto n pixel centres."""
    pos = np.clip((np.arange(n) + 0.5) / block - 0.5, 0, m - 1)
    lo = np.minimum(pos.astype(np.int64), m - 1)
    hi = np.minimum(lo + 1, m - 1)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n, m), np.float32)
    weights[np.arange(n), lo] += 1 - frac
    weights[np.arange(n), hi] += frac
    return weights


def flatfield_normalise(x: np.ndarray, sigma: float) -> np.ndarray:
    """Divide by the smooth illumination, then scale the relative contrast by its robust spread.

    (x / background - 1) / (1.4826 * MAD): a gradient across the field, a brighter lamp, another
    camera gain or offset-free contrast change all give the same image. Used for phase contrast
    and bright field, whose background is a mid-grey that the cells modulate.
    """
    x = x.astype(np.float32, copy=False)
    background = np.maximum(smooth_background(x, sigma), np.float32(1e-6))
    rel = x / background - np.float32(1.0)
    sample = rel[::_STATS_STEP, ::_STATS_STEP]
    centre = float(np.median(sample))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(sample - centre)))
    return (rel - np.float32(centre)) * np.float32(1.0 / max(spread, 1e-6))


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
