"""Single-cell crops for cell-type models: the one implementation training and serving share.

From a label image: each cell's centroid and area; a `size` square of every channel centred on the
centroid (frames are reflect-padded at their edges); zero outside a circle of `mask_radius`; each
channel's mean inside the circle scaled to 1 (the cell-type study's normalisation). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wellwatch.core.config import check_crop_models_have_cells
from wellwatch.core.contract import CellCrop
from wellwatch.core.errors import StartupError


@dataclass(frozen=True)
class Cells:
    """The cells of one frame: centroids (N, 2) as (y, x) in frame pixels, areas (N,) in pixels."""
    centroids: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)


def cells_of(labels: np.ndarray) -> Cells:
    """Centroid and area of labels 1..labels.max() (an id without pixels gets area 0, centroid NaN)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return Cells(np.zeros((0, 2)), np.zeros(0, np.int64))
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    yy, xx = np.indices(labels.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1) / areas
        cx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1) / areas
    return Cells(np.stack([cy[1:], cx[1:]], axis=1), areas[1:].astype(np.int64))


def circular_mask(size: int, radius: float) -> np.ndarray:
    c = (size - 1) / 2.0
    yy, xx = np.indices((size, size))
    return (np.hypot(yy - c, xx - c) <= radius).astype(np.float32)


def in_size_range(areas: np.ndarray, crop: CellCrop) -> np.ndarray:
    keep = areas >= crop.min_area
    if crop.max_area:
        keep &= areas <= crop.max_area
    return keep


def cut_crops(channels: list[np.ndarray], centroids: np.ndarray, size: int) -> np.ndarray:
    """(N, C, size, size) float32 windows centred on the (rounded) centroids."""
    if len(centroids) == 0:
        return np.zeros((0, len(channels), size, size), np.float32)
    half = size // 2
    out = np.empty((len(centroids), len(channels), size, size), np.float32)
    for c, frame in enumerate(channels):
        padded = np.pad(frame.astype(np.float32, copy=False), half + 1, mode="reflect")
        for i, (y, x) in enumerate(np.rint(centroids).astype(np.int64)):
            y0, x0 = y + 1, x + 1  # top-left in padded coordinates: (y - half) + (half + 1)
            out[i, c] = padded[y0:y0 + size, x0:x0 + size]
    return out


def mask_mean_normalise(crops: np.ndarray, radius: float) -> np.ndarray:
    """Zero outside the circle; each crop's channels scaled so their mean inside the circle is 1."""
    mask = circular_mask(crops.shape[-1], radius)
    masked = crops * mask
    mean = masked.sum(axis=(2, 3), keepdims=True) / mask.sum()
    return masked / np.where(np.abs(mean) > 1e-6, mean, 1.0)


def crop_section(cell_type, cell_live_dead, segmentation: str) -> CellCrop | None:
    """The one crop section the daemon cuts for its crop models (backends with a `.contract`, or None):
    a cell-type and a per-cell live/dead model must agree, and both need segmented cells."""
    models = {slot: m for slot, m in (("cell_type", cell_type), ("cell_live_dead", cell_live_dead)) if m is not None}
    check_crop_models_have_cells(segmentation, {slot: getattr(m, "path", "(a model given in code)")
                                                for slot, m in models.items()})
    crops = {slot: m.contract.crop for slot, m in models.items()}
    if len(set(crops.values())) > 1:
        raise StartupError("models.cell_type and models.cell_live_dead have different crop sections "
                           f"({crops['cell_type']} vs {crops['cell_live_dead']}): the daemon cuts one set of crops "
                           "per cell; train both on crops of the same size, mask radius and area range")
    return next(iter(crops.values()), None)


def prepare_crops(channels: list[np.ndarray], cells: Cells, crop: CellCrop) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the cells in the size range, and the boolean index of those cells."""
    keep = in_size_range(cells.areas, crop)
    crops = cut_crops(channels, cells.centroids[keep], crop.size)
    return mask_mean_normalise(crops, crop.mask_radius), keep
