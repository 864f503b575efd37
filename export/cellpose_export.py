"""A Cellpose model (a built-in name or a model file) -> ONNX with a contract, parity-checked on real frames.

The graph is the Cellpose network alone (CPnet: 2-channel tiles in, flows and cell-probability logit
out); the daemon runs it batched like any segmentation network and does the rest with the
`cellpose` package's own code (core/segmentation/cellpose_flows.py). Parity is checked twice: the ONNX
outputs against the PyTorch network on the tiles of real frames, and the masks the daemon's path
makes against `CellposeModel.eval` on the same frames (Cellpose's own average precision at IoU 0.5
and 0.9, and the foreground IoU).
"""

from __future__ import annotations

import copy
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wellwatch.core.contract import (CELLPOSE_MAPS, CONTRACT_VERSION, EmptyFilter, ModelContract, Normalisation,
                                       Segmentation, Tiling)
from wellwatch.core.segmentation.cellpose_flows import (BUILTIN_MODELS, CellposeParams, CELLPOSE_VERSION, cellpose_labels, builtin_weights,
                                               cellpose_tiles, rescale_for)
from wellwatch.core.files.tiff import read_frame

from .errors import ExportError
from .manifest import write_manifest
from .onnx_graph import onnx_session, run_onnx, write_onnx

log = logging.getLogger(__name__)

TILE = 224  # Cellpose 3's bsize
DOWNLOAD_TIMEOUT_S = 20


class GlobalStyle(nn.Module):
    """cellpose's make_style with the average pool over the whole tile written as a mean: the same
    numbers, but a graph the ONNX exporter can trace (the pool's kernel size is the input's shape)."""

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        style = x0.mean(dim=(2, 3))
        return style / torch.sum(style**2, dim=1, keepdim=True)**.5


class CellposeGraph(nn.Module):
    """The network's first output only: (N, 3, H, W) = flow y, flow x, cell-probability logit."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.net.make_style = GlobalStyle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def load_cellpose(model: str):
    """A cellpose.models.CellposeModel on the CPU for a built-in name or a model file."""
    from cellpose import models

    if model in BUILTIN_MODELS:
        weights = builtin_weights(model)
        if not weights.is_file():
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            try:
                models.model_path(model)  # cellpose downloads it into its cache
            except Exception as e:  # noqa: BLE001 (urllib, ssl, http: whatever the network says)
                raise ExportError(f"built-in Cellpose model {model!r}: its weights are not at {weights} and could not "
                                  f"be downloaded ({type(e).__name__}: {e}); copy the file there, or give a model "
                                  "file") from None
            finally:
                socket.setdefaulttimeout(previous)
        cp = models.CellposeModel(gpu=False, model_type=model)
    elif Path(model).is_file():
        cp = models.CellposeModel(gpu=False, pretrained_model=str(model))
    else:
        raise ExportError(f"{model}: neither a Cellpose model file nor a built-in name ({', '.join(BUILTIN_MODELS)})")
    cp.net.mkldnn = False  # plain tensors: the graph is traced
    cp.net.eval()  # batch norm with its running statistics, as cellpose's own inference runs it
    return cp


def cellpose_contract(cp, name: str, pixel_size_um: float, trained_on: dict, metrics: dict,
                      postprocess: dict | None = None) -> ModelContract:
    diam_mean = float(np.asarray(cp.diam_mean).ravel()[0])
    diam_labels = float(np.asarray(getattr(cp, "diam_labels", diam_mean)).ravel()[0])
    return ModelContract(
        name=name, task="segmentation", classes=("background", "cell"), positive_class="cell",
        output="probabilities", input_name="image", channels=("cytoplasm", "nuclear")[:cp.nchan], layout="NCHW",
        height=TILE, width=TILE,
        normalisation=Normalisation("percentile", {"low": 1.0, "high": 99.0}),  # cellpose.transforms.normalize_img
        tiling=Tiling(TILE, int(TILE * 0.9)), empty_filter=EmptyFilter("none"), decision_threshold=0.5,
        trained_on={"cellpose": CELLPOSE_VERSION, **trained_on}, metrics=metrics,
        tool=f"wellwatch cellpose export (cellpose {CELLPOSE_VERSION})", contract_version=CONTRACT_VERSION,
        segmentation=Segmentation(downsample=1, maps=CELLPOSE_MAPS, stitch="cellpose",
                                  postprocess={"diam_mean": diam_mean, "diam_labels": diam_labels,
                                               **(postprocess or {})},
                                  pixel_size_um=float(pixel_size_um)))


@dataclass
class CellposeParity:
    frames: list[str]
    tiles: int
    max_abs_diff: float     # ONNX vs PyTorch network outputs
    ap50: float             # daemon-path masks vs CellposeModel.eval masks (Cellpose's own metric)
    ap90: float
    foreground_iou: float
    cells_onnx: int
    cells_cellpose: int

    def summary(self) -> str:
        return (f"parity on {len(self.frames)} real frames ({self.tiles} tiles): network outputs differ by at most "
                f"{self.max_abs_diff:.2g}; masks vs cellpose's own eval: AP@0.5 {self.ap50:.3f}, AP@0.9 "
                f"{self.ap90:.3f}, foreground IoU {self.foreground_iou:.4f} ({self.cells_onnx} vs "
                f"{self.cells_cellpose} cells)")


def check_parity(cp, onnx_path: str | Path, contract: ModelContract, frames: list[np.ndarray],
                 names: list[str]) -> CellposeParity:
    """The served path (ONNX Runtime + cellpose's pre/post-processing) against CellposeModel.eval."""
    from cellpose import metrics as cp_metrics

    session = onnx_session(onnx_path)
    params = CellposeParams.from_contract(contract)
    rescale = rescale_for(contract, 0.0, 0.0)  # the model's own diameter, as eval(diameter=None)
    diffs, tiles_seen, ours, theirs = [], 0, [], []
    for frame in frames:
        tiles, geometry = cellpose_tiles(frame, contract, rescale)
        out = run_onnx(session, contract.input_name, tiles)
        with torch.no_grad():
            ref = cp.net(torch.from_numpy(tiles))[0].numpy()
        diffs.append(float(np.abs(out - ref).max()))
        tiles_seen += len(tiles)
        ours.append(cellpose_labels(out, geometry, contract))
        masks, _, _ = cp.eval(np.asarray(frame, np.float32), channels=[0, 0], diameter=None,
                              flow_threshold=params.flow_threshold, cellprob_threshold=params.cellprob_threshold,
                              min_size=params.min_size, max_size_fraction=params.max_size_fraction,
                              tile_overlap=params.tile_overlap)
        theirs.append(np.asarray(masks, np.int32))
    ap, _, _, _ = cp_metrics.average_precision(theirs, ours, threshold=[0.5, 0.9])
    ap[np.isnan(ap)] = 1.0  # no cells in either: the same (empty) answer
    fg = [((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()) for a, b in zip(ours, theirs)]
    return CellposeParity(names, tiles_seen, max(diffs), float(np.mean(ap[:, 0])), float(np.mean(ap[:, 1])),
                          float(np.mean(fg)), int(sum(m.max() for m in ours)), int(sum(m.max() for m in theirs)))


def export_cellpose(model: str, out: str | Path, pixel_size_um: float = 0.0, parity_frames: list[str] = (),
                    name: str = "", trained_on: dict | None = None, min_ap90: float = 0.9,
                    postprocess: dict | None = None) -> tuple[Path, CellposeParity | None]:
    """Write OUT (ONNX, contract in the metadata) and its manifest; refuse when parity on real frames fails.
    `postprocess`: Cellpose's mask settings (flow_threshold, cellprob_threshold, min_size, ...) to serve with."""
    cp = load_cellpose(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contract = cellpose_contract(cp, name or Path(model).stem, pixel_size_um,
                                 {"model": str(model), **(trained_on or {})}, {}, postprocess)
    write_onnx(CellposeGraph(cp.net).eval(), contract, out)
    parity = None
    if parity_frames:
        frames = [read_frame(str(p)) for p in parity_frames]
        parity = check_parity(cp, out, contract, frames, [str(p) for p in parity_frames])
        if parity.max_abs_diff > 1e-3 or parity.ap90 < min_ap90:
            out.unlink()
            raise ExportError(f"{out}: ONNX Cellpose differs from cellpose's own: {parity.summary()}")
    write_manifest(out, contract, source=str(model), parity=None if parity is None else parity.__dict__)
    return out, parity
