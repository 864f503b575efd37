"""Paired label-free + dead-stain acquisitions -> single-cell crops labelled live/dead.

The cell-type study's way (`training/cells.py`) with a dead stain (propidium iodide) instead of a
surface marker, for a per-cell live/dead crop model (contract task `live_dead` with a crop section):

1. segment each field on a chosen channel: a nuclear stain (e.g. `LIVE`, Hoechst) or the
   label-free channel itself, with the daemon's segmenter;
2. cut crops from the label-free channel(s) around each cell's centroid (`daemon.crops`, as served);
3. measure each cell's dead stain with `training/stain_labels.py` (the same robust labelling as
   `dataset live-dead`): the field's background (a low percentile per block, smoothed) subtracted
   and the residual divided by the local background noise, then the mean or a percentile of that
   signal inside the object, or within a radius of its centroid;
4. label live/dead in ONE function, `label_live_dead`: the two-component mixture on log(1 + signal),
   refused (`StainFitError`, naming the acquisition) when the components overlap or the thresholds
   cross, after drawing the histogram;
5. optionally trim the classes to balance within each plate/well.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from wellwatch.core.contract import CellCrop, EmptyFilter, Normalisation
from wellwatch.core.crops import circular_mask, cut_crops

from .cells import CellDatasetError, CellField, balance_per_group, checked_cells, collect_cells, marker_means
from .dataset import Dataset, well_ids
from .gmm import label_by_thresholds
from .stain_labels import StainFit, StainFitError, estimate_background, fit_stain_mixture, stain_signal, to_log

log = logging.getLogger(__name__)

CLASSES = ("live", "dead")
STATISTIC = re.compile(r"^(mean|p(\d{1,2}))$")


@dataclass(frozen=True)
class StainMeasure:
    """How one cell's dead-stain signal is measured (background-subtracted, in local noise units)."""
    statistic: str = "mean"     # mean | pNN (the NN-th percentile, 1..99)
    radius: float = 0.0         # 0: the segmented object's pixels; > 0: within this radius of its centroid
    background_block: int = 64  # px: the background's block size (stain_labels.estimate_background)

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
        return (f"{self.statistic} of {channel} {where}, above the field's background in local noise sd "
                f"({self.background_block} px blocks)")


def stain_per_cell(stain: np.ndarray, labels: np.ndarray, ids: np.ndarray, centroids: np.ndarray,
                   measure: StainMeasure) -> np.ndarray:
    """(N,) stain signal (above background, in local noise sd) of the cells with label `ids`
    (centroids (N, 2) as y, x)."""
    if len(ids) == 0:
        return np.zeros(0)
    signal = stain_signal(stain, estimate_background(stain, measure.background_block))
    return region_statistic(signal, labels, ids, centroids, measure)


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

def label_live_dead(log_values: np.ndarray, acquisition: str) -> tuple[np.ndarray, StainFit]:
    """The one labelling call: 0 live, 1 dead, -1 ambiguous (not used), from log(1 + signal) values:
    `stain_labels.fit_stain_mixture` (the seed study's rule on a two-component mixture; overlapping
    components, a missing class or crossing thresholds raise `StainFitError` naming `acquisition`)."""
    fit = fit_stain_mixture(log_values, acquisition, "log")
    return label_by_thresholds(log_values, fit.thresholds), fit


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
    log_values = to_log(values)
    acquisition = ", ".join(sorted(set(c.plate)))
    unit = measure.describe(stain_channel)
    try:
        labels, fit = label_live_dead(log_values, f"dead stain {stain_channel!r} of {acquisition}")
    except StainFitError as e:
        if histogram and e.fit is not None:
            plot_stain_histogram(log_values, None, e.fit, Path(histogram), unit, refused=e.reason)
        raise CellDatasetError(f"{e} For cells: check --segment-on and --stain-statistic/--stain-radius "
                               f"(histogram: {histogram})") from None
    t = fit.thresholds
    ids, source = np.array(c.ids), np.array(c.source)
    well, plate = np.array(c.well), np.array(c.plate)
    dish = well_ids(plate, well)
    used = labels >= 0
    n_class = [int((labels == k).sum()) for k in (0, 1)]
    if histogram:
        plot_stain_histogram(log_values, labels, fit, Path(histogram), unit)
    if min(n_class) == 0:
        raise CellDatasetError(f"dead stain {stain_channel!r} of {acquisition}: the mixture labels {n_class[0]} live "
                               f"and {n_class[1]} dead cells (live below {t.live_below:.2f}, dead above "
                               f"{t.dead_above:.2f} on the log scale): check --segment-on, "
                               f"--stain-statistic/--stain-radius (histogram: {histogram})")
    keep = balance_per_group(labels, dish, seed) if balance else used
    counts = {"fields": c.fields, "segmented": int(len(checked.all_areas)),
              "out_of_size_range": int(len(checked.all_areas) - len(checked.areas)),
              "in_size_range": int(len(checked.areas)), "ambiguous": int((~used).sum()),
              "live": n_class[0], "dead": n_class[1], "removed_by_balance": int((used & ~keep).sum()),
              "kept": int(keep.sum())}
    thresholds = {"unit": unit, "live_below": float(np.expm1(t.live_below)), "dead_above": float(np.expm1(t.dead_above)),
                  "fit": fit.to_dict(), "rule": "on log(1 + signal): live < mean_live + sd_live, dead > "
                  "mean_dead - sd_dead (the live/dead study's rule); between: not used"}
    meta = {"kind": "crops", "task": "live_dead", "positive_class": "dead", "channels": channels,
            "normalisation": asdict(Normalisation("mask_mean", {})), "tiling": None,
            "empty_filter": asdict(EmptyFilter("none", {})), "cell_crop": asdict(crop),
            "thresholds": thresholds, "separation": fit.separation.to_dict(), "label_counts": counts,
            "segmentation": {"channel": segment_channel, **(segmentation or {})},
            "stain": {"channel": stain_channel, **asdict(measure)},
            "balance": {"by": "plate/well", "seed": seed} if balance else None,
            "provenance": {"source": "paired label-free + dead-stain fields (dataset cells --dead-stain)",
                           "fields": c.fields}}
    return Dataset(checked.x[keep], labels[keep], ids[keep], source[keep], well[keep], plate[keep], CLASSES, meta,
                   values[keep].astype(np.float32), checked.areas[keep].astype(np.int64))


def plot_stain_histogram(log_values: np.ndarray, labels: np.ndarray | None, fit: StainFit, path: Path,
                         unit: str, refused: str = "") -> Path:
    """The cells' log(1 + signal) by label, the mixture, the thresholds and how well it separates;
    drawn for a refused fit too (no labels; the title says why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, sep = fit.thresholds, fit.separation
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    bins = np.linspace(log_values.min(), log_values.max() + 1e-9, 70)
    width = bins[1] - bins[0]
    if labels is None:
        ax.hist(log_values, bins=bins, color="0.6", alpha=0.8, label=f"cells (n={len(log_values)})")
    for k, colour, name in ((0, "tab:green", "live"), (1, "tab:red", "dead"), (-1, "gold", "ambiguous (not used)")):
        if labels is not None:
            sel = labels == k
            ax.hist(log_values[sel], bins=bins, color=colour, alpha=0.6, label=f"{name} (n={int(sel.sum())})")
    grid = np.linspace(bins[0], bins[-1], 500)
    m = t.mixture
    for k, colour in ((0, "tab:green"), (1, "tab:red")):
        pdf = m.densities(grid)[:, k]
        ax.plot(grid, pdf * len(log_values) * width, color=colour, lw=1.5,
                label=f"component {m.means[k]:.2f} +/- {m.sds[k]:.2f}, w {m.weights[k]:.2f}")
    ax.axvline(t.live_below, color="tab:green", ls="--", lw=1, label=f"live below {t.live_below:.2f}")
    ax.axvline(t.dead_above, color="tab:red", ls="--", lw=1, label=f"dead above {t.dead_above:.2f}")
    ax.set_xlabel(f"log(1 + {unit})", fontsize=7)
    ax.set_ylabel("cells")
    ax.set_yscale("symlog", linthresh=10)
    ax.legend(fontsize=6.5)
    title = f"Ashman's D = {sep.ashman_d:.2f}, overlap = {sep.overlap:.3f}"
    if labels is not None:
        title = (f"dead-stain labels: {int((labels == 0).sum())} live, {int((labels == 1).sum())} dead, "
                 f"{int((labels < 0).sum())} ambiguous; {title}")
    ax.set_title(f"REFUSED: {refused}\n{title}" if refused else title, fontsize=8,
                 color="tab:red" if refused else "k")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
