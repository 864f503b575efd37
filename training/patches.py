"""Paired label-free + fluorescence fields -> labelled live/dead patches.

Tiling, normalisation and the empty-patch test are the daemon's own functions
(wellwatch.core.preprocess), so a model sees at training time exactly what it sees when served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from wellwatch.core.contract import EmptyFilter, Normalisation, Tiling
from wellwatch.core.preprocess import cut_tiles, empty_mask, normalise_frame, tile_origins

from .gmm import Thresholds, label_by_thresholds, live_dead_thresholds


@dataclass(frozen=True)
class PairedField:
    """One field: its label-free image, its fluorescence image, and group ids for leak-free splits."""

    label_free: np.ndarray
    fluorescence: np.ndarray
    source: str  # the raw image's identity (the unit of splitting)
    well: str
    plate: str
    frame: str = ""  # this image's own identity when `source` groups several (e.g. timepoints of one field)


@dataclass
class PatchSet:
    patches: np.ndarray       # (N, 1, T, T) float32, normalised
    fluorescence: np.ndarray  # (N,) mean fluorescence of the same window
    sources: np.ndarray       # (N,) group id: source image
    wells: np.ndarray
    plates: np.ndarray
    labels: np.ndarray | None = None  # 0 live, 1 dead, -1 ambiguous
    origins: np.ndarray | None = None  # (N, 2) top-left (y, x) of each patch in its image
    frames: np.ndarray | None = None   # (N,) the image each patch was cut from

    def subset(self, mask: np.ndarray) -> "PatchSet":
        return PatchSet(self.patches[mask], self.fluorescence[mask], self.sources[mask], self.wells[mask],
                        self.plates[mask], None if self.labels is None else self.labels[mask],
                        None if self.origins is None else self.origins[mask],
                        None if self.frames is None else self.frames[mask])


# (fluorescence field, tile origins, tile size) -> one value per tile
StainSummary = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def mean_fluorescence(fluorescence: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
    """The seed study's tile value: the raw mean fluorescence of the window."""
    fluo = cut_tiles(fluorescence.astype(np.float32), origins, tile)
    return fluo.reshape(len(fluo), tile * tile).mean(axis=1)


def padded_tiles(label_free: np.ndarray, fluorescence: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
    """Tiles touching padding: pixels that are exactly 0 in both channels (a registered, shifted frame)."""
    pad = ((label_free == 0) & (fluorescence == 0)).astype(np.uint8)
    if not pad.any():
        return np.zeros(len(origins), bool)
    return cut_tiles(pad, origins, tile).reshape(len(origins), -1).any(axis=1)


def cut_patches(fields: Iterable[PairedField], tiling: Tiling, norm: Normalisation, qc: EmptyFilter,
                summarise: StainSummary = mean_fluorescence, counts: dict | None = None) -> PatchSet:
    """Tile every field; keep the non-empty tiles that touch no padding, with their stain value
    (`summarise`; default the mean fluorescence). `counts` (optional) receives the padded tiles dropped."""
    out: dict[str, list] = {k: [] for k in ("patches", "fluorescence", "sources", "wells", "plates")}
    kept_origins: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    for f in fields:
        normed = normalise_frame(f.label_free, norm)
        origins = tile_origins(normed.shape, tiling)
        tiles = cut_tiles(normed, origins, tiling.tile_size)
        padded = padded_tiles(f.label_free, f.fluorescence, origins, tiling.tile_size)
        if counts is not None:
            counts["padded"] = counts.get("padded", 0) + int(padded.sum())
        keep = ~empty_mask(tiles, qc) & ~padded
        out["patches"].append(tiles[keep][:, None])
        out["fluorescence"].append(summarise(f.fluorescence, origins[keep], tiling.tile_size))
        n = int(keep.sum())
        out["sources"].append(np.full(n, f.source, dtype=object))
        out["wells"].append(np.full(n, f.well, dtype=object))
        out["plates"].append(np.full(n, f.plate, dtype=object))
        kept_origins.append(origins[keep])
        frames.append(np.full(n, f.frame or f.source, dtype=object))
    return PatchSet(*(np.concatenate(v) if v else np.zeros(0) for v in out.values()),
                    origins=np.concatenate(kept_origins) if kept_origins else np.zeros((0, 2), np.int64),
                    frames=np.concatenate(frames) if frames else np.zeros(0, dtype=object))


def label_patches(patches: PatchSet, reference: np.ndarray | None = None) -> tuple[PatchSet, Thresholds]:
    """Label by the mixture thresholds fitted on `reference` (a boolean mask; default: all patches)."""
    ref = patches.fluorescence if reference is None else patches.fluorescence[reference]
    thresholds = live_dead_thresholds(ref)
    patches.labels = label_by_thresholds(patches.fluorescence, thresholds)
    return patches, thresholds

