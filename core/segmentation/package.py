"""A BioImage.IO semantic-segmentation package as the daemon's segmenter.

The package gives a per-pixel map (e.g. nuclei foreground probability); cells come from the
stated post-processing, the seed study's second half: threshold the map, Euclidean distance
transform, Gaussian, local peaks as markers, watershed, keep regions in an area range
(`PackageParams`, config table [segmentation.package]).

The same three steps as ModelSegmenter, so the daemon batches the package's tiles across frames
and finishes in its process pool: `prepare` (the package's preprocessing over the whole frame,
then tiles of the package's input size overlapping by twice the output halo), the network
(PackageBackend), `finish` (each tile's output without its halo stitched, then the watershed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from wellwatch.core.packages.description import Package, PackageError
from wellwatch.core.packages.ops import apply_ops
from wellwatch.core.segmentation.downsample import filter_by_area
from wellwatch.core.segmentation.maps import ServeOptions, covering_origins, pad_to_tile, stitch_weighted
from wellwatch.core.validation import between, not_above


@dataclass(frozen=True)
class PackageParams:
    """[segmentation.package]: a package's per-pixel map -> labelled cells. Lengths and areas in frame px."""
    channel: int = field(default=0, metadata=between(0, 255))            # the output channel that is foreground
    threshold: float = field(default=0.5, metadata=between(-1e6, 1e6))   # map value above this is cell
    dist_sigma: float = field(default=2.0, metadata=between(0.0, 100.0))  # Gaussian on the distance transform
    min_distance: int = field(default=6, metadata=between(1, 1000))      # between watershed markers
    min_area: int = field(default=30, metadata=between(0, 10**8) | not_above("max_area", zero_is_no_limit=True))
    max_area: int = field(default=0, metadata=between(0, 10**9))         # 0 = no limit
    tile: int = field(default=512, metadata=between(16, 8192))           # wanted tile edge for parameterised inputs


@dataclass(frozen=True)
class PackageServing:
    """What the pool needs to finish a frame (picklable): tile shape, halo, post-processing."""
    identity: str
    tile: tuple[int, int]
    halo: tuple[int, int]
    params: PackageParams


def serving_for(package: Package, params: PackageParams) -> PackageServing:
    if package.kind != "segmentation":
        raise PackageError(package.source, f"{package.identity} is a classification package; the segmenter needs "
                                           "a per-pixel (segmentation) output")
    if len(package.input.channels) != 1:
        raise PackageError(package.source, f"input has {len(package.input.channels)} channels; the segmenter gives "
                                           "one (the label-free or segment_on channel)")
    if params.channel >= len(package.output.channels):
        raise PackageError(package.source, f"segmentation.package.channel = {params.channel}, but the output has "
                                           f"{len(package.output.channels)} channel(s) "
                                           f"({', '.join(package.output.channels)})")
    inp = package.input
    tile = (inp.valid_size("y", params.tile), inp.valid_size("x", params.tile))
    halo = (package.output.halo.get("y", 0), package.output.halo.get("x", 0))
    if any(2 * h >= t for h, t in zip(halo, tile)):
        raise PackageError(package.source, f"halo {halo} leaves nothing of a {tile} tile")
    return PackageServing(package.identity, tile, halo, params)


def package_tiles(frame: np.ndarray, package: Package, serving: PackageServing) -> tuple[np.ndarray, np.ndarray]:
    """A frame -> (N, 1, th, tw) preprocessed tiles and their origins; tiles overlap by twice the halo."""
    x = apply_ops(package.input.ops, frame[None, None].astype(np.float32), ("b", "c", "y", "x"))[0, 0]
    (th, tw), (hy, hx) = serving.tile, serving.halo
    padded = _pad(x, th, tw)
    ys = covering_origins(padded.shape[0], th, th - 2 * hy)
    xs = covering_origins(padded.shape[1], tw, tw - 2 * hx)
    origins = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    tiles = np.stack([padded[y:y + th, x0:x0 + tw] for y, x0 in origins])
    return np.ascontiguousarray(tiles[:, None], np.float32), origins


def _pad(image: np.ndarray, th: int, tw: int) -> np.ndarray:
    if th == tw:
        return pad_to_tile(image, th)
    ph, pw = max(0, th - image.shape[0]), max(0, tw - image.shape[1])
    return np.pad(image, ((0, ph), (0, pw)), mode="reflect") if ph or pw else image


def stitch_cores(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], serving: PackageServing) -> np.ndarray:
    """(N, C, th, tw) tile outputs -> (C, H, W): inside the halo a tile's pixels win; its halo only
    fills what no tile's core covers (the frame's own edges)."""
    (th, tw), (hy, hx) = serving.tile, serving.halo
    weights = np.full((th, tw), 1e-3, np.float32)
    weights[hy:th - hy, hx:tw - hx] = 1.0
    return stitch_weighted(outputs, origins, shape, weights)


def labels_from_map(foreground: np.ndarray, params: PackageParams) -> np.ndarray:
    """Threshold + distance-transform watershed on one map -> int32 labels, 1..n."""
    mask = foreground > params.threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    if params.dist_sigma > 0:
        dist = ndi.gaussian_filter(dist, params.dist_sigma, truncate=3.0)
    comps, n = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=params.min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # a component too flat for a peak still is a cell: its own marker
    unseeded = np.setdiff1d(np.arange(1, n + 1), comps[tuple(peaks.T)])
    if len(unseeded):
        extra = np.isin(comps, unseeded)
        markers[extra] = comps[extra] + len(peaks)
    labels = watershed(-dist, markers, mask=mask)
    return filter_by_area(labels, params.min_area, params.max_area)


def package_labels(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
                   serving: PackageServing) -> np.ndarray:
    maps = stitch_cores(outputs, origins, tuple(shape[:2]), serving)
    return labels_from_map(maps[serving.params.channel], serving.params)


class PackageSegmenter:
    """ModelSegmenter's interface (prepare / network / finish) for a segmentation package."""

    def __init__(self, backend, params: PackageParams = PackageParams(), options: ServeOptions = ServeOptions()):
        self.backend = backend
        self.package: Package = backend.package
        self.contract = serving_for(self.package, params)  # what the pool's finish step dispatches on
        self.options = options
        self.name = self.package.identity

    def options_for(self, frame_pixel_size_um: float | None) -> ServeOptions:
        return self.options  # a package states no pixel size wellwatch could rescale to

    def prepare(self, frame: np.ndarray, frame_pixel_size_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return package_tiles(frame, self.package, self.contract)

    def finish(self, outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
               frame_pixel_size_um: float | None = None) -> np.ndarray:
        return package_labels(outputs, origins, shape, self.contract)

    def segment(self, frame: np.ndarray) -> np.ndarray:
        tiles, origins = self.prepare(frame)
        return self.finish(self.backend.infer(tiles), origins, frame.shape)
