"""Resolution changes and region filters that classical and learned segmentation share.

Both run at a reduced resolution (block means of `factor` x `factor` pixels), filter regions by
area in full-resolution pixels, and enlarge their labels back to the frame by nearest neighbour.
One implementation each, so the two methods cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def block_mean(frame: np.ndarray, factor: int, odd_edge: str = "drop") -> np.ndarray:
    """Means over factor x factor blocks, float32. A trailing partial row/column is dropped
    (`odd_edge="drop"`, the segmentation networks' input) or repeated into a full block ("pad")."""
    x = frame.astype(np.float32, copy=False)
    if factor == 1:
        return x
    h, w = x.shape
    if odd_edge == "pad":
        ph, pw = -h % factor, -w % factor
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw)), mode="edge")
        h, w = x.shape
    elif odd_edge == "drop":
        h, w = (h // factor) * factor, (w // factor) * factor
    else:
        raise ValueError(f"block_mean: odd_edge {odd_edge!r}; allowed: drop, pad")
    return x[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour back to the frame's `shape`: each label pixel becomes factor x factor; a
    row/column the reduction dropped repeats its neighbour, one it padded is cut off."""
    if factor > 1:
        labels = labels.repeat(factor, axis=0).repeat(factor, axis=1)
    ph, pw = shape[0] - labels.shape[0], shape[1] - labels.shape[1]
    if ph > 0 or pw > 0:
        labels = np.pad(labels, ((0, max(ph, 0)), (0, max(pw, 0))), mode="edge")
    return np.ascontiguousarray(labels[:shape[0], :shape[1]])


def filter_by_area(labels: np.ndarray, min_area: float, max_area: float = 0,
                   weights: np.ndarray | None = None, n_labels: int = 0) -> np.ndarray:
    """Drop labels outside [min_area, max_area] (0 = no upper limit); renumber 1..n, int32.

    Areas count pixels, or sum `weights` (one per pixel, e.g. the full-resolution pixels under
    each reduced one). `n_labels`: the highest label, when known (else found from the labels).
    """
    areas = np.bincount(labels.ravel(), weights=weights, minlength=n_labels + 1)
    keep = areas >= min_area
    if max_area:
        keep &= areas <= max_area
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
