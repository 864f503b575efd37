"""Classical cell segmentation (the Ogawa et al. seed study's pipeline), on current scikit-image.

    [downsample] -> smooth -> foreground (Otsu on intensity, or on local texture) -> closing
    -> [opening] -> [clear border] -> fill holes -> Euclidean distance transform -> Gaussian
    -> local peaks as markers -> watershed -> keep regions with min_area <= area <= max_area

Raw-intensity Otsu fails on phase contrast: spread cells are as bright on average as the
background, with dark and bright (halo) parts. `foreground = "texture"` thresholds the local
standard deviation instead, which is high over cells and low over the flat background.

Every length and area in `ClassicalParams` is in full-resolution pixels whatever `downsample`
is; with `downsample = 2` the pipeline runs on 2x2 block means and the labels are enlarged back
(nearest neighbour) to the frame's shape. Pure functions; no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import clear_border, watershed

from wellwatch.core.errors import ConfigError
from wellwatch.core.segmentation.downsample import block_mean, filter_by_area, upsample_labels
from wellwatch.core.validation import between, build, check_fields, choice, not_above


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of `segment_classical`. Defaults: tuned on Usiigaci phase-contrast sets 1-20."""

    foreground: str = field(default="texture", metadata=choice("intensity", "texture"))
    # intensity: cells darker than the background (threshold below Otsu instead of above)
    dark_cells: bool = False
    smooth_sigma: float = field(default=0.0, metadata=between(0.0, 50.0))      # Gaussian pre-filter, px
    texture_window: int = field(default=3, metadata=between(3, 201))           # local-std window, px
    threshold_factor: float = field(default=0.5, metadata=between(0.05, 20.0))  # x Otsu threshold
    closing_radius: int = field(default=3, metadata=between(0, 100))           # disk, px; 0 = none
    opening_radius: int = field(default=0, metadata=between(0, 100))           # disk, px; 0 = none
    clear_border: bool = False
    fill_holes: bool = True
    dist_sigma: float = field(default=4.0, metadata=between(0.0, 100.0))       # Gaussian on the EDT, px
    min_distance: int = field(default=30, metadata=between(1, 1000))           # between markers, px
    min_area: int = field(default=1000, metadata=between(0, 10**8) | not_above("max_area"))  # px
    max_area: int = field(default=20000, metadata=between(1, 10**9))           # px
    downsample: int = field(default=2, metadata=choice(1, 2))

    def validate(self) -> "ClassicalParams":
        """Raise ValueError naming the field and what is allowed; return self when valid."""
        try:
            check_fields(self, "ClassicalParams.")
        except ConfigError as e:
            raise ValueError(f"{e.key}: got {e.value!r}; {e.allowed}") from None
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "") -> "ClassicalParams":
        """Build from a config table, checked as config.toml is: unknown keys and bad values raise
        ConfigError(prefix + key, ...)."""
        table = dict(data) if isinstance(data, Mapping) else data
        return build(cls, table, prefix)


# ---------------------------------------------------------------------------------------------
# building blocks (binary masks are bool; images float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (float32), so float32 sums keep their precision."""
    sample = x[::4, ::4]
    mean, std = float(sample.mean()), float(sample.std())
    return (x - np.float32(mean)) * np.float32(1.0 / max(std, 1e-12))


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """ndi.uniform_filter(x, size, mode="reflect") for a 2-D float32 image, faster.

    Padding once (numpy "symmetric" is scipy's "reflect") and adding shifted views beats scipy's
    per-line filter by several times for the small windows used here; long windows use cumulative
    sums in float64. Equal to uniform_filter up to float32 rounding.
    """
    before, after = size // 2, size - 1 - size // 2
    p = np.pad(x, ((before, after), (before, after)), mode="symmetric")
    h, w = x.shape
    if size <= 15:
        # as scipy: each 1-D pass sums in float64, divides by size and rounds to float32
        acc = np.add(p[0:h], p[1:h + 1], dtype=np.float64)
        for k in range(2, size):
            acc += p[k:k + h]
        acc /= size
        rows = acc.astype(np.float32)
        acc = np.add(rows[:, 0:w], rows[:, 1:w + 1], dtype=np.float64)
        for k in range(2, size):
            acc += rows[:, k:k + w]
        acc /= size
        return acc.astype(np.float32)
    c = np.zeros((p.shape[0] + 1, p.shape[1]), np.float64)
    np.cumsum(p, axis=0, out=c[1:])
    rows = ((c[size:] - c[:-size]) / size).astype(np.float32)
    c = np.zeros((h, p.shape[1] + 1), np.float64)
    np.cumsum(rows, axis=1, out=c[:, 1:])
    return ((c[:, size:] - c[:, :-size]) / size).astype(np.float32)


def _local_std(x: np.ndarray, size: int) -> np.ndarray:
    """Standard deviation over size x size windows (reflected at the edges), float32."""
    mean = _box_mean(x, size)
    var = _box_mean(x * x, size)
    var -= mean * mean
    np.maximum(var, 0, out=var)
    return np.sqrt(var, out=var)


def _disk(radius: float) -> np.ndarray:
    """The pixels (y, x) with y*y + x*x <= radius**2: a symmetric disk for any real radius.

    (skimage.morphology.disk rounds a fractional radius asymmetrically; the half-resolution radii
    here are often fractional.)
    """
    n = int(math.floor(radius))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    return yy * yy + xx * xx <= radius * radius


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by the disk of `radius` (pixels outside the image are False)."""
    return ndi.binary_dilation(mask, structure=_disk(radius), border_value=0)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary erosion by the disk of `radius` (pixels outside the image are True: they do not erode)."""
    return ndi.binary_erosion(mask, structure=_disk(radius), border_value=1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """ndi.binary_fill_holes, by labelling the background once (4-connected) instead of iterating."""
    background, n = ndi.label(~mask)
    if n == 0:
        return mask
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(n + 1, bool)
    outside[edge] = True
    outside[0] = False  # label 0 = the foreground itself
    return ~outside[background]


def _area_weights(shape: tuple[int, int], frame_shape: tuple[int, int], f: int) -> np.ndarray | None:
    """Full-resolution pixels under each low-resolution pixel (None: all f*f)."""
    if frame_shape[0] == shape[0] * f and frame_shape[1] == shape[1] * f:
        return None
    rows = np.full(shape[0], f, np.float64)
    cols = np.full(shape[1], f, np.float64)
    rows[-1] = frame_shape[0] - (shape[0] - 1) * f
    cols[-1] = frame_shape[1] - (shape[1] - 1) * f
    return np.outer(rows, cols).ravel()


def foreground_mask(frame: np.ndarray, params: ClassicalParams) -> np.ndarray:
    """The thresholded, closed, filled foreground at the working resolution (bool)."""
    f = params.downsample
    x = _normalise(frame.astype(np.float32, copy=False))
    if params.foreground == "texture":
        # The texture is measured at full resolution (the fine grain of phase contrast is what
        # tells cells from background; 2x2 means would average it away), then reduced.
        if params.smooth_sigma > 0:
            x = ndi.gaussian_filter(x, params.smooth_sigma, mode="reflect", truncate=3.0)
        x = _local_std(x, params.texture_window)
        if f == 2:
            x = block_mean(x, 2, odd_edge="pad")
        mask = x > threshold_otsu(x) * params.threshold_factor
    else:
        if f == 2:
            x = block_mean(x, 2, odd_edge="pad")
        if params.smooth_sigma > 0:
            x = ndi.gaussian_filter(x, params.smooth_sigma / f, mode="reflect", truncate=3.0)
        t = threshold_otsu(x)
        # the factor scales the threshold's distance from the image mean (0 after normalisation)
        mask = x < t * params.threshold_factor if params.dark_cells else x > t * params.threshold_factor
    if params.closing_radius > 0:
        r = params.closing_radius / f
        mask = _erode(_dilate(mask, r), r)
    if params.opening_radius > 0:
        r = params.opening_radius / f
        mask = _dilate(_erode(mask, r), r)
    if params.fill_holes:
        mask = _fill_holes(mask)
    return mask


def segment_classical(frame: np.ndarray, params: ClassicalParams = ClassicalParams()) -> np.ndarray:
    """Label the cells of one 2-D frame: int32, the frame's shape, 0 = background, 1..n."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"segment_classical: expected a 2-D frame, got shape {frame.shape}")
    if frame.size == 0:
        return np.zeros(frame.shape, np.int32)
    params.validate()
    f = params.downsample
    if f == 2 and min(frame.shape) < 2:
        f = 1
        params = dataclasses.replace(params, downsample=1)
    mask = foreground_mask(frame, params)
    if params.clear_border:
        comps, _ = ndi.label(mask)  # 4-connected components, as everywhere here
        mask = clear_border(comps) > 0
    if not mask.any():
        return np.zeros(frame.shape, np.int32)

    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    if params.dist_sigma > 0:
        dist = ndi.gaussian_filter(dist, params.dist_sigma / f, mode="reflect", truncate=3.0)
    weights = _area_weights(mask.shape, frame.shape, f)
    # Peaks and watershed only in the connected components that can hold a region of min_area:
    # regions never cross components (4-connected both), peak_local_max treats each label on its
    # own, so dropping the smaller components changes nothing but the time (often thousands of
    # specks of texture, each a Python-level iteration in peak_local_max).
    scale = 1 if weights is not None else f * f  # full-resolution pixels per counted pixel
    comps, n_comps = ndi.label(mask)
    comps = filter_by_area(comps, params.min_area / scale, 0, weights, n_comps)
    mask = comps > 0
    if not mask.any():
        return np.zeros(frame.shape, np.int32)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(params.min_distance / f))),
                           labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-dist, markers, mask=mask)

    # keep regions with min_area <= area <= max_area (full-resolution pixels), renumber 1..n
    labels = filter_by_area(labels, params.min_area / scale, params.max_area / scale, weights, len(peaks))
    return upsample_labels(labels, f, frame.shape).astype(np.int32, copy=False)
