"""The models shipped inside the installed package (wellwatch/models/, see its README.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_model(name: str) -> Path:
    """A model shipped in wellwatch/models/, wherever the package is installed."""
    return Path(str(files("wellwatch") / "models" / name))


def bundled_demo_model() -> Path:
    """The demo live/dead model: trained on simulated frames only."""
    return bundled_model("demo-live-dead.onnx")


BUNDLED_SEGMENTATION_MODEL = bundled_model("phase-segmentation.onnx")
