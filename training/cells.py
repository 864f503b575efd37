"""Paired label-free + marker acquisitions -> a single-cell crop dataset for a cell-type classifier.

The Ogawa et al. seed study's method (LMPP vs pro-B from DIC/bright-field/phase contrast, labelled
by anti-CD19 fluorescence), on the daemon's own pieces so a model is trained on crops cut exactly as
it is served:

1. find the fields: every file name is parsed with a naming preset (the daemon's parser); the
   label-free channels (e.g. PH and DIC) and the marker channel of one field (plate, well,
   timepoint, field, z) are grouped;
2. segment each field on one label-free channel with the daemon's segmenter
   (`daemon.segment.load_segmenter`: the classical watershed, or a segmentation model);
3. keep cells whose area is in [min_area, max_area] and cut a `size` square of every label-free
   channel around each centroid, circular mask, mean inside the mask scaled to 1
   (`daemon.crops.prepare_crops`, the function the daemon serves with);
4. measure each cell's mean marker intensity on the raw marker frame within `marker_radius` of
   the centroid; fit a two-component Gaussian mixture on its log over all cells; the brighter
   component is the marker-positive class; cells whose posterior is below `posterior` (0.8) in both
   components are not used (counted as ambiguous); a histogram with the mixture and the thresholds
   is drawn beside the dataset;
5. optionally trim the classes to balance within each dish (plate/well), as the study did.

Group ids: source = the field (plate/well/fN: a time-lapse shows the same cells again), well and
plate (the dish). Each cell's area (full-resolution px) is stored for the study's baseline, an RBF
SVM on cell size.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from wellwatch.core.contract import CellCrop, EmptyFilter, Normalisation
from wellwatch.core.crops import Cells, circular_mask, cells_of, cut_crops, prepare_crops
from wellwatch.core.errors import WellwatchError
from wellwatch.core.naming import FrameMeta
from wellwatch.core.files.tiff import read_frame

from .dataset import Dataset, well_ids
from .gmm import Mixture, fit_mixture
from .livedead import files_by_field
from .progress import Progress

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("LMPP", "pro-B")
MIN_CELLS_FOR_MIXTURE = 10


class CellDatasetError(WellwatchError, ValueError):
    """The inputs cannot make a cell dataset; the message names the file or option to fix."""


# --- files -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldFiles:
    """The files of one field image: label-free channels (in the order asked for), the labelling
    fluorescence (a marker, or a dead stain) and any other channel asked for (e.g. a nuclear stain to
    segment on)."""
    label_free: dict[str, Path]
    marker: Path
    meta: FrameMeta  # of the first label-free file (plate, well, field, timepoint, z)
    extra: dict[str, Path] = field(default_factory=dict)


def find_fields(folders: Iterable[str | Path], naming: str = "scanr", label_free: Sequence[str] = ("PH",),
                marker: str = "CD19", plate_format: int = 96, pattern: str = "",
                extra: Sequence[str] = (), marker_option: str = "--marker",
                extra_option: str = "--segment-on") -> list[FieldFiles]:
    """Group files by field (plate, well, timepoint, field, z) as `livedead.find_pairs` pairs two
    channels, for several label-free channels plus one marker channel (and `extra` channels, e.g. a
    nuclear stain to segment on). Channel names compare case-insensitively. Errors name the folder,
    the missing channel and the option that set it."""
    folders = [Path(f) for f in folders]
    label_free = [c for c in label_free]
    lower_free = [c.lower() for c in label_free]
    extra = [c for c in extra if c.lower() not in lower_free]
    if not label_free:
        raise CellDatasetError("--label-free: give at least one label-free channel (e.g. PH or PH,DIC)")
    if marker.lower() in lower_free:
        raise CellDatasetError(f"{marker_option} {marker!r} is also a --label-free channel")
    wanted = lower_free + [marker.lower()] + [c.lower() for c in extra]
    out: list[FieldFiles] = []
    seen_channels: set[str] = set()
    incomplete: dict[str, int] = defaultdict(int)
    for folder in folders:
        if not folder.is_dir():
            raise CellDatasetError(f"{folder}: no such folder")
        by_field = files_by_field(folder, naming, plate_format, pattern)
        seen_channels |= {meta.channel for ch in by_field.values() for _, meta in ch.values()}
        for key in sorted(by_field):
            ch = by_field[key]
            missing = [c for c in wanted if c not in ch]
            if missing:
                for c in missing:
                    incomplete[c] += 1
                continue
            out.append(FieldFiles({c: ch[c.lower()][0] for c in label_free}, ch[marker.lower()][0],
                                  ch[label_free[0].lower()][1], {c: ch[c.lower()][0] for c in extra}))
    where = ", ".join(map(str, folders))
    if not seen_channels:
        raise CellDatasetError(f"no image files with the {naming!r} naming under {where} (--naming)")
    present = {c.lower() for c in seen_channels}
    for c, option in ([(c, "--label-free") for c in label_free] + [(marker, marker_option)]
                      + [(c, extra_option) for c in extra]):
        if c.lower() not in present:
            raise CellDatasetError(f"{option} {c!r}: no file of channel {c!r} under {where}; channels found: "
                                   f"{', '.join(sorted(seen_channels))}")
    if not out:
        raise CellDatasetError(f"no field under {where} has all of the channels {', '.join(label_free)} "
                               f"(--label-free), {marker} ({marker_option})"
                               + "".join(f" and {c} ({extra_option})" for c in extra))
    if incomplete:
        log.warning("%s: fields skipped for lacking a channel: %s", where,
                    ", ".join(f"{c} missing in {n}" for c, n in sorted(incomplete.items())))
    return out


@dataclass(frozen=True)
class CellField:
    """One field image in memory: label-free channels (name -> frame), the marker (or dead-stain)
    frame, other channels (e.g. a nuclear stain to segment on), ids."""
    label_free: dict[str, np.ndarray]
    marker: np.ndarray
    source: str   # the split unit: plate/well/fN (every timepoint and plane of the field)
    well: str
    plate: str
    frame: str    # this image: source/tT/zZ
    path: str = ""  # the segmented channel's file (for messages)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def channel(self, name: str) -> np.ndarray | None:
        return self.label_free.get(name, self.extra.get(name))


def read_fields(files: Iterable[FieldFiles]) -> Iterator[CellField]:
    """Read lazily, one field at a time (a plate of 150 px crops is large enough without all frames)."""
    for f in files:
        m = f.meta
        source = f"{m.plate}/{m.well}/f{m.field}"
        images = {c: read_frame(str(p)) for c, p in f.label_free.items()}
        marker = read_frame(str(f.marker))
        extra = {c: read_frame(str(p)) for c, p in f.extra.items()}
        shapes = {c: im.shape for c, im in (images | extra).items()} | {"marker": marker.shape}
        if len(set(shapes.values())) != 1:
            raise CellDatasetError(f"{f.marker}: the channels of one field differ in shape: {shapes}")
        yield CellField(images, marker, source, m.well, m.plate, f"{source}/t{m.timepoint}/z{m.z}",
                        str(next(iter(f.label_free.values()))), extra)


# --- per cell ----------------------------------------------------------------------------------

def marker_means(marker: np.ndarray, centroids: np.ndarray, radius: float) -> np.ndarray:
    """Mean raw marker intensity within `radius` px of each centroid (frame edges reflected, as the
    crops are): the daemon's own window cutter, with an odd window so the disc is centred."""
    size = 2 * int(math.ceil(radius)) + 1
    windows = cut_crops([marker], centroids, size)[:, 0]
    mask = circular_mask(size, radius).astype(bool)
    return windows[:, mask].mean(axis=1) if len(windows) else np.zeros(0, np.float32)


@dataclass
class _Collected:
    crops: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    marker: list[np.ndarray] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    well: list[str] = field(default_factory=list)
    plate: list[str] = field(default_factory=list)
    all_areas: list[np.ndarray] = field(default_factory=list)
    fields: int = 0


# measure(field, labels, label ids of the kept cells, their centroids) -> (N,) labelling intensities
Measure = Callable[[CellField, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def marker_measure(radius: float) -> Measure:
    return lambda f, labels, ids, centroids: marker_means(f.marker, centroids, radius)


def collect_cells(fields: Iterable[CellField], segmenter, channels: Sequence[str], segment_channel: str,
                  crop: CellCrop, measure: Measure, progress: Callable[[str], None] | None = None,
                  total: int | None = None) -> _Collected:
    """Segment (on `segment_channel`: a label-free channel or another, e.g. a nuclear stain), crop the
    label-free channels and measure every field; keep only the cells in the crop's size range."""
    c = _Collected()
    t0 = last = time.monotonic()
    every = max(1, (total or 0) // 20)
    for i, f in enumerate(fields, 1):
        segment_frame = f.channel(segment_channel)
        if segment_frame is None:
            raise CellDatasetError(f"--segment-on {segment_channel!r} is not one of the channels read "
                                   f"{list(f.label_free) + list(f.extra)}")
        labels = segmenter.segment(segment_frame)
        cells = cells_of(labels)
        present = cells.areas > 0
        cells = Cells(cells.centroids[present], cells.areas[present])
        label_ids = np.nonzero(present)[0] + 1
        crops, keep = prepare_crops([f.label_free[ch] for ch in channels], cells, crop)
        cent = cells.centroids[keep]
        c.all_areas.append(cells.areas)
        c.crops.append(crops)
        c.areas.append(cells.areas[keep])
        c.marker.append(measure(f, labels, label_ids[keep], cent))
        c.ids += [f"{f.frame}#{k}@y{int(round(y))}x{int(round(x))}" for k, (y, x) in zip(label_ids[keep], cent)]
        c.source += [f.source] * len(cent)
        c.well += [f.well] * len(cent)
        c.plate += [f.plate] * len(cent)
        c.fields = i
        now = time.monotonic()
        if progress and (i == 1 or i % every == 0 or i == total or now - last > 5):
            last = now
            kept = sum(len(a) for a in c.areas)
            seg = sum(len(a) for a in c.all_areas)
            progress(f"fields {i}{'/' + str(total) if total else ''}: {seg} cells segmented, {kept} in the size "
                     f"range [{crop.min_area}, {crop.max_area or 'inf'}] px ({now - t0:.0f} s)")
    return c


# --- labels from the marker --------------------------------------------------------------------

@dataclass(frozen=True)
class MarkerThresholds:
    """On log mean marker intensity: negative at or below `negative_below`, positive at or above
    `positive_above` (the points between the component means where the posterior reaches `posterior`);
    between them ambiguous."""
    mixture: Mixture
    posterior: float
    negative_below: float
    positive_above: float
    equal_posterior: float


def marker_thresholds(log_marker: np.ndarray, posterior: float = 0.8) -> MarkerThresholds:
    mix = fit_mixture(log_marker)
    lo, hi = mix.means
    grid = np.linspace(lo, hi, 4001)
    post = mix.posterior(grid)
    neg_ok = post[:, 0] >= posterior
    pos_ok = post[:, 1] >= posterior
    # contiguous from each mean towards the other (the far tails of unequal-variance mixtures can
    # favour the wider component on both sides; a monotone rule keeps labels in intensity order)
    neg_end = int(np.argmin(neg_ok)) - 1 if not neg_ok.all() else len(grid) - 1
    pos_start = len(grid) - int(np.argmin(pos_ok[::-1])) if not pos_ok.all() else 0
    negative_below = float(grid[neg_end]) if neg_end >= 0 else -np.inf
    positive_above = float(grid[pos_start]) if pos_start < len(grid) else np.inf
    equal = float(grid[np.argmin(np.abs(post[:, 0] - post[:, 1]))])
    return MarkerThresholds(mix, posterior, negative_below, positive_above, equal)


def label_by_marker(log_marker: np.ndarray, t: MarkerThresholds) -> np.ndarray:
    """0 = negative class, 1 = positive class, -1 = ambiguous (posterior < t.posterior in both)."""
    labels = np.full(len(log_marker), -1, np.int64)
    labels[log_marker <= t.negative_below] = 0
    labels[log_marker >= t.positive_above] = 1
    return labels


def balance_per_group(labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Boolean keep mask: within each group, the larger class trimmed at random to the smaller one's
    count (a group with one class only loses all its cells). Ambiguous (-1) cells are not kept."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), bool)
    for g in sorted(set(groups.tolist())):
        in_g = groups == g
        idx = [np.nonzero(in_g & (labels == k))[0] for k in (0, 1)]
        n = min(len(i) for i in idx)
        for i in idx:
            keep[rng.choice(i, n, replace=False)] = True
    return keep


# --- the dataset -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckedCells:
    collected: _Collected
    all_areas: np.ndarray  # every segmented cell
    areas: np.ndarray      # the cells in the size range (the dataset's rows, before labelling)
    x: np.ndarray          # their crops
    values: np.ndarray     # their labelling intensities


def checked_cells(c: _Collected, crop: CellCrop, segment_channel: str, segmentation: dict[str, Any] | None,
                  progress: Callable[[str], None] | None) -> CheckedCells:
    """The collected cells, or an error that says why there are too few to label (and what to change)."""
    all_areas = np.concatenate(c.all_areas) if c.all_areas else np.zeros(0, np.int64)
    areas = np.concatenate(c.areas) if c.areas else np.zeros(0, np.int64)
    range_text = f"[{crop.min_area}, {crop.max_area or 'no limit'}] px (--min-area/--max-area)"
    if c.fields == 0:
        raise CellDatasetError("no fields to read")
    if len(all_areas) == 0:
        raise CellDatasetError(f"segmentation ({(segmentation or {}).get('method', '?')}) found no cells in "
                               f"{c.fields} fields of channel {segment_channel}; check --segmentation, "
                               "--classical KEY=VALUE or --model for these images")
    if len(areas) < MIN_CELLS_FOR_MIXTURE:
        q = np.percentile(all_areas, [5, 50, 95]).round().astype(int).tolist()
        raise CellDatasetError(f"{len(areas)} of {len(all_areas)} segmented cells have an area in {range_text}; "
                               f"need at least {MIN_CELLS_FOR_MIXTURE}. Segmented areas: 5/50/95th percentile "
                               f"{q[0]}/{q[1]}/{q[2]} px")
    if len(areas) < 2 * c.fields:
        msg = (f"warning: only {len(areas)} cells in the size range {range_text} in {c.fields} fields; check the "
               "segmentation (--classical/--model) and the area range against the cells' size in px")
        log.warning(msg)
        if progress:
            progress(msg)
    x = np.concatenate(c.crops).astype(np.float32, copy=False)
    return CheckedCells(c, all_areas, areas, x, np.concatenate(c.marker).astype(np.float64))


def build_cell_dataset(fields: Iterable[CellField], segmenter, channels: Sequence[str], *,
                       segment_channel: str | None = None, crop: CellCrop = CellCrop(150, 50.0, 2000, 8000),
                       marker_radius: float = 30.0, posterior: float = 0.8,
                       classes: tuple[str, str] = DEFAULT_CLASSES, balance: bool = False, seed: int = 0,
                       histogram: str | Path | None = None, segmentation: dict[str, Any] | None = None,
                       marker_channel: str = "marker", progress: Callable[[str], None] | None = None,
                       total_fields: int | None = None) -> Dataset:
    channels = list(channels)
    segment_channel = segment_channel or channels[0]
    if len(classes) != 2 or classes[0] == classes[1] or not all(classes):
        raise CellDatasetError(f"--classes {','.join(classes)!r}: give two distinct names NEG,POS")
    if not 0.5 < posterior < 1.0:
        raise CellDatasetError(f"--posterior {posterior}: allowed 0.5 < p < 1")
    if marker_radius <= 0:
        raise CellDatasetError(f"--marker-radius {marker_radius}: must be > 0")
    c = collect_cells(fields, segmenter, channels, segment_channel, crop, marker_measure(marker_radius), progress,
                      total_fields)
    checked = checked_cells(c, crop, segment_channel, segmentation, progress)
    all_areas, areas, x, marker = checked.all_areas, checked.areas, checked.x, checked.values
    floor = 1.0
    if (marker < floor).any():
        log.warning("%d cells have a mean marker intensity below %g; their log is taken at %g",
                    int((marker < floor).sum()), floor, floor)
    log_marker = np.log(np.maximum(marker, floor))
    try:
        t = marker_thresholds(log_marker, posterior)
    except ValueError as e:
        raise CellDatasetError(f"marker channel {marker_channel!r}: {e}") from None
    labels = label_by_marker(log_marker, t)
    ids, source = np.array(c.ids), np.array(c.source)
    well, plate = np.array(c.well), np.array(c.plate)
    dish = well_ids(plate, well)
    used = labels >= 0
    n_class = [int((labels == k).sum()) for k in (0, 1)]
    if min(n_class) == 0:
        raise CellDatasetError(f"marker channel {marker_channel!r}: the mixture gives {n_class[0]} {classes[0]} and "
                               f"{n_class[1]} {classes[1]} cells at posterior >= {posterior}; the marker does not "
                               f"separate two populations (log means {t.mixture.means[0]:.2f}, "
                               f"{t.mixture.means[1]:.2f})")
    keep = balance_per_group(labels, dish, seed) if balance else used
    if histogram:
        plot_marker_histogram(log_marker, labels, t, classes, Path(histogram), marker_channel, marker_radius)
    counts = {"fields": c.fields, "segmented": int(len(all_areas)),
              "out_of_size_range": int(len(all_areas) - len(areas)), "in_size_range": int(len(areas)),
              "ambiguous": int((~used).sum()), classes[0]: n_class[0], classes[1]: n_class[1],
              "removed_by_balance": int((used & ~keep).sum()), "kept": int(keep.sum())}
    thresholds = {"statistic": f"log mean raw {marker_channel} intensity within {marker_radius} px of the centroid",
                  "negative_below": t.negative_below, "positive_above": t.positive_above,
                  "equal_posterior": t.equal_posterior, "posterior": posterior, "mixture": asdict(t.mixture),
                  "rule": f"{classes[0]}: log marker <= negative_below; {classes[1]}: >= positive_above "
                          f"(posterior >= {posterior} in the dim/bright component, from its mean towards the "
                          "other's); between: not used",
                  "intensity": {"negative_below": float(np.exp(t.negative_below)),
                                "positive_above": float(np.exp(t.positive_above))}}
    meta = {"kind": "crops", "task": "cell_type", "positive_class": classes[1], "channels": channels,
            "normalisation": asdict(Normalisation("mask_mean", {})), "tiling": None,
            "empty_filter": asdict(EmptyFilter("none", {})), "cell_crop": asdict(crop),
            "thresholds": thresholds, "label_counts": counts,
            "segmentation": {"channel": segment_channel, **(segmentation or {})},
            "marker": {"channel": marker_channel, "radius": marker_radius},
            "balance": {"by": "plate/well", "seed": seed} if balance else None,
            "provenance": {"source": "paired label-free + marker fields (dataset cells)", "fields": c.fields}}
    return Dataset(x[keep], labels[keep], ids[keep], source[keep], well[keep], plate[keep], tuple(classes), meta,
                   marker[keep].astype(np.float32), areas[keep].astype(np.int64))


def plot_marker_histogram(log_marker: np.ndarray, labels: np.ndarray, t: MarkerThresholds,
                          classes: Sequence[str], path: Path, channel: str = "marker", radius: float = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bins = np.linspace(log_marker.min(), log_marker.max(), 70)
    width = bins[1] - bins[0]
    for k, colour in ((0, "tab:blue"), (1, "tab:orange"), (-1, "gold")):
        sel = labels == k
        name = classes[k] if k >= 0 else "ambiguous (not used)"
        ax.hist(log_marker[sel], bins=bins, color=colour, alpha=0.6, label=f"{name} (n={int(sel.sum())})")
    grid = np.linspace(log_marker.min(), log_marker.max(), 500)
    m = t.mixture
    total = np.zeros_like(grid)
    for k, colour in ((0, "tab:blue"), (1, "tab:orange")):
        pdf = m.densities(grid)[:, k]
        total += pdf
        ax.plot(grid, pdf * len(log_marker) * width, color=colour, lw=1.5,
                label=f"{classes[k]} component ({m.means[k]:.2f} +/- {m.sds[k]:.2f}, w {m.weights[k]:.2f})")
    ax.plot(grid, total * len(log_marker) * width, color="k", lw=1, ls=":", label="mixture")
    if np.isfinite(t.negative_below):
        ax.axvline(t.negative_below, color="tab:blue", ls="--", lw=1,
                   label=f"{classes[0]} at or below {t.negative_below:.2f} (posterior {t.posterior})")
    if np.isfinite(t.positive_above):
        ax.axvline(t.positive_above, color="tab:orange", ls="--", lw=1,
                   label=f"{classes[1]} at or above {t.positive_above:.2f}")
    ax.set_xlabel(f"log mean {channel} intensity within {radius:g} px of the centroid")
    ax.set_ylabel("cells")
    ax.legend(fontsize=6.5)
    ax.set_title(f"marker labels: {int((labels == 0).sum())} {classes[0]}, {int((labels == 1).sum())} {classes[1]}, "
                 f"{int((labels < 0).sum())} ambiguous", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stderr_progress(msg: str) -> None:
    Progress("dataset cells").line(msg)


# --- the study's baseline: an RBF SVM on cell size ---------------------------------------------

SVM_DESCRIPTION = ("SVC(kernel='rbf', gamma=1, C=1, class_weight='balanced') on log area standardised "
                   "on the training cells; score = decision function")
SVM_MAX_TRAIN = 10000  # a 1-D feature needs no more; SVC's cost grows with the square of the cells


def cell_size_svm_scores(area_train: np.ndarray, y_train: np.ndarray, area_test: np.ndarray,
                         seed: int = 0) -> np.ndarray:
    """The Ogawa et al. baseline: fit on the training cells' sizes, return the test cells' scores
    (higher = more likely the positive class, y == 1). NaN scores if the training set has one class."""
    from sklearn.svm import SVC

    y_train = np.asarray(y_train).astype(int)
    if len(np.unique(y_train)) < 2 or len(area_test) == 0:
        return np.full(len(area_test), np.nan)
    f_train = np.log(np.maximum(np.asarray(area_train, np.float64), 1.0))
    mean, sd = f_train.mean(), f_train.std() or 1.0
    if len(f_train) > SVM_MAX_TRAIN:
        pick = np.random.default_rng(seed).choice(len(f_train), SVM_MAX_TRAIN, replace=False)
        f_train, y_train = f_train[pick], y_train[pick]
    svm = SVC(kernel="rbf", gamma=1.0, C=1.0, class_weight="balanced")
    svm.fit(((f_train - mean) / sd)[:, None], y_train)
    f_test = (np.log(np.maximum(np.asarray(area_test, np.float64), 1.0)) - mean) / sd
    return svm.decision_function(f_test[:, None])
