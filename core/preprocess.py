"""Normalisation, tiling and empty-patch QC: the one implementation training and serving share.

Pure functions over numpy arrays. A model's contract names the method and its parameters;
nothing here guesses.
"""

from __future__ import annotations

import numpy as np

from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Tiling

_MAD_TO_SIGMA = 1.4826
_STATS_STEP = 4  # frame statistics from every 4th pixel in each axis: 16x less work, same answer


def normalise_frame(frame: np.ndarray, norm: Normalisation, out: np.ndarray | None = None) -> np.ndarray:
    """Return float32, normalised as the contract says, as a new array (or in `out`, e.g. a shared buffer).

    One conversion from the camera's dtype, then arithmetic in place: no full-frame temporaries.
    Robust statistics come from a fixed strided subsample (every 4th pixel in each axis), converted
    on its own: the same numbers as taking it from the converted frame, deterministic.
    """
    if norm.method == "flatfield":
        result = flatfield_normalise(frame, float(norm.params["sigma"]))
        if out is None:
            return result
        out[...] = result
        return out
    x = np.empty(frame.shape, np.float32) if out is None else out
    offset, scale = normalisation_affine(frame, norm)
    np.copyto(x, frame, casting="same_kind" if frame.dtype.kind == "f" else "safe")
    np.subtract(x, np.float32(offset), out=x)  # (x - offset) * scale, rounded as the plain expression
    np.multiply(x, np.float32(scale), out=x)
    return x


def normalisation_affine(frame: np.ndarray, norm: Normalisation) -> tuple[float, float]:
    """(offset, scale) with normalised = (x - offset) * scale, for the methods that are one affine
    map per frame (robust_zscore, fixed, percentile), from the strided subsample; a model with the
    normalisation in its graph gets these two numbers per tile and channel (core/raw_tiles.py)."""
    if norm.method == "fixed":
        return float(norm.params["mean"]), 1.0 / norm.params["std"]
    if norm.method == "flatfield":
        raise ValueError(f"normalisation {norm.method!r} is not one affine map per frame")
    if norm.method not in ("robust_zscore", "percentile"):
        raise ValueError(f"unknown normalisation {norm.method!r}")
    sample = frame[::_STATS_STEP, ::_STATS_STEP].astype(np.float32)  # a copy: worked on in place
    if norm.method == "robust_zscore":
        centre = float(median(sample))
        np.subtract(sample, np.float32(centre), out=sample)
        sigma = _MAD_TO_SIGMA * float(median(np.abs(sample, out=sample)))
        return centre, 1.0 / max(sigma, 1e-6)
    lo, hi = np.percentile(sample, [norm.params["low"], norm.params["high"]])
    return float(lo), 1.0 / max(float(hi - lo), 1e-6)


def median(values: np.ndarray) -> np.floating:
    """Exactly np.median of a float array, about 8x faster: numpy partitions around two middle
    elements at once, which is slow; one partition plus the largest of the lower half is not."""
    flat = values.ravel()
    if len(flat) == 0 or np.isnan(flat).any():
        return np.median(flat)
    k = len(flat) // 2
    part = np.partition(flat, k)
    if len(flat) % 2:
        return part[k]
    return np.mean(np.array([part[:k].max(), part[k]], dtype=flat.dtype))


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
    centre = float(median(sample))
    spread = _MAD_TO_SIGMA * float(median(np.abs(sample - centre)))
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


class TileSet:
    """A frame's kept tiles as windows of its normalised channels, copied only into a batch.

    The daemon hands this, not a (N, C, t, t) array, to the batcher: the one copy of each tile is
    the one into the inference batch (and the planes may live in a shared-memory buffer that a
    preparation process wrote). `release` is called once every tile has been copied out.
    """

    def __init__(self, planes: np.ndarray, origins: np.ndarray, tile_size: int, release=None):
        self.planes = planes      # (C, H, W) float32, normalised
        self.origins = origins    # (N, 2) top-left corners of the kept tiles
        self.tile_size = tile_size
        self._release = release

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.origins), self.planes.shape[0], self.tile_size, self.tile_size)

    def gather(self, start: int, stop: int, out: np.ndarray) -> None:
        """Copy tiles [start, stop) into out[:stop - start] (N, C, t, t)."""
        t = self.tile_size
        for i, (y, x) in enumerate(self.origins[start:stop]):
            out[i] = self.planes[:, y:y + t, x:x + t]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), np.float32)
        self.gather(start, stop, out)
        return out

    def to_array(self) -> np.ndarray:
        return self[:]

    def release(self) -> None:
        """The planes are no longer needed (every tile is in a batch, or the frame was dropped)."""
        release, self._release = self._release, None
        self.planes = np.zeros((self.planes.shape[0], 0, 0), np.float32)  # no view of a buffer given back
        if release is not None:
            release()


def tile_selection(first: np.ndarray, contract: ModelContract) -> tuple[np.ndarray, np.ndarray]:
    """The normalised first channel -> (every tile origin, empty mask). The empty test is made on
    the label-free image the model was trained on, exactly as training makes it (`empty_mask`)."""
    assert contract.tiling is not None
    origins = tile_origins(first.shape, contract.tiling)
    if contract.empty_filter.method == "none":
        return origins, np.zeros(len(origins), dtype=bool)
    return origins, empty_mask(cut_tiles(first, origins, contract.tiling.tile_size), contract.empty_filter)


def prepare_tile_set(frames: list[np.ndarray], contract: ModelContract,
                     planes: np.ndarray | None = None) -> tuple[TileSet, np.ndarray, np.ndarray]:
    """One field's channels -> (TileSet of the non-empty tiles, all origins, empty mask); each
    channel converted once and normalised in place into `planes` (C, H, W float32; a new array if None)."""
    assert contract.tiling is not None
    if planes is None:
        planes = np.empty((len(frames), *frames[0].shape), np.float32)
    for plane, frame in zip(planes, frames):
        normalise_frame(frame, contract.normalisation, out=plane)
    origins, empty = tile_selection(planes[0], contract)
    return TileSet(planes, origins[~empty], contract.tiling.tile_size), origins, empty


def prepare_tiles(frames: list[np.ndarray], contract: ModelContract) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One field's channels -> (patches NCHW float32 of the non-empty tiles, their origins, empty mask)."""
    tiles, origins, empty = prepare_tile_set(frames, contract)
    return tiles.to_array(), origins, empty
