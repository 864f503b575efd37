"""Cellpose networks trained with Cellpose's own training code, from label images.

The data are a `wellwatch dataset masks` folder (raw frames + integer label images, from the
Usiigaci sets or napari / Cellpose GUI / QuPath exports); `cellpose.train.train_seg` computes the
flows, crops and rescales by cell diameter, and runs its own schedule (warm-up, then constant
learning rate). From scratch (a randomly initialised CPnet), or `init` from any Cellpose model file
(a lab's fine-tuned model, one trained here) or a built-in name whose weights are present.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.segmentation.cellpose_flows import BUILTIN_MODELS, builtin_weights

from .masks import MaskSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellposeTrainSettings:
    epochs: int = 100
    learning_rate: float = 0.005  # Cellpose 3's default (AdamW... SGD=False)
    weight_decay: float = 1e-5
    batch_size: int = 8
    images_per_epoch: int = 8     # random crops of the training frames per epoch
    min_train_masks: int = 1      # cellpose skips frames with fewer cells
    seed: int = 0

    def validate(self) -> "CellposeTrainSettings":
        for key in ("epochs", "batch_size", "images_per_epoch"):
            if getattr(self, key) < 1:
                raise ValueError(f"cellpose training: {key} {getattr(self, key)} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"cellpose training: learning_rate {self.learning_rate} must be > 0")
        return self


@dataclass
class CellposeTrainResult:
    model_file: Path
    seconds: float
    final_loss: float
    diam_labels: float  # mean cell diameter of the training labels (px), saved in the model


def cellpose_model(init: str | None):
    """A CPU CellposeModel: random weights, or those of `init` (a model file or a present built-in)."""
    from cellpose import models

    if not init:
        return models.CellposeModel(gpu=False, pretrained_model=False)

    if init in BUILTIN_MODELS:
        if not builtin_weights(init).is_file():
            raise FileNotFoundError(f"--init {init}: the built-in Cellpose weights {builtin_weights(init)} are not "
                                    "on this machine (cellpose downloads them where a network exists)")
        return models.CellposeModel(gpu=False, model_type=init)
    if not Path(init).is_file():
        raise FileNotFoundError(f"--init {init}: no such Cellpose model file, and not a built-in name")
    return models.CellposeModel(gpu=False, pretrained_model=str(init))


def train_cellpose(data: MaskSet, out_dir: str | Path, name: str, init: str | None = None,
                   settings: CellposeTrainSettings = CellposeTrainSettings()) -> CellposeTrainResult:
    """Train on every frame of `data`; the Cellpose model file is OUT_DIR/models/NAME."""
    import torch
    from cellpose import train

    settings.validate()
    if len(data) == 0:
        raise ValueError("cellpose training: the dataset has no frames")
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    cp = cellpose_model(init)
    (Path(out_dir) / "models").mkdir(parents=True, exist_ok=True)  # train_seg saves there, without making it
    images = [np.asarray(im, np.float32) for im in data.images]
    labels = [np.asarray(lb, np.int32) for lb in data.labels]
    t0 = time.perf_counter()
    path, losses, _ = train.train_seg(
        cp.net, train_data=images, train_labels=labels, channels=[0, 0], normalize=True,
        n_epochs=settings.epochs, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        batch_size=settings.batch_size, nimg_per_epoch=settings.images_per_epoch,
        min_train_masks=settings.min_train_masks, save_path=str(out_dir), model_name=name, save_every=10**9)
    seconds = time.perf_counter() - t0
    diam = float(cp.net.diam_labels.item())
    log.info("cellpose %s trained in %.0f s on %d frames, final loss %.3f, cell diameter %.1f px",
             name, seconds, len(data), float(losses[-1]), diam)
    return CellposeTrainResult(Path(path), seconds, float(losses[-1]), diam)
