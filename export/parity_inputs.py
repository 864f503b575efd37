"""The fixed inputs a parity check runs: random batches of several sizes and real patches.

Real patches are cut from real frames with the daemon's own functions (normalisation, tiling, the
empty filter), so the check covers the inputs the model will really see when served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.contract import ModelContract, Tiling
from wellwatch.core.preprocess import cut_tiles, empty_mask, normalise_frame, tile_origins
from wellwatch.core.crops import Cells, prepare_crops
from wellwatch.core.files.tiff import read_frame
from wellwatch.core.segmentation.maps import model_input, seg_tiles

log = logging.getLogger(__name__)

RANDOM_BATCH_SIZES = (1, 7, 32)
MAX_REAL_PATCHES = 64
SEED = 0
# ../shared/data relative to the project root (the checkout holding export/)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_REAL_IMAGES = ("usiigaci-phase/set1/raw.tif",)


@dataclass(frozen=True)
class ParityCase:
    """One named input batch (N, C, H, W) float32."""

    name: str
    batch: np.ndarray


def input_shape(contract: ModelContract) -> tuple[int, int, int]:
    return len(contract.channels), contract.height, contract.width


def random_cases(contract: ModelContract, batch_sizes=RANDOM_BATCH_SIZES, seed: int = SEED) -> list[ParityCase]:
    """Normal noise with sd 3 (normalised frames span a few units) in several batch sizes."""
    rng = np.random.default_rng(seed)
    return [ParityCase(f"random, batch {b}", rng.normal(0, 3, (b, *input_shape(contract))).astype(np.float32))
            for b in batch_sizes]


def default_real_images() -> list[Path]:
    """The shared real images that exist on this machine (none when ../shared/data is absent)."""
    return [SHARED_DATA / p for p in DEFAULT_REAL_IMAGES if (SHARED_DATA / p).is_file()]


def real_patches(image: np.ndarray, contract: ModelContract, limit: int = MAX_REAL_PATCHES) -> np.ndarray:
    """Model inputs cut from one real frame exactly as the daemon cuts them.

    live_dead: the contract's normalisation, tiling and empty filter (non-empty tiles first).
    segmentation: the reduced, normalised frame's covering tiles.
    cell_type with a crop section: mask-mean normalised crops centred on a grid over the frame.
    cell_type (no tiling in the contract): a grid of input-sized crops of the normalised frame.
    Every input channel gets the same frame: this is for parity, not accuracy.
    """
    if contract.segmentation is not None:  # the covering tiles the daemon cuts for the network
        tiles, _ = seg_tiles(model_input(image, contract), contract.tiling)
        return np.ascontiguousarray(tiles[:limit])
    if contract.crop is not None:  # single-cell crops as the daemon cuts them, centred on a grid
        step = max(contract.crop.size // 2, 1)
        ys, xs = np.meshgrid(np.arange(step, image.shape[0] - step, step), np.arange(step, image.shape[1] - step, step),
                             indexing="ij")
        centres = np.stack([ys.ravel(), xs.ravel()], axis=1)[:limit].astype(float)
        grid = Cells(centres, np.full(len(centres), max(contract.crop.min_area, 1)))
        crops, _ = prepare_crops([image] * len(contract.channels), grid, contract.crop)
        return np.ascontiguousarray(crops)
    normed = normalise_frame(image, contract.normalisation)
    size = contract.height
    if contract.height != contract.width:
        raise ValueError(f"real parity patches need a square input, got {contract.height}x{contract.width}")
    tiling = contract.tiling or Tiling(size, size)
    tiles = cut_tiles(normed, tile_origins(normed.shape, tiling), size)
    if len(tiles) == 0:
        return np.zeros((0, *input_shape(contract)), np.float32)
    empty = empty_mask(tiles, contract.empty_filter)
    order = np.concatenate([np.flatnonzero(~empty), np.flatnonzero(empty)])[:limit]
    picked = tiles[order].astype(np.float32, copy=False)
    return np.ascontiguousarray(np.repeat(picked[:, None], len(contract.channels), axis=1))


def real_cases(images: list[str | Path], contract: ModelContract, limit: int = MAX_REAL_PATCHES) -> list[ParityCase]:
    """Per image: all its patches (up to `limit`) as one batch, and its first patch alone."""
    cases = []
    for path in images:
        patches = real_patches(read_frame(str(path)), contract, limit)
        if len(patches) == 0:
            log.warning("parity image %s is smaller than one %dx%d input: skipped", path, contract.height,
                        contract.width)
            continue
        name = Path(path).parent.name + "/" + Path(path).name
        cases.append(ParityCase(f"real {name}, batch {len(patches)}", patches))
        cases.append(ParityCase(f"real {name}, batch 1", patches[:1]))
    return cases


def given_cases(patches: np.ndarray | None, contract: ModelContract, limit: int = MAX_REAL_PATCHES) -> list[ParityCase]:
    """Caller-supplied patches (e.g. the held-out test patches of a training run)."""
    if patches is None or len(patches) == 0:
        return []
    batch = np.ascontiguousarray(patches[:limit], np.float32)
    if batch.shape[1:] != input_shape(contract):
        raise ValueError(f"parity patches have shape {batch.shape[1:]}, the contract says {input_shape(contract)}")
    return [ParityCase(f"given patches, batch {len(batch)}", batch)]
