"""Cellpose networks trained with Cellpose's own training code, from label images.

The data are a `wellwatch dataset masks` folder (raw frames + integer label images, from the
Usiigaci sets or napari / Cellpose GUI / QuPath exports); `cellpose.train.train_seg` computes the
flows, crops and rescales by cell diameter, and runs its own schedule (warm-up, then constant
learning rate). From scratch (a randomly initialised CPnet), or `init` from any Cellpose model file
(a lab's fine-tuned model, one trained here) or a built-in name whose weights are present.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.segmentation.cellpose_flows import BUILTIN_MODELS, builtin_weights

from .masks import MaskSet
from .progress import Progress

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
    sgd: bool = False             # SGD with momentum 0.9 (Cellpose's GUI) instead of AdamW

    def validate(self) -> "CellposeTrainSettings":
        for key in ("epochs", "batch_size", "images_per_epoch"):
            if getattr(self, key) < 1:
                raise ValueError(f"cellpose training: {key} {getattr(self, key)} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"cellpose training: learning_rate {self.learning_rate} must be > 0")
        return self


# Few-frame adaptation: Cellpose 2.0's human-in-the-loop recipe as Cellpose's own GUI runs it (SGD,
# learning rate 0.1, weight decay 1e-4, at least 8 random crops of the few frames per epoch, no frame
# skipped for having few cells; the diameter from the frames' masks, as train_seg always sets it),
# with the GUI's 100 epochs cut to 50 so that 3 frames adapt within 10 minutes on a 2-core CPU
# (`cellpose train --adapt` raises the crops per epoch to the number of frames where there are more).
ADAPTATION = CellposeTrainSettings(epochs=50, learning_rate=0.1, weight_decay=1e-4, sgd=True, batch_size=8,
                                   images_per_epoch=8, min_train_masks=0)


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
                   settings: CellposeTrainSettings = CellposeTrainSettings(),
                   progress: bool = True) -> CellposeTrainResult:
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
    with epoch_progress(Progress(f"cellpose train {name}", progress), settings.epochs):
        path, losses, _ = train.train_seg(
            cp.net, train_data=images, train_labels=labels, channels=[0, 0], normalize=True,
            n_epochs=settings.epochs, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
            SGD=settings.sgd, batch_size=settings.batch_size, nimg_per_epoch=settings.images_per_epoch,
            min_train_masks=settings.min_train_masks, save_path=str(out_dir), model_name=name, save_every=10**9)
    seconds = time.perf_counter() - t0
    diam = float(cp.net.diam_labels.item())
    log.info("cellpose %s trained in %.0f s on %d frames, final loss %.3f, cell diameter %.1f px",
             name, seconds, len(data), float(losses[-1]), diam)
    return CellposeTrainResult(Path(path), seconds, float(losses[-1]), diam)


# cellpose.train logs "EPOCH, train_loss=..., LR=..., time ...s" at epochs 0, 5, 10, 20, 30, ...
EPOCH_LINE = re.compile(r"^(\d+), train_loss=([0-9.]+)")


@contextmanager
def epoch_progress(progress: Progress, epochs: int):
    """A running `[cellpose train NAME] epoch E/N, loss L, S s` line from cellpose.train's own log."""
    logger = logging.getLogger("cellpose.train")
    t0 = time.perf_counter()

    class EpochLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = EPOCH_LINE.match(record.getMessage())
            if m:
                progress.update(f"epoch {int(m.group(1)) + 1}/{epochs}, loss {float(m.group(2)):.3f}, "
                                f"{time.perf_counter() - t0:.0f} s")

    handler, level = EpochLines(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    progress.line(f"{epochs} epochs in {time.perf_counter() - t0:.0f} s")
