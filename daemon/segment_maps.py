"""Learned segmentation, minus the network: input tiles in, labelled cells out.

The one implementation training and serving share. A segmentation network (its contract's
`segmentation` section) sees the frame reduced by `downsample` and normalised, in overlapping
tiles that always cover the frame; it returns per pixel the probabilities of background, cell
interior and cell boundary, and the distance to the cell's edge scaled to 1 at each cell's centre.
`labels_from_maps` turns those maps into one label per cell by a seeded watershed.

Pure functions over numpy arrays; nothing here knows about ONNX Runtime or threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .contract import ModelContract, Segmentation, Tiling
from .preprocess import normalise_frame
from .resample import block_mean, filter_by_area, upsample_labels  # noqa: F401 (re-exported)

BACKGROUND, INTERIOR, BOUNDARY, DISTANCE = range(4)


@dataclass(frozen=True)
class PostProcess:
    """The watershed's parameters; areas are in full-resolution frame pixels."""
    foreground_threshold: float = 0.5  # P(interior) + P(boundary) above this is cell
    seed_threshold: float = 0.6        # distance map (or P(interior)) above this seeds a cell
    seeds: str = "distance"            # "distance" or "interior"
    min_seed_area: int = 16            # seeds smaller than this (full-res px) are noise
    min_area: int = 200                # cells smaller than this are dropped
    max_area: int = 0                  # cells larger than this are dropped; 0 = no limit

    @classmethod
    def from_contract(cls, seg: Segmentation) -> "PostProcess":
        return cls(**seg.postprocess)


def downsample_mean(frame: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over factor x factor pixels (the trailing odd row/column is dropped), float32."""
    return block_mean(frame, factor, odd_edge="drop")


def model_input(frame: np.ndarray, contract: ModelContract) -> np.ndarray:
    """The frame as the network sees it: reduced, then normalised (float32, model resolution)."""
    assert contract.segmentation is not None
    return normalise_frame(downsample_mean(frame, contract.segmentation.downsample), contract.normalisation)


def covering_origins(length: int, tile: int, stride: int) -> np.ndarray:
    """Tile starts along one axis: every `stride`, plus one flush with the far edge."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, length - tile, stride))
    return np.array(starts + [length - tile], dtype=np.int64)


def seg_tile_origins(shape: tuple[int, int], tiling: Tiling) -> np.ndarray:
    ys = covering_origins(shape[0], tiling.tile_size, tiling.stride)
    xs = covering_origins(shape[1], tiling.tile_size, tiling.stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad an image smaller than one tile on its bottom/right edges."""
    ph, pw = max(0, tile - image.shape[0]), max(0, tile - image.shape[1])
    if ph or pw:
        return np.pad(image, ((0, ph), (0, pw)), mode="reflect" if min(image.shape) > 1 else "edge")
    return image


def seg_tiles(image: np.ndarray, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, tile, tile) float32 tiles covering a model-resolution image, and their origins."""
    padded = pad_to_tile(image, tiling.tile_size)
    origins = seg_tile_origins(padded.shape, tiling)
    t = tiling.tile_size
    tiles = np.stack([padded[y:y + t, x:x + t] for y, x in origins])
    return np.ascontiguousarray(tiles[:, None], dtype=np.float32), origins


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """Weights that fall linearly to a small positive value over `overlap // 2` pixels at each edge."""
    ramp = max(1, overlap // 2)
    d = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)
    w1 = np.clip((d + 1) / ramp, 1.0 / ramp, 1.0)
    return np.outer(w1, w1).astype(np.float32)


def stitch_maps(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], tiling: Tiling) -> np.ndarray:
    """Blend (N, maps, tile, tile) tile outputs into (maps, H, W) over an image of `shape`."""
    t = tiling.tile_size
    ph, pw = max(shape[0], t), max(shape[1], t)
    weights = blend_weights(t, t - tiling.stride)
    acc = np.zeros((outputs.shape[1], ph, pw), np.float32)
    total = np.zeros((ph, pw), np.float32)
    for out, (y, x) in zip(outputs, origins):
        acc[:, y:y + t, x:x + t] += out * weights
        total[y:y + t, x:x + t] += weights
    return (acc / total)[:, :shape[0], :shape[1]]


def labels_from_maps(maps: np.ndarray, post: PostProcess, downsample: int = 1) -> np.ndarray:
    """Seeded watershed on (4, h, w) model-resolution maps -> int32 labels at model resolution."""
    pixel_area = downsample * downsample
    foreground = (maps[INTERIOR] + maps[BOUNDARY]) > post.foreground_threshold
    height = maps[DISTANCE] if post.seeds == "distance" else maps[INTERIOR]
    seeds, n = ndi.label((height > post.seed_threshold) & foreground)
    if n == 0:
        return np.zeros(foreground.shape, np.int32)
    seed_sizes = np.bincount(seeds.ravel(), minlength=n + 1) * pixel_area
    seeds[seed_sizes[seeds] < post.min_seed_area] = 0
    labels = watershed(-height, seeds, mask=foreground)
    return filter_by_area(labels, post.min_area / pixel_area, post.max_area / pixel_area if post.max_area else 0)


def labels_from_tile_outputs(outputs: np.ndarray, origins: np.ndarray, frame_shape: tuple[int, int],
                             contract: ModelContract, post: PostProcess | None = None) -> np.ndarray:
    """Network outputs for one frame's tiles -> int32 labels of the frame's shape."""
    seg = contract.segmentation
    assert seg is not None and contract.tiling is not None
    f = seg.downsample
    model_shape = (frame_shape[0] // f, frame_shape[1] // f)
    maps = stitch_maps(outputs, origins, model_shape, contract.tiling)
    labels = labels_from_maps(maps, post or PostProcess.from_contract(seg), f)
    return upsample_labels(labels, f, frame_shape)
