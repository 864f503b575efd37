"""The manifest beside every exported model: `model.onnx.manifest.json`.

It holds the file's sha256 and size, the contract, the export time, the parity results and the
tool versions, so anyone holding the pair can tell what the file is and that it is intact.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from wellwatch import __version__
from wellwatch.core.contract import ModelContract, file_sha256

from .errors import ManifestError

MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(model: str | Path) -> Path:
    model = Path(model)
    return model.with_name(model.name + MANIFEST_SUFFIX)


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"wellwatch": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_manifest(model: str | Path, contract: ModelContract, **details: Any) -> Path:
    """Write the manifest of `model`; `details` (parity, precision, source, opset...) are added as given."""
    model = Path(model)
    manifest = {"file": model.name, "sha256": file_sha256(model), "size": model.stat().st_size,
                "contract": json.loads(contract.to_json()), "exported": utc_now(), "tools": tool_versions(),
                **details}
    target = manifest_path(model)
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def read_manifest(model: str | Path) -> dict[str, Any]:
    path = manifest_path(model)
    if not path.is_file():
        raise ManifestError(str(model), f"no manifest beside it (expected {path.name})")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(str(path), f"manifest cannot be read ({e})") from None
    if not isinstance(doc, dict) or "sha256" not in doc:
        raise ManifestError(str(path), "manifest has no sha256")
    return doc


def verify_manifest(model: str | Path) -> dict[str, Any]:
    """Return the manifest if the file's sha256 and size match it; raise ManifestError otherwise."""
    doc = read_manifest(model)
    actual = file_sha256(model)
    if actual != doc["sha256"]:
        raise ManifestError(str(model), f"sha256 {actual} does not match the manifest's {doc['sha256']}: "
                                        "the file was changed or damaged after export")
    size = Path(model).stat().st_size
    if "size" in doc and size != doc["size"]:
        raise ManifestError(str(model), f"size {size} does not match the manifest's {doc['size']}")
    return doc
