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

from wellwatch.core.contract import ModelContract, Segmentation, Tiling
from wellwatch.core.preprocess import normalise_frame
from wellwatch.core.segmentation.downsample import block_mean, filter_by_area, upsample_labels  # noqa: F401 (re-exported)
from wellwatch.core.segmentation.pixel_size import resize_labels, scale_factor, scaled_shape, to_model_scale
from wellwatch.core.segmentation.cellpose_flows import cellpose_labels, cellpose_tiles, rescale_for

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


@dataclass(frozen=True)
class ServeOptions:
    """How frames are served to a segmentation network beyond what its contract fixes.

    frame_pixel_size_um: the acquisition's pixel size (0 = unknown: no rescale to the model's);
    tta: test-time augmentation, the network also sees each tile flipped in x, y and both, and the
    four maps (flipped back) are averaged: about 4x the network's cost for steadier outlines;
    diameter_um: a Cellpose network's cell diameter (0 = the diameter it was trained on).
    """
    frame_pixel_size_um: float = 0.0
    tta: bool = False
    diameter_um: float = 0.0


# the flips of test-time augmentation (array axes of an (N, C, H, W) tile batch); each is its own inverse
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def tta_tiles(tiles: np.ndarray) -> np.ndarray:
    """(N, C, t, t) -> (4N, C, t, t): the tiles, then flipped in x, in y, in both."""
    return np.ascontiguousarray(np.concatenate([np.flip(tiles, axes) if axes else tiles for axes in TTA_FLIPS]))


def merge_tta(outputs: np.ndarray, n_tiles: int) -> np.ndarray:
    """(4N, maps, t, t) network outputs of `tta_tiles` -> (N, maps, t, t), each flipped back and averaged."""
    if len(outputs) != len(TTA_FLIPS) * n_tiles:
        raise ValueError(f"test-time augmentation: {len(outputs)} outputs for {n_tiles} tiles x {len(TTA_FLIPS)} flips")
    parts = [outputs[i * n_tiles:(i + 1) * n_tiles] for i in range(len(TTA_FLIPS))]
    return np.mean([np.flip(p, axes) if axes else p for p, axes in zip(parts, TTA_FLIPS)], axis=0, dtype=np.float32)


def model_frame_shape(frame_shape: tuple[int, int], contract: ModelContract, options: ServeOptions) -> tuple[int, int]:
    """The frame's shape once resampled to the model's pixel size."""
    assert contract.segmentation is not None
    factor = scale_factor(options.frame_pixel_size_um, contract.segmentation.pixel_size_um)
    return tuple(frame_shape[:2]) if factor == 1.0 else scaled_shape(frame_shape, factor)


def serve_tiles(frame: np.ndarray, contract: ModelContract, options: ServeOptions = ServeOptions()):
    """A frame -> (network input tiles, their origins): rescaled, reduced, normalised, tiled (x4 with TTA)."""
    assert contract.segmentation is not None and contract.tiling is not None
    if contract.is_cellpose:  # Cellpose's own resize and tiling; origins are a CellposeTiles
        return cellpose_tiles(frame, contract, rescale_for(contract, options.frame_pixel_size_um, options.diameter_um))
    scaled = to_model_scale(frame, options.frame_pixel_size_um, contract.segmentation.pixel_size_um)
    tiles, origins = seg_tiles(model_input(scaled, contract), contract.tiling)
    return (tta_tiles(tiles) if options.tta else tiles), origins


def labels_from_served(outputs: np.ndarray, origins: np.ndarray, frame_shape: tuple[int, int],
                       contract: ModelContract, options: ServeOptions = ServeOptions(),
                       post: PostProcess | None = None) -> np.ndarray:
    """Network outputs of `serve_tiles` -> int32 labels at the frame's own resolution."""
    if contract.is_cellpose:
        return cellpose_labels(outputs, origins, contract)
    if options.tta:
        outputs = merge_tta(outputs, len(origins))
    shape = model_frame_shape(frame_shape, contract, options)
    labels = labels_from_tile_outputs(outputs, origins, shape, contract, post)
    return resize_labels(labels, tuple(frame_shape[:2]))


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


def stitch_weighted(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
                    weights: np.ndarray) -> np.ndarray:
    """(N, maps, th, tw) tile outputs -> (maps, H, W): each pixel the weighted mean of the tiles
    covering it, `weights` (th, tw) saying how much each tile pixel counts."""
    th, tw = weights.shape
    ph, pw = max(shape[0], th), max(shape[1], tw)
    acc = np.zeros((outputs.shape[1], ph, pw), np.float32)
    total = np.zeros((ph, pw), np.float32)
    for out, (y, x) in zip(outputs, origins):
        acc[:, y:y + th, x:x + tw] += out * weights
        total[y:y + th, x:x + tw] += weights
    return (acc / total)[:, :shape[0], :shape[1]]


def stitch_maps(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], tiling: Tiling) -> np.ndarray:
    """Blend (N, maps, tile, tile) tile outputs into (maps, H, W) over an image of `shape`."""
    t = tiling.tile_size
    return stitch_weighted(outputs, origins, shape, blend_weights(t, t - tiling.stride))


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
