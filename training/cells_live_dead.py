"""Paired label-free + dead-stain acquisitions -> single-cell crops labelled live/dead.

The cell-type study's way (`training/cells.py`) with a dead stain (propidium iodide) instead of a
surface marker, for a per-cell live/dead crop model (contract task `live_dead` with a crop section):

1. segment each field on a chosen channel: a nuclear stain (e.g. `LIVE`, Hoechst) or the
   label-free channel itself, with the daemon's segmenter;
2. cut crops from the label-free channel(s) around each cell's centroid (`daemon.crops`, as served);
3. measure each cell's dead-stain intensity on the raw stain frame after subtracting the field's
   background (the median of the pixels outside every segmented object, per block of
   `background_block` px, smoothly interpolated: the stain's background is high and uneven), as the
   mean or a percentile inside the object, or within a radius of its centroid, and express it as a
   fold over the background there: 1 + (statistic - background) / background. A cell at background
   has fold 1 (log 0) whatever the field's level, and no floor piles cells below background onto
   one value (half of the cells of a real dead-stain field are at or below it);
4. label live/dead from the log folds in ONE function, `label_live_dead`;
5. optionally trim the classes to balance within each plate/well.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from wellwatch.daemon.contract import CellCrop, EmptyFilter, Normalisation
from wellwatch.daemon.crops import circular_mask, cut_crops

from .cells import CellDatasetError, CellField, balance_per_group, checked_cells, collect_cells, marker_means
from .dataset import Dataset
from .gmm import Thresholds, label_by_thresholds, live_dead_thresholds

log = logging.getLogger(__name__)

CLASSES = ("live", "dead")
STATISTIC = re.compile(r"^(mean|p(\d{1,2}))$")
MIN_FOLD = 1e-3  # folds below this (a cell far darker than its background: a bad background) are clipped


@dataclass(frozen=True)
class StainMeasure:
    """How one cell's dead-stain intensity is measured (after per-field background subtraction)."""
    statistic: str = "mean"     # mean | pNN (the NN-th percentile, 1..99)
    radius: float = 0.0         # 0: the segmented object's pixels; > 0: within this radius of its centroid
    background_block: int = 64  # px: the background is the median of non-object pixels per block

    def validate(self) -> "StainMeasure":
        m = STATISTIC.match(self.statistic)
        if not m or (m[2] is not None and not 1 <= int(m[2]) <= 99):
            raise CellDatasetError(f"--stain-statistic {self.statistic!r}: allowed mean or pNN (percentile 1..99, "
                                   "e.g. p90)")
        if self.radius < 0:
            raise CellDatasetError(f"--stain-radius {self.radius}: must be >= 0 (0 = inside each object)")
        if self.background_block < 8:
            raise CellDatasetError(f"--background-block {self.background_block}: at least 8 px")
        return self

    def describe(self, channel: str) -> str:
        where = f"within {self.radius:g} px of the centroid" if self.radius else "inside the segmented object"
        return (f"{self.statistic} of {channel} {where} as a fold over the field's background (median of "
                f"non-object pixels per {self.background_block} px block)")


def field_background(stain: np.ndarray, objects: np.ndarray, block: int) -> np.ndarray:
    """A smooth background map: per block, the median of the pixels outside every object (a block with
    under a quarter of its pixels free takes the field's median), bilinearly interpolated."""
    from skimage.transform import resize

    stain = stain.astype(np.float32, copy=False)
    free = ~objects
    overall = float(np.median(stain[free])) if free.any() else float(np.median(stain))
    ny, nx = -(-stain.shape[0] // block), -(-stain.shape[1] // block)
    grid = np.full((ny, nx), overall, np.float32)
    for i in range(ny):
        for j in range(nx):
            win = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
            values = stain[win][free[win]]
            if values.size >= 0.25 * stain[win].size:
                grid[i, j] = np.median(values)
    return resize(grid, stain.shape, order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def stain_per_cell(stain: np.ndarray, labels: np.ndarray, ids: np.ndarray, centroids: np.ndarray,
                   measure: StainMeasure) -> np.ndarray:
    """(N,) stain fold over background of the cells with label `ids` (centroids (N, 2) y, x): 1 +
    (statistic of the background-subtracted stain - 0) / the mean background in the same region."""
    if len(ids) == 0:
        return np.zeros(0)
    background = field_background(stain, labels > 0, measure.background_block)
    signal = stain.astype(np.float32) - background
    above, level = region_statistic(signal, labels, ids, centroids, measure), \
        region_statistic(background, labels, ids, centroids, StainMeasure("mean", measure.radius))
    level = np.maximum(level, 1e-6 * max(float(np.abs(background).max()), 1.0))  # a zero background: no fold
    return np.maximum(1.0 + above / level, MIN_FOLD)


def region_statistic(image: np.ndarray, labels: np.ndarray, ids: np.ndarray, centroids: np.ndarray,
                     measure: StainMeasure) -> np.ndarray:
    """(N,) `measure.statistic` of `image` inside each object, or within `measure.radius` of its centroid."""
    q = None if measure.statistic == "mean" else float(measure.statistic[1:])
    if measure.radius:
        if q is None:
            return marker_means(image, centroids, measure.radius).astype(np.float64)
        size = 2 * int(np.ceil(measure.radius)) + 1
        windows = cut_crops([image], centroids, size)[:, 0]
        disc = circular_mask(size, measure.radius).astype(bool)
        return np.percentile(windows[:, disc], q, axis=1)
    flat, values = labels.ravel(), image.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.stack([ids, ids + 1]))
    out = np.empty(len(ids))
    for k, (a, b) in enumerate(bounds.T):
        pixels = values[order[a:b]]
        out[k] = pixels.mean() if q is None else np.percentile(pixels, q)
    return out


def stain_measure(measure: StainMeasure) -> Callable:
    return lambda f, labels, ids, centroids: stain_per_cell(f.marker, labels, ids, centroids, measure)


# --- labels ------------------------------------------------------------------------------------

def log_intensity(folds: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(folds, MIN_FOLD))


def label_live_dead(log_values: np.ndarray) -> tuple[np.ndarray, Thresholds]:
    """The one labelling call: 0 live, 1 dead, -1 ambiguous (not used), from log stain intensities.
    The seed study's rule on a two-component mixture (live < mean_live + sd_live, dead >
    mean_dead - sd_dead)."""
    t = live_dead_thresholds(log_values)
    if t.dead_above <= t.live_below:
        raise ValueError(f"the mixture's thresholds cross (dead above {t.dead_above:.2f} <= live below "
                         f"{t.live_below:.2f} on the log scale; components {t.mixture.means[0]:.2f} +/- "
                         f"{t.mixture.sds[0]:.2f} and {t.mixture.means[1]:.2f} +/- {t.mixture.sds[1]:.2f}): "
                         "the stain does not split the cells into two populations")
    return label_by_thresholds(log_values, t), t


# --- the dataset -------------------------------------------------------------------------------

def build_live_dead_cell_dataset(fields: Iterable[CellField], segmenter, channels: Sequence[str], *,
                                 segment_channel: str, crop: CellCrop, measure: StainMeasure = StainMeasure(),
                                 balance: bool = False, seed: int = 0, histogram: str | Path | None = None,
                                 segmentation: dict[str, Any] | None = None, stain_channel: str = "PI",
                                 progress: Callable[[str], None] | None = None,
                                 total_fields: int | None = None) -> Dataset:
    measure = measure.validate()
    channels = list(channels)
    c = collect_cells(fields, segmenter, channels, segment_channel, crop, stain_measure(measure), progress,
                      total_fields)
    checked = checked_cells(c, crop, segment_channel, segmentation, progress)
    values = checked.values
    log_values = log_intensity(values)
    try:
        labels, t = label_live_dead(log_values)
    except ValueError as e:
        if histogram:
            plot_stain_histogram(log_values, None, None, Path(histogram), measure.describe(stain_channel))
        raise CellDatasetError(f"dead stain {stain_channel!r} ({', '.join(sorted(set(c.plate)))}): {e}; try another "
                               f"--stain-statistic/--stain-radius or check --segment-on (histogram: {histogram})") from None
    ids, source = np.array(c.ids), np.array(c.source)
    well, plate = np.array(c.well), np.array(c.plate)
    dish = np.char.add(np.char.add(plate.astype(str), "/"), well.astype(str))
    used = labels >= 0
    n_class = [int((labels == k).sum()) for k in (0, 1)]
    if histogram:
        plot_stain_histogram(log_values, labels, t, Path(histogram), measure.describe(stain_channel))
    if min(n_class) == 0:
        raise CellDatasetError(f"dead stain {stain_channel!r}: the mixture labels {n_class[0]} live and {n_class[1]} "
                               f"dead cells (live below {t.live_below:.2f}, dead above {t.dead_above:.2f} on the log "
                               "scale); the stain does not separate two populations here: check --segment-on, "
                               f"--stain-statistic/--stain-radius (histogram: {histogram})")
    keep = balance_per_group(labels, dish, seed) if balance else used
    counts = {"fields": c.fields, "segmented": int(len(checked.all_areas)),
              "out_of_size_range": int(len(checked.all_areas) - len(checked.areas)),
              "in_size_range": int(len(checked.areas)), "ambiguous": int((~used).sum()),
              "live": n_class[0], "dead": n_class[1], "removed_by_balance": int((used & ~keep).sum()),
              "kept": int(keep.sum())}
    thresholds = {"statistic": f"log({measure.describe(stain_channel)})",
                  "live_below": t.live_below, "dead_above": t.dead_above, "mixture": asdict(t.mixture),
                  "rule": "live: log stain < mean_live + sd_live; dead: > mean_dead - sd_dead (the live/dead "
                          "study's rule on a two-component mixture); between: not used",
                  "fold_over_background": {"live_below": float(np.exp(t.live_below)),
                                           "dead_above": float(np.exp(t.dead_above))}}
    meta = {"kind": "crops", "task": "live_dead", "positive_class": "dead", "channels": channels,
            "normalisation": asdict(Normalisation("mask_mean", {})), "tiling": None,
            "empty_filter": asdict(EmptyFilter("none", {})), "cell_crop": asdict(crop),
            "thresholds": thresholds, "label_counts": counts,
            "segmentation": {"channel": segment_channel, **(segmentation or {})},
            "stain": {"channel": stain_channel, **asdict(measure)},
            "balance": {"by": "plate/well", "seed": seed} if balance else None,
            "provenance": {"source": "paired label-free + dead-stain fields (dataset cells --dead-stain)",
                           "fields": c.fields}}
    return Dataset(checked.x[keep], labels[keep], ids[keep], source[keep], well[keep], plate[keep], CLASSES, meta,
                   values[keep].astype(np.float32), checked.areas[keep].astype(np.int64))


def plot_stain_histogram(log_values: np.ndarray, labels: np.ndarray | None, t: Thresholds | None, path: Path,
                         statistic: str) -> Path:
    """The cells' log stain by label, the mixture and the thresholds (without labels: refused, values only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bins = np.linspace(log_values.min(), log_values.max() + 1e-9, 70)
    width = bins[1] - bins[0]
    if labels is None:
        ax.hist(log_values, bins=bins, color="grey", alpha=0.7, label=f"cells (n={len(log_values)})")
        ax.set_title("dead-stain labels refused: the mixture does not separate two populations", fontsize=9)
        ax.set_xlabel(f"log({statistic})", fontsize=7)
        ax.legend(fontsize=6.5)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    for k, colour, name in ((0, "tab:green", "live"), (1, "tab:red", "dead"), (-1, "gold", "ambiguous (not used)")):
        sel = labels == k
        ax.hist(log_values[sel], bins=bins, color=colour, alpha=0.6, label=f"{name} (n={int(sel.sum())})")
    grid = np.linspace(bins[0], bins[-1], 500)
    m = t.mixture
    for k, colour in ((0, "tab:green"), (1, "tab:red")):
        pdf = m.weights[k] * np.exp(-0.5 * ((grid - m.means[k]) / m.sds[k]) ** 2) / (m.sds[k] * np.sqrt(2 * np.pi))
        ax.plot(grid, pdf * len(log_values) * width, color=colour, lw=1.5,
                label=f"component {m.means[k]:.2f} +/- {m.sds[k]:.2f}, w {m.weights[k]:.2f}")
    ax.axvline(t.live_below, color="tab:green", ls="--", lw=1, label=f"live below {t.live_below:.2f}")
    ax.axvline(t.dead_above, color="tab:red", ls="--", lw=1, label=f"dead above {t.dead_above:.2f}")
    ax.set_xlabel(f"log({statistic})", fontsize=7)
    ax.set_ylabel("cells")
    ax.legend(fontsize=6.5)
    ax.set_title(f"dead-stain labels: {int((labels == 0).sum())} live, {int((labels == 1).sum())} dead, "
                 f"{int((labels < 0).sum())} ambiguous", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
