"""What a segmentation network learns, made from a label image at the network's resolution.

Classes per pixel: 0 background, 1 interior, 2 boundary (the cell's own outermost pixels, so two
touching cells are parted by a two-pixel boundary band); and each cell's distance to its edge
divided by its largest distance (1 at the centre of every cell, whatever its size).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from wellwatch.core.segmentation.maps import BACKGROUND, BOUNDARY, INTERIOR


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour reduction aligned with daemon.segment_maps.downsample_mean's blocks."""
    if factor == 1:
        return labels
    h, w = labels.shape[0] // factor, labels.shape[1] // factor
    offset = factor // 2
    return np.ascontiguousarray(labels[offset:h * factor:factor, offset:w * factor:factor])


def class_map(labels: np.ndarray) -> np.ndarray:
    classes = np.full(labels.shape, BACKGROUND, np.int64)
    classes[labels > 0] = INTERIOR
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    return classes


def distance_map(labels: np.ndarray) -> np.ndarray:
    """Per cell: Euclidean distance to the nearest pixel outside it, divided by its maximum."""
    out = np.zeros(labels.shape, np.float32)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        cell = labels[padded] == i
        d = ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1]
        if d.max() > 0:
            out[padded][cell] = (d / d.max())[cell]
    return out


def targets(labels: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    small = downsample_labels(labels, factor)
    return class_map(small), distance_map(small)
