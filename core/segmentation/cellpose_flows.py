"""Cellpose networks served through ONNX Runtime: a frame in, tiles out; flows in, labelled cells out.

The network runs in the daemon's batched inference path like any segmentation model; everything
around it is the `cellpose` package's own code (pinned: CELLPOSE_VERSION), called exactly as
`CellposeModel.eval` calls it for a 2-D grayscale frame: `convert_image`, `normalize_img`, the
resize by diam_mean / diameter, `get_pad_yx` + `make_tiles`, then `average_tiles`, the resize back
and `dynamics.resize_and_compute_masks` (the flows -> masks step). Nothing is copied, so a
Cellpose model gives here the masks it gives in Cellpose.

`cellpose` imports torch (cellpose.transforms and cellpose.dynamics import it at the top): it is
imported here lazily, only when `segmentation.method = "cellpose"`, and needs the `cellpose`
extra (`pip install 'wellwatch[cellpose]'`, which brings a CPU torch). Every other method stays
torch-free.

The diameter, as Cellpose does it: the frame is resized by diam_mean / diameter (px), where
diameter is the configured cell diameter in um over the acquisition's pixel size, else the
diameter of the cells the model was trained on (`diam_labels`, in px of the training frames)
converted to the acquisition's pixel size when both pixel sizes are known.

One difference from Cellpose, by necessity: the ONNX input is a fixed tile (bsize x bsize), so a
frame smaller than one tile once resized is zero-padded to a tile, where Cellpose runs the network
on the smaller image; the network's style vector (a mean over the tile) then differs and so can the
masks. Frames of real cameras (>= 512 px) resized by Cellpose's usual factors are larger than a tile.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.contract import ModelContract
from wellwatch.core.errors import StartupError, WellwatchError

log = logging.getLogger(__name__)

CELLPOSE_VERSION = "3.1.1.2"


# the cellpose 3.x package's built-in models (cellpose.models.MODEL_NAMES)
BUILTIN_MODELS = ("cyto3", "cyto2", "cyto", "nuclei", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
                  "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2_cp3")


def cellpose_weights_dir() -> Path:
    """Where the cellpose package keeps (and downloads) its built-in weights."""
    return Path(os.environ.get("CELLPOSE_LOCAL_MODELS_PATH", Path.home() / ".cellpose" / "models"))


def builtin_weights(name: str) -> Path:
    """The file cellpose.models.model_path keeps a built-in model's weights in."""
    return cellpose_weights_dir() / (f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name)


def served_model_file(model: str, key: str = "segmentation.cellpose.model") -> str:
    """The ONNX file to serve for `model`; anything else is refused with the command that makes one."""
    if model.endswith(".onnx"):
        if not Path(model).is_file():
            raise StartupError(f"{key} {model}: no such file")
        return model
    if model in BUILTIN_MODELS:
        where = builtin_weights(model)
        state = "are here" if where.is_file() else "are not here (and are downloaded only where a network exists)"
        raise StartupError(f"{key} {model!r}: a built-in Cellpose model; its weights {where} {state}; "
                           f"export it first with `wellwatch cellpose export {model} --out {model}.onnx` "
                           f"and set {key} to that file")
    if Path(model).is_file():
        raise StartupError(f"{key} {model}: Cellpose (PyTorch) weights; the daemon serves ONNX: export it with "
                           f"`wellwatch cellpose export {model} --out {Path(model).name}.onnx`")
    raise StartupError(f"{key} {model!r}: neither a file nor a built-in Cellpose model "
                       f"({', '.join(BUILTIN_MODELS)})")


class CellposeMissing(WellwatchError, ModuleNotFoundError):
    """segmentation.method = 'cellpose' on an installation without the `cellpose` package (one line at the CLI)."""


def cellpose_modules():
    """(cellpose.transforms, cellpose.dynamics), imported on first use (they import torch)."""
    try:
        from cellpose import dynamics, transforms
    except ImportError as e:
        raise CellposeMissing(f"segmentation.method = 'cellpose' needs the cellpose package ({e}); "
                              f"install it with: pip install 'wellwatch[cellpose]' (cellpose=={CELLPOSE_VERSION})",
                              name="cellpose") from None
    return transforms, dynamics


@dataclass(frozen=True)
class CellposeParams:
    """The contract's `segmentation.postprocess` for a Cellpose network (Cellpose's eval defaults)."""
    diam_mean: float = 30.0         # the network's own scale: cells are resized to this diameter (px)
    diam_labels: float = 30.0       # mean diameter of the training cells (px of the training frames)
    tile_overlap: float = 0.1
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    max_size_fraction: float = 0.4

    @classmethod
    def from_contract(cls, contract: ModelContract) -> "CellposeParams":
        assert contract.segmentation is not None
        return cls(**contract.segmentation.postprocess)


@dataclass(frozen=True)
class CellposeTiles:
    """Where a frame's tiles came from: what `finish` needs to undo `prepare` (picklable)."""
    shape: tuple[int, int]    # the frame's (Ly, Lx)
    resized: tuple[int, int]  # after the resize by `rescale`
    rescale: float
    pads: tuple[int, int, int, int]
    ysub: tuple[tuple[int, int], ...]
    xsub: tuple[tuple[int, int], ...]
    tiled: tuple[int, int]    # the padded image's shape as make_tiles saw it

    def __len__(self) -> int:
        return len(self.ysub)


def rescale_for(contract: ModelContract, frame_pixel_size_um: float, diameter_um: float) -> float:
    """Cellpose's resize factor diam_mean / diameter (px), the diameter from config or the training cells."""
    params = CellposeParams.from_contract(contract)
    model_px = contract.segmentation.pixel_size_um
    if diameter_um > 0:
        if frame_pixel_size_um <= 0:
            raise ValueError("segmentation.cellpose.diameter_um needs plate.pixel_size_um (or the frames' own)")
        diameter = diameter_um / frame_pixel_size_um
    elif frame_pixel_size_um > 0 and model_px > 0:
        diameter = params.diam_labels * model_px / frame_pixel_size_um
    else:
        diameter = params.diam_labels
    return float(params.diam_mean / diameter)


def cellpose_tiles(frame: np.ndarray, contract: ModelContract, rescale: float) -> tuple[np.ndarray, CellposeTiles]:
    """A 2-D frame -> ((N, nchan, bsize, bsize) float32 network tiles, their geometry), as CellposeModel.eval."""
    transforms, _ = cellpose_modules()
    params = CellposeParams.from_contract(contract)
    bsize, nchan = contract.height, len(contract.channels)
    x = transforms.convert_image(np.asarray(frame, np.float32), [0, 0], nchan=nchan)
    x = transforms.normalize_img(x[np.newaxis], normalize=True, norm3D=False)[0]
    ly0, lx0 = x.shape[:2]
    if rescale != 1.0:
        lyr, lxr = int(ly0 * rescale), int(lx0 * rescale)
        x = transforms.resize_image(x, rsz=[rescale, rescale])
    else:
        lyr, lxr = ly0, lx0
    # Cellpose's own padding; frames smaller than a tile are padded to one (the ONNX input is fixed)
    small = (bsize, bsize) if min(lyr, lxr) < bsize else None
    pads = transforms.get_pad_yx(lyr, lxr, min_size=small)
    image = np.pad(x.transpose(2, 0, 1), [[0, 0], [pads[0], pads[1]], [pads[2], pads[3]]], mode="constant")
    tiles, ysub, xsub, lyt, lxt = transforms.make_tiles(image, bsize=bsize, augment=False,
                                                         tile_overlap=params.tile_overlap)
    tiles = np.ascontiguousarray(tiles.reshape(-1, nchan, bsize, bsize), dtype=np.float32)
    geometry = CellposeTiles((ly0, lx0), (lyr, lxr), rescale, tuple(int(p) for p in pads),
                             tuple(tuple(map(int, s)) for s in ysub), tuple(tuple(map(int, s)) for s in xsub),
                             (int(lyt), int(lxt)))
    return tiles, geometry


def cellpose_flows(outputs: np.ndarray, geometry: CellposeTiles) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs (N, 3, bsize, bsize) -> (dP (2, Ly, Lx), cellprob (Ly, Lx)) at the frame's size."""
    transforms, _ = cellpose_modules()
    y = transforms.average_tiles(np.asarray(outputs, np.float32), [np.array(s) for s in geometry.ysub],
                                 [np.array(s) for s in geometry.xsub], *geometry.tiled)
    y1, y2, x1, x2 = geometry.pads
    (lyr, lxr), (ly0, lx0) = geometry.resized, geometry.shape
    yf = y[:, y1:y1 + lyr, x1:x1 + lxr].transpose(1, 2, 0)
    if geometry.rescale != 1.0:
        yf = transforms.resize_image(yf, ly0, lx0)
    return np.ascontiguousarray(yf[..., :2].transpose(2, 0, 1)), np.ascontiguousarray(yf[..., 2])


def cellpose_labels(outputs: np.ndarray, geometry: CellposeTiles, contract: ModelContract) -> np.ndarray:
    """Network outputs -> int32 labels of the frame's shape, by Cellpose's own dynamics."""
    _, dynamics = cellpose_modules()
    params = CellposeParams.from_contract(contract)
    dP, cellprob = cellpose_flows(outputs, geometry)
    niter = 200 / geometry.rescale  # Cellpose's niter for resampled flows
    masks = dynamics.resize_and_compute_masks(dP, cellprob, niter=niter,
                                              cellprob_threshold=params.cellprob_threshold,
                                              flow_threshold=params.flow_threshold, interp=True,
                                              min_size=params.min_size,
                                              max_size_fraction=params.max_size_fraction)
    return np.asarray(masks, np.int32).reshape(geometry.shape)
