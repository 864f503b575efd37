"""RUN/best.pt: the trained weights and everything export needs to write the model contract.

A plain dict saved with torch.save and read back with weights_only=True (no pickled code):
    {"format": 1, "arch": str, "in_channels": int, "state_dict": {...},
     "contract": {ModelContract fields except name/created/tool/metrics, as JSON types},
     "metrics": {...}, "history": {...}}
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wellwatch.core.contract import ModelContract

from .models import build_model

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, model: nn.Module, arch: str, contract: ModelContract,
                    history: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "in_channels": len(contract.channels),
                "state_dict": model.state_dict(), "contract": json.loads(contract.to_json()),
                "history": history or {}}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, str, ModelContract, dict[str, Any]]:
    """Return (model in eval mode, arch, contract, history)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a wellwatch checkpoint (format {CHECKPOINT_FORMAT})")
    contract = ModelContract.from_dict(data["contract"], str(path))
    model = build_model(data["arch"], data["in_channels"], len(contract.classes), input_size=contract.height)
    model.load_state_dict(data["state_dict"])
    model.eval()
    return model, data["arch"], contract, data.get("history", {})


def history_dict(history) -> dict[str, Any]:
    return asdict(history)
