"""The segmentation checkpoint's format and its reader, apart from the training loop: fine-tuning
(seg_init.py), restamping and export read checkpoints without importing seg_train, which itself
starts from seg_init's models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wellwatch.core.contract import ModelContract

from .unet import UNet

SEG_CHECKPOINT_FORMAT = 1


def load_seg_checkpoint(path: str | Path) -> tuple[nn.Module, ModelContract, dict]:
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("task") != "segmentation":
        raise ValueError(f"{path}: not a wellwatch segmentation checkpoint")
    contract = ModelContract.from_dict(data["contract"], str(path))
    model = UNet(data["in_channels"], **data["arch_params"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), contract, data
