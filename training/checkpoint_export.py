"""The single entry point from a training run to a servable model: RUN/best.pt -> model.onnx.

Used by `wellwatch export`, `wellwatch calibrate` and the demo-model build, so every shipped model takes
this path. It lives with training, which owns the checkpoint formats; export/ turns a torch module and
its contract into checked ONNX and knows nothing of checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wellwatch import __version__
from wellwatch.core.contract import ModelContract, file_sha256
from wellwatch.export.errors import ExportError
from wellwatch.export.manifest import utc_now
from wellwatch.export.metadata import OPSET
from wellwatch.export.onnx_export import ExportResult, export_classifier
from wellwatch.export.parity import Tolerances
from wellwatch.export.parity_inputs import default_real_images

from .checkpoint import load_checkpoint
from .seg_checkpoint import load_seg_checkpoint
from .unet import SegmentationMaps


def contract_for_export(contract: ModelContract, checkpoint_metrics: dict | None = None) -> ModelContract:
    """The checkpoint's contract, stamped with the export time and tool; metrics filled from the
    checkpoint when the contract has none."""
    metrics = contract.metrics or dict(checkpoint_metrics or {})
    return dataclasses.replace(contract, metrics=metrics, created=utc_now(),
                               tool=f"wellwatch {__version__} export (torch {torch.__version__})")


def _checkpoint_metrics(path: Path) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    metrics = data.get("metrics") if isinstance(data, dict) else None
    return metrics if isinstance(metrics, dict) else {}


def _load_any(path: Path):
    """(servable model, arch, contract) from a classifier or a segmentation checkpoint."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and data.get("task") == "segmentation":
        model, contract, _ = load_seg_checkpoint(path)
        return SegmentationMaps(model).eval(), "unet", contract
    model, arch, contract, _ = load_checkpoint(path)
    return model, arch, contract


def export_checkpoint(checkpoint_path: str | Path, out: str | Path, fp16: bool = False,
                      atol: float = Tolerances.atol, rtol: float = Tolerances.rtol,
                      real_inputs: np.ndarray | None = None, parity_images: Sequence[str | Path] | None = None,
                      tolerances: Tolerances | None = None, opset: int = OPSET) -> ExportResult:
    """Export RUN/best.pt to `out` (+ `.fp16.onnx` when `fp16`), each with its manifest.

    Parity inputs: random batches of sizes 1, 7 and 32; `real_inputs` (N, C, H, W) patches if given
    (e.g. a run's test patches); and patches cut with the daemon's own preprocessing from
    `parity_images` (None: the shared real images of ../shared/data when present; []: none).
    Raises ParityError / DecisionError when a file disagrees with the PyTorch model.
    """
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ExportError(f"checkpoint {checkpoint_path} does not exist")
    try:
        model, arch, contract = _load_any(checkpoint_path)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ExportError(f"checkpoint {checkpoint_path} cannot be loaded: {e}") from None
    contract = contract_for_export(contract, _checkpoint_metrics(checkpoint_path))
    images = default_real_images() if parity_images is None else list(parity_images)
    provenance = {"checkpoint": str(checkpoint_path), "checkpoint_sha256": file_sha256(checkpoint_path),
                  "arch": arch}
    tol = tolerances or Tolerances(atol=atol, rtol=rtol)
    return export_classifier(model, contract, out, real_inputs, parity_images=images, fp16=fp16, tolerances=tol,
                             opset=opset, provenance=provenance)
