"""Models for `wellwatch bench --model NAME`: realistic networks beside the tiny demo model.

resnet18  ResNet-18 on 224 px tiles of the bright-field frame, as in the live/dead seed study
          (Pattarone et al.), random weights (throughput does not depend on them), built by
          `training.models.build_model` and exported by `export.onnx_export.export_classifier`
          (contract, parity against PyTorch) into a cache folder; never downloaded. Needs the
          train extra (torch) the first time only.
demo      the bundled demo live/dead model (also: an empty --model).
Anything else is a path to an exported ONNX model.

The segmentation U-Net is the bundled phase-contrast model: `--segmentation model`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wellwatch.core.contract import ModelContract, Tiling
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.bundled_models import bundled_demo_model

RESNET18_TILE = 224
_VERSION = 1  # bump when what is built changes: a new cache file


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wellwatch" / "bench-models"


def resolve_model(name: str, say=print) -> str:
    """A --model value -> an ONNX path ("" = the bundled demo model, as the daemon takes it)."""
    if name in ("", "demo"):
        return ""
    if name == "resnet18":
        return str(resnet18_model(cache_dir(), say))
    if not Path(name).is_file():
        raise SystemExit(f"bench: --model {name}: no such file; give an ONNX path, 'demo' or 'resnet18'")
    return name


def resnet18_model(folder: Path, say=print) -> Path:
    """ResNet-18 (1 grey channel, 2 classes, 224 px tiles), random init, exported once into `folder`."""
    out = folder / f"resnet18-live-dead-224-v{_VERSION}.onnx"
    if out.is_file():
        return out
    try:  # torch, only for this model and only the first time: `wellwatch bench` runs without the train extra
        import torch

        from wellwatch.export.onnx_export import export_classifier
        from wellwatch.training.models import build_model
    except ImportError as e:
        raise SystemExit(f"bench: --model resnet18 is built with the train extra the first time "
                         f"(pip install 'wellwatch[train]'): {e}") from None
    say(f"bench: building ResNet-18 (random init) and exporting it to {out} (once) ...")
    demo = OnnxBackend(bundled_demo_model(), "cpu", warmup=False).contract
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, classes=2, input_size=RESNET18_TILE)
    contract = ModelContract(
        name="bench-resnet18", task="live_dead", classes=("live", "dead"), positive_class="dead",
        output="probabilities", input_name="input", channels=("brightfield",), layout="NCHW",
        height=RESNET18_TILE, width=RESNET18_TILE, normalisation=demo.normalisation,
        tiling=Tiling(RESNET18_TILE, RESNET18_TILE), empty_filter=demo.empty_filter, decision_threshold=0.5,
        trained_on={"benchmark": True, "weights": "random (torch.manual_seed(0)); for throughput only, "
                    "its calls mean nothing"}, metrics={})
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((4, 1, RESNET18_TILE, RESNET18_TILE)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    export_classifier(model, contract, out, parity_inputs=inputs, parity_images=[])
    return out
