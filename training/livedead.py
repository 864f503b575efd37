"""Paired label-free + propidium-iodide acquisitions -> a labelled live/dead tile dataset.

1. find the pairs: every file name is parsed with a naming preset (the daemon's own parser); the
   label-free and the fluorescence channel of one field (plate, well, timepoint, field, z) pair up;
2. tile the label-free frame with the daemon's normalisation and tiling (size/stride as options,
   224/112 by default, the seed study's), and cut the same windows from the fluorescence frame;
3. drop empty tiles with the daemon's empty filter (the contract's, so serving drops the same), and
   tiles touching registration padding;
4. summarise each tile's stain (`stain_labels.StainLabelling`: by default the 99th percentile of the
   stain above its per-field background, in noise units), fit a two-component Gaussian mixture on
   log(1 + value) of a reference subset (e.g. the untreated wells) and label: live < mean_live +
   sd_live, dead > mean_dead - sd_dead, the middle discarded; a fit that does not separate is
   refused (`StainFitError`). A histogram with the mixture, thresholds and separation is saved
   beside the dataset, refused or not.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from wellwatch.core.contract import EmptyFilter, Normalisation, Tiling
from wellwatch.core.errors import NamingError
from wellwatch.core.naming import NamingScheme
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.core.preprocess import cut_tiles, normalise_frame, tile_origins
from wellwatch.core.files.tiff import read_frame

from .dataset import Dataset, contract_fields
from .gmm import Mixture, label_by_thresholds
from .patches import PairedField, cut_patches
from .stain_labels import StainFit, StainFitError, StainLabelling, fit_stain_mixture
from .empty_filter import unsupervised_std_threshold

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")


def files_by_field(folder: Path, naming: str, plate_format: int, pattern: str = "") -> dict[tuple, dict]:
    """{(plate, well, timepoint, field, z): {channel (lower case): (path, FrameMeta)}} for the TIFF
    files under `folder` whose names parse; the plate defaults to the acquisition folder's name."""
    plate = folder.parent.name if folder.name == "data" else folder.name  # scanR: ACQUISITION/data/*.tif
    scheme = NamingScheme(naming, PLATE_FORMATS[plate_format], default_plate=plate, pattern=pattern)
    by_field: dict[tuple, dict[str, tuple[Path, object]]] = defaultdict(dict)
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in TIFF_SUFFIXES or p.name.startswith("."):
            continue
        try:
            meta = scheme.parse(p.name)
        except NamingError:
            continue
        by_field[(*meta.field_key, meta.z)][meta.channel.lower()] = (p, meta)
    return by_field


def find_pairs(folders: Iterable[str | Path], naming: str = "scanr", label_free: str = "BF",
               fluorescence: str = "PI", plate_format: int = 96, pattern: str = "") -> list[tuple[Path, Path, object]]:
    """[(label-free path, fluorescence path, FrameMeta of the label-free file)], in name order."""
    pairs = []
    for folder in folders:
        folder = Path(folder)
        by_field = files_by_field(folder, naming, plate_format, pattern)
        for key in sorted(by_field):
            ch = by_field[key]
            if label_free.lower() in ch and fluorescence.lower() in ch:
                pairs.append((ch[label_free.lower()][0], ch[fluorescence.lower()][0], ch[label_free.lower()][1]))
        unpaired = sum(1 for c in by_field.values() if not (label_free.lower() in c and fluorescence.lower() in c))
        if unpaired:
            log.warning("%s: %d fields lack one of the channels %s/%s", folder, unpaired, label_free, fluorescence)
    if not pairs:
        raise FileNotFoundError(f"no {label_free}+{fluorescence} pairs with the {naming!r} naming under "
                                f"{', '.join(map(str, folders))}")
    return pairs


def read_pairs(pairs) -> Iterator[PairedField]:
    for lf, fl, meta in pairs:
        # the split unit is the field position: a time-lapse (and a z-stack) shows the same cells again,
        # so all timepoints and planes of one field stay on one side of a split
        source = f"{meta.plate}/{meta.well}/f{meta.field}"
        yield PairedField(read_frame(str(lf)), read_frame(str(fl)), source, meta.well, meta.plate,
                          frame=f"{source}/t{meta.timepoint}/z{meta.z}")


def auto_empty_threshold(fields: Iterable[PairedField], norm: Normalisation, tiling: Tiling) -> float:
    """The 'std' filter's threshold without labels (`empty_filter.unsupervised_std_threshold`): 4 sd
    above the tight low mode of log tile std that cell-free background forms (as the demo model does)."""
    stds = []
    for f in fields:
        n = normalise_frame(f.label_free, norm)
        tiles = cut_tiles(n, tile_origins(n.shape, tiling), tiling.tile_size)
        stds.append(tiles.reshape(len(tiles), -1).std(axis=1))

    return unsupervised_std_threshold(np.concatenate(stds))


def equal_posterior(mix: Mixture) -> float:
    """The fluorescence where both components are equally likely (between the means)."""
    grid = np.linspace(mix.means[0], mix.means[1], 2001)
    post = mix.posterior(grid)
    return float(grid[np.argmin(np.abs(post[:, 0] - post[:, 1]))])


def build_live_dead_dataset(fields: list[PairedField], tile: int = 224, stride: int = 112,
                            norm: Normalisation = Normalisation("robust_zscore", {}),
                            empty: str = "std", empty_threshold: float | None = None,
                            reference: dict[str, list[str]] | None = None,
                            histogram: str | Path | None = None,
                            labelling: StainLabelling = StainLabelling(),
                            acquisition: str = "the acquisition") -> Dataset:
    """`reference`: {"wells": [...], "plates": [...]} selects the patches the mixture is fitted on
    (the seed study fits on the untreated set); None: all non-empty patches. A mixture that cannot
    separate live from dead raises `StainFitError` naming `acquisition`, after drawing the histogram."""
    tiling = Tiling(tile, stride)
    if empty == "std":
        thr = empty_threshold if empty_threshold is not None else auto_empty_threshold(fields, norm, tiling)
        qc = EmptyFilter("std", {"threshold": round(float(thr), 4)})
    elif empty == "none":
        qc = EmptyFilter("none", {})
    else:
        raise ValueError(f"empty filter {empty!r}; allowed: std, none (see training/empty_filter.py for the "
                         "ResNet-18 + SVM comparison)")
    total_tiles = sum(len(tile_origins(f.label_free.shape, tiling)) for f in fields)
    dropped: dict[str, int] = {}
    ps = cut_patches(fields, tiling, norm, qc, summarise=labelling.summarise, counts=dropped)
    if len(ps.fluorescence) < 4:
        raise ValueError(f"only {len(ps.fluorescence)} of {total_tiles} tiles are non-empty with {qc}; "
                         "lower --empty-threshold or use --empty-filter none")
    ref_mask = np.ones(len(ps.fluorescence), bool)
    if reference:
        if reference.get("wells"):
            ref_mask &= np.isin(ps.wells.astype(str), [w.upper() for w in reference["wells"]])
        if reference.get("plates"):
            ref_mask &= np.isin(ps.plates.astype(str), reference["plates"])
        if ref_mask.sum() < 4:
            raise ValueError(f"the reference subset {reference} holds {int(ref_mask.sum())} non-empty patches")
    scaled = labelling.to_scale(ps.fluorescence)
    try:
        fit = fit_stain_mixture(scaled[ref_mask], acquisition, labelling.scale, labelling.min_separation)
    except StainFitError as e:
        if histogram and e.fit is not None:
            plot_histogram(scaled, ref_mask, e.fit, Path(histogram), labelling.unit(), refused=e.reason)
        raise
    t = fit.thresholds
    labels = label_by_thresholds(scaled, t)
    keep = labels >= 0
    ids = np.array([f"{s}@{y},{x}" for s, (y, x) in zip(ps.frames.astype(str), ps.origins)])
    thresholds = {"live_below": labelling.from_scale(t.live_below), "dead_above": labelling.from_scale(t.dead_above),
                  "equal_posterior": labelling.from_scale(equal_posterior(t.mixture)),
                  "empty_std": qc.params.get("threshold"), "unit": labelling.unit(), "fit": fit.to_dict(),
                  "labelling": asdict(labelling), "reference": reference or "all non-empty patches",
                  "reference_patches": int(ref_mask.sum())}
    counts = {"tiles": int(total_tiles), "padded": dropped.get("padded", 0),
              "empty": int(total_tiles - dropped.get("padded", 0) - len(labels)), "live": int((labels == 0).sum()),
              "dead": int((labels == 1).sum()), "ambiguous": int((labels < 0).sum())}
    if histogram:
        plot_histogram(scaled, ref_mask, fit, Path(histogram), labelling.unit())
    meta = {"kind": "tiles", "task": "live_dead", "positive_class": "dead", "channels": ["brightfield"],
            **contract_fields(norm, tiling, qc), "thresholds": thresholds, "separation": fit.separation.to_dict(),
            "label_counts": counts,
            "provenance": {"source": "paired label-free + fluorescence fields", "fields": len(fields)}}
    return Dataset(ps.patches[keep].astype(np.float32), labels[keep], ids[keep], ps.sources[keep].astype(str),
                   ps.wells[keep].astype(str), ps.plates[keep].astype(str), ("live", "dead"), meta,
                   ps.fluorescence[keep].astype(np.float32))


def plot_histogram(values: np.ndarray, ref_mask: np.ndarray, fit: StainFit, path: Path, unit: str,
                   refused: str = "") -> Path:
    """The stain values on the fitted scale, the mixture, the thresholds and how well it separates;
    drawn for refused fits too (the title says why), since that is when a user most needs to look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = fit.thresholds
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    bins = np.linspace(values.min(), values.max(), 80)
    ax.hist(values, bins=bins, color="0.7", label=f"all non-empty patches (n={len(values)})")
    if not ref_mask.all():
        ax.hist(values[ref_mask], bins=bins, histtype="step", color="k", label=f"reference (n={int(ref_mask.sum())})")
    grid = np.linspace(values.min(), values.max(), 400)
    width = bins[1] - bins[0]
    m = t.mixture
    for k, (colour, name) in enumerate((("tab:green", "live"), ("tab:red", "dead"))):
        pdf = m.densities(grid)[:, k]
        ax.plot(grid, pdf * ref_mask.sum() * width, color=colour, lw=1.5,
                label=f"{name} component ({m.means[k]:.2f} +/- {m.sds[k]:.2f})")
    ax.axvline(t.live_below, color="tab:green", ls="--", label=f"live below {t.live_below:.2f}")
    ax.axvline(t.dead_above, color="tab:red", ls="--", label=f"dead above {t.dead_above:.2f}")
    lo, hi = sorted((t.live_below, t.dead_above))
    ax.axvspan(lo, hi, color="gold", alpha=0.2, label="discarded (ambiguous)" if t.live_below < t.dead_above
               else "overlap (ambiguous)")
    sep = fit.separation
    title = f"Ashman's D = {sep.ashman_d:.2f}, overlap = {sep.overlap:.3f}"
    ax.set_title(f"REFUSED: {refused}\n{title}" if refused else title, fontsize=8,
                 color="tab:red" if refused else "k")
    ax.set_xlabel(f"{'log(1 + ' if fit.scale == 'log' else ''}{unit}{')' if fit.scale == 'log' else ''}", fontsize=8)
    ax.set_ylabel("patches")
    ax.set_yscale("symlog", linthresh=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
