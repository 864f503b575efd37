"""Label outlines drawn on a frame, for people to look at segmentation rather than read scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTED, TRUTH = (0, 255, 0), (255, 40, 40)


def overlay_png(frame: np.ndarray, labels: np.ndarray, out: str | Path, truth: np.ndarray | None = None,
                scale: int = 1) -> Path:
    """PNG of the contrast-stretched frame with the labels' outlines in green (and a ground truth's
    in red); `scale` > 1 keeps every scale-th pixel (outlines are found at full resolution first)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    x = frame.astype(np.float32)
    lo, hi = np.percentile(x[::4, ::4], [0.5, 99.5])
    grey = (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if truth is not None:
        rgb[find_boundaries(truth, mode="inner")] = TRUTH
    rgb[find_boundaries(labels, mode="inner")] = PREDICTED
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, rgb[::scale, ::scale], check_contrast=False)
    return out
