"""The bundled demo model with a calibration section in its contract (as `wellwatch calibrate` writes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wellwatch.core.contract import METADATA_KEY, ModelContract
from wellwatch.core.intervals import Calibration
from wellwatch.core.bundled_models import bundled_demo_model


def calibrated_demo_model(path: Path, calibration: Calibration) -> Path:
    import onnx

    from wellwatch.export.metadata import set_metadata

    proto = onnx.load(bundled_demo_model())
    contract = ModelContract.from_json(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    set_metadata(proto, dataclasses.replace(contract, name="demo-calibrated", calibration=calibration))
    onnx.save(proto, path)
    return path
