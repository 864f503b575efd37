"""Bring a frame to the pixel size a segmentation model was trained at, and its labels back.

A model trained at 0.87 um/px (10x) sees cells of a 20x acquisition (0.435 um/px) twice as large as
anything it learnt; the frame is resampled to the model's pixel size first, segmented there, and
the labels are mapped back to the frame's own pixels. Pure functions; the daemon's
`ModelSegmenter`, `wellwatch segment --pixel-size` and training/evaluation all call these.

A pixel size of 0 means unknown: nothing is rescaled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Below this relative difference in pixel size a resample would cost more than it changes.
SAME_SCALE_TOLERANCE = 0.02


def scale_factor(frame_pixel_size_um: float, model_pixel_size_um: float) -> float:
    """Linear factor that takes the frame to the model's pixel size (1.0 when either is unknown)."""
    if frame_pixel_size_um < 0 or model_pixel_size_um < 0:
        raise ValueError(f"pixel sizes must be >= 0 um (0 = unknown), got frame {frame_pixel_size_um}, "
                         f"model {model_pixel_size_um}")
    if frame_pixel_size_um == 0 or model_pixel_size_um == 0:
        return 1.0
    factor = frame_pixel_size_um / model_pixel_size_um
    return 1.0 if abs(factor - 1.0) < SAME_SCALE_TOLERANCE else factor


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Float32 image resampled to `shape`: area average when shrinking, bilinear when enlarging."""
    from skimage.transform import resize

    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(image.astype(np.float32, copy=False), shape, order=1, mode="reflect",
                  anti_aliasing=shrinking, preserve_range=True).astype(np.float32, copy=False)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image (ids are never blended)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])


def to_model_scale(frame: np.ndarray, frame_pixel_size_um: float, model_pixel_size_um: float) -> np.ndarray:
    """The frame resampled to the model's pixel size (the frame itself when no rescale is needed)."""
    factor = scale_factor(frame_pixel_size_um, model_pixel_size_um)
    if factor == 1.0:
        return frame
    return resize_image(frame, scaled_shape(frame.shape, factor))


def segment_at_pixel_size(frame: np.ndarray, frame_pixel_size_um: float, model_pixel_size_um: float,
                          segment: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Segment `frame` at the model's pixel size with `segment`; labels at the frame's resolution."""
    labels = segment(to_model_scale(frame, frame_pixel_size_um, model_pixel_size_um))
    return resize_labels(labels, frame.shape[:2])
