"""Live/dead labels from a real dead stain (propidium iodide and its kin).

A real stain is not the clean channel a simulator draws: its background is high and uneven across a
field, camera offsets and gains differ between acquisitions by orders of magnitude, registration can
pad a frame with zeros, and the dead signal is heavy-tailed. The seed study's rule (a two-component
mixture on the raw mean intensity, live < mean_live + sd_live, dead > mean_dead - sd_dead) then lets a
wide component swallow everything. So, per field:

1. the background is estimated (a low percentile in blocks, smoothed) and subtracted, and the
   residual is divided by the background's own noise: the signal is in noise units, comparable
   across acquisitions, gains and offsets;
2. each window (tile) or object (cell, nucleus) is summarised by a statistic of that signal: the 99th
   percentile of a tile (a dead nucleus covers a small part of it) or the mean inside an object;
3. the mixture is fitted on log(1 + signal) (the cell-type study fits log CD19 the same way);
4. a fit whose components overlap (Ashman's D below a bound) or whose thresholds cross is refused
   with `StainFitError`, which names the acquisition and what to try; the caller still draws the
   histogram first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from wellwatch.core.preprocess import cut_tiles

from .gmm import Mixture, Thresholds, best_mixture

MIN_SEPARATION = 2.0  # Ashman's D: above 2 the two components are cleanly separable
MIN_CLASS_FRACTION = 0.005  # a "dead" component holding under 0.5 % of the values is noise, not a class
# on the log scale: the dead component's typical signal must be at least this many times the live
# one's. Pure noise also splits into two narrow, "separated" components, 1.2-1.3x apart.
MIN_FOLD = 2.0


class StainFitError(ValueError):
    """The stain's mixture cannot give trustworthy live/dead labels; carries the fit for reporting."""

    def __init__(self, acquisition: str, reason: str, hint: str, fit: "StainFit | None" = None):
        self.acquisition, self.reason, self.hint, self.fit = acquisition, reason, hint, fit
        super().__init__(f"{acquisition}: {reason}. {hint}")


@dataclass(frozen=True)
class Background:
    """A field's smooth background and its local noise sd (both the stain's shape), and the imaged
    pixels. Noise is local because shot noise grows with the background it rides on."""

    level: np.ndarray
    noise: np.ndarray
    valid: np.ndarray  # False where the frame was padded (exact zeros around a registered image)

    @property
    def noise_sd(self) -> float:
        return float(np.median(self.noise[self.valid]))


def _block_map(img: np.ndarray, valid: np.ndarray, block: int, reduce, cell: int = 8) -> np.ndarray:
    """`reduce` over the valid pixels of sliding windows of about `block` px (computed on a grid of
    `cell` px, so it follows gradients up to the frame's edges), smoothed, back to full size."""
    h, w = img.shape
    by, bx = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.full((by * cell, bx * cell), np.nan, np.float32)
    padded[:h, :w] = np.where(valid, img, np.nan)
    cells = padded.reshape(by, cell, bx, cell).transpose(0, 2, 1, 3).reshape(by, bx, cell * cell)
    k = max(1, block // cell) | 1  # odd window, in cells
    r = k // 2
    # windows of k x k cells, edges clamped: each window's pixels gathered, then reduced in one call
    padded_cells = np.pad(cells, ((r, r), (r, r), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded_cells, (k, k), axis=(0, 1))
    windows = windows.reshape(by * bx, -1)
    enough = np.sum(np.isfinite(windows), axis=1) >= windows.shape[1] // 4
    coarse = np.full(by * bx, np.nan, np.float32)
    if enough.any():
        coarse[enough] = reduce(windows[enough])
    else:
        coarse[:] = reduce(img[valid][None, :])[0]
    coarse = coarse.reshape(by, bx)
    # windows mostly of padding take the nearest measured window's value
    nearest = ndimage.distance_transform_edt(~np.isfinite(coarse), return_distances=False, return_indices=True)
    coarse = ndimage.gaussian_filter(coarse[tuple(nearest)], 1.0, mode="nearest")
    return ndimage.zoom(coarse, (h / by, w / bx), order=1, mode="nearest", grid_mode=True)[:h, :w].astype(np.float32)


def estimate_background(stain: np.ndarray, block: int = 64, percentile: float = 30.0) -> Background:
    """The level: a low percentile of sliding ~`block` px windows (bright objects cover a minority of
    most windows); the noise: the residual's lower half (which objects cannot reach) in the same windows."""
    img = np.asarray(stain, np.float32)
    valid = img > 0
    if not valid.any():
        raise ValueError("the stain image holds only zeros")
    level = _block_map(img, valid, block, lambda b: np.nanpercentile(b, percentile, axis=1))
    residual = img - level
    noise = _block_map(residual, valid, block,
                       lambda b: np.nanmedian(b, axis=1) - np.nanpercentile(b, 15.87, axis=1))
    floor = 1e-3 * float(np.median(img[valid])) + 1e-6  # a noiseless (synthetic, saturated) field
    return Background(level, np.maximum(noise, floor), valid)


def stain_signal(stain: np.ndarray, background: Background | None = None) -> np.ndarray:
    """The stain above its background in local noise units (0 where the frame was padded)."""
    bg = background if background is not None else estimate_background(stain)
    signal = (np.asarray(stain, np.float32) - bg.level) / bg.noise
    signal[~bg.valid] = 0.0
    return signal


def to_log(values: np.ndarray) -> np.ndarray:
    """log(1 + signal), negative signal clipped to 0: the scale the mixture is fitted on."""
    return np.log1p(np.maximum(np.asarray(values, np.float64), 0.0))


@dataclass(frozen=True)
class Separation:
    ashman_d: float  # |m1 - m0| * sqrt(2) / sqrt(s0^2 + s1^2)
    overlap: float   # integral of min(w0 p0, w1 p1): the Bayes error of the mixture

    def to_dict(self) -> dict:
        return asdict(self)


def separation(mix: Mixture) -> Separation:
    (m0, m1), (s0, s1) = mix.means, mix.sds
    d = abs(m1 - m0) * math.sqrt(2.0) / math.sqrt(s0 ** 2 + s1 ** 2)
    lo, hi = min(m0 - 6 * s0, m1 - 6 * s1), max(m0 + 6 * s0, m1 + 6 * s1)
    grid = np.linspace(lo, hi, 4001)
    return Separation(float(d), float(np.trapezoid(mix.densities(grid).min(axis=1), grid)))


@dataclass(frozen=True)
class StainFit:
    """The mixture and thresholds on the fitted scale (`scale`: "log" = log(1 + signal), or "linear")."""

    thresholds: Thresholds
    separation: Separation
    scale: str

    def to_dict(self) -> dict:
        t = self.thresholds
        return {"scale": self.scale, "live_below": t.live_below, "dead_above": t.dead_above,
                "mixture": asdict(t.mixture), "separation": self.separation.to_dict(),
                "rule": "live < mean_live + sd_live; dead > mean_dead - sd_dead; between: discarded"}


WHAT_TO_TRY = ("Try: fit on reference wells that hold both live and killed cells (--reference-wells), a "
               "per-object statistic (cells instead of tiles), a tile size nearer one cell, or check that "
               "--fluorescence names the dead stain; the histogram shows the fit")


def fit_stain_mixture(values: np.ndarray, acquisition: str, scale: str = "log",
                      min_separation: float = MIN_SEPARATION) -> StainFit:
    """The seed study's two-component rule on `values` (already on the fitted scale), refused with a
    `StainFitError` when the components overlap, a class is missing, or the thresholds cross."""
    values = np.asarray(values, np.float64)
    mix = best_mixture(values)
    t = Thresholds(mix, live_below=mix.means[0] + mix.sds[0], dead_above=mix.means[1] - mix.sds[1])
    fit = StainFit(t, separation(mix), scale)
    sep = fit.separation
    if min(mix.weights) < MIN_CLASS_FRACTION:
        raise StainFitError(acquisition, f"one mixture component holds {min(mix.weights):.2%} of the "
                            f"{len(values)} values: there is no second class to label", WHAT_TO_TRY, fit)
    if sep.ashman_d < min_separation:
        raise StainFitError(acquisition, f"the two mixture components overlap (Ashman's D = {sep.ashman_d:.2f} < "
                            f"{min_separation:g}, overlap {sep.overlap:.3f})", WHAT_TO_TRY, fit)
    if scale == "log":
        fold = float(np.expm1(mix.means[1]) / max(np.expm1(mix.means[0]), 1e-9))
        if fold < MIN_FOLD:
            raise StainFitError(acquisition, f"the brighter component's signal is only {fold:.2f}x the dimmer one's "
                                f"(at least {MIN_FOLD:g}x is a stained class): no dead cells to label", WHAT_TO_TRY, fit)
    if t.live_below >= t.dead_above:
        raise StainFitError(acquisition, f"the thresholds cross (live below {t.live_below:.3g} >= dead above "
                            f"{t.dead_above:.3g} on the {scale} scale)", WHAT_TO_TRY, fit)
    if t.dead_above <= values.min() or t.live_below >= values.max():
        raise StainFitError(acquisition, f"a threshold lies outside the data ({values.min():.3g}..{values.max():.3g}): "
                            f"live below {t.live_below:.3g}, dead above {t.dead_above:.3g}", WHAT_TO_TRY, fit)
    return fit


def tile_statistic(signal_tiles: np.ndarray, statistic: str) -> np.ndarray:
    """(N, T, T) signal tiles -> (N,) per-tile summary: 'p99' (default) or 'mean'."""
    flat = signal_tiles.reshape(len(signal_tiles), -1)
    if statistic == "p99":
        return np.percentile(flat, 99, axis=1)
    if statistic == "mean":
        return flat.mean(axis=1)
    raise ValueError(f"tile statistic {statistic!r}; allowed: p99, mean")


@dataclass(frozen=True)
class StainLabelling:
    """How `dataset live-dead` turns a stain into labels. The defaults survive real stains; the seed
    study's original rule is `StainLabelling(background=False, statistic="mean", scale="linear")`."""

    background: bool = True
    statistic: str = "p99"
    scale: str = "log"
    min_separation: float = MIN_SEPARATION

    def __post_init__(self) -> None:
        if self.statistic not in ("p99", "mean"):
            raise ValueError(f"stain statistic {self.statistic!r}; allowed: p99, mean")
        if self.scale not in ("log", "linear"):
            raise ValueError(f"stain scale {self.scale!r}; allowed: log, linear")

    def summarise(self, fluorescence: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
        """One value per tile (the signal in noise units with `background`, else raw intensity)."""
        img = stain_signal(fluorescence) if self.background else np.asarray(fluorescence, np.float32)
        return tile_statistic(cut_tiles(img, origins, tile), self.statistic)

    def to_scale(self, values: np.ndarray) -> np.ndarray:
        return to_log(values) if self.scale == "log" else np.asarray(values, np.float64)

    def from_scale(self, value: float) -> float:
        return float(np.expm1(value)) if self.scale == "log" else float(value)

    def unit(self) -> str:
        what = {"p99": "99th percentile", "mean": "mean"}[self.statistic]
        return f"{what} of the stain {'above background, in noise sd' if self.background else '(raw)'}"


# The live/dead seed study's rule as published: raw mean intensity per tile, linear mixture.
SEED_STUDY_RULE = StainLabelling(background=False, statistic="mean", scale="linear")
