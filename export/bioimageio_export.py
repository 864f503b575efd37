"""An exported wellwatch ONNX model -> a BioImage.IO model package (format 0.5), validated on writing.

The package holds the ONNX file unchanged (its metadata keeps the model contract, so the daemon
serves a package it wrote exactly as it serves the .onnx), a description, test tensors made by the
model itself on inputs cut from a real frame with the daemon's own preprocessing, a cover image of
that frame, documentation (the contract's training data, metrics and calibration verdict) and the
licence. The input tensor is the model's input as the contract prepares it (normalised tiles,
covering tiles or masked crops): that preparation is wellwatch's own (robust z-score, flat-field,
mask mean) with no BioImage.IO operation to state it, so the description says so in words and
carries the contract under config.wellwatch.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.packages.description import EXTRA, PackageError, read_package
from wellwatch.core.contract import SEGMENTATION_MAPS, ModelContract, file_sha256
from wellwatch.core.errors import UsageError
from wellwatch.core.files.tiff import read_frame

from .errors import ExportError
from .parity_inputs import default_real_images, real_patches

log = logging.getLogger(__name__)

LICENSE = "MIT"  # wellwatch's own licence (pyproject.toml)
CITATIONS = (
    {"text": "Pattarone G. et al. Learning deep features for dead and living breast cancer cell classification "
             "without staining. Scientific Reports 2021 (the label-free live/dead recipe).",
     "url": "https://www.nature.com/search?q=Pattarone+dead+living+breast+cancer+without+staining"},
    {"text": "Ogawa et al. Label-free classification of cell types (LMPP vs pro-B) from DIC/bright-field/phase "
             "contrast images by a CNN, PLOS ONE (segmentation and single-cell crop recipe).",
     "url": "https://journals.plos.org/plosone/search?q=Ogawa+LMPP+pro-B+label-free"},
)
UNET_CITATION = {"text": "Ronneberger O. et al. U-Net: Convolutional networks for biomedical image segmentation. "
                         "MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}


@dataclass(frozen=True)
class WrittenPackage:
    folder: Path
    description: Path
    test_max_abs: float  # |test output| largest value, for the summary line

    def summary(self) -> str:
        return f"wrote BioImage.IO package {self.folder} (validated by bioimageio.spec)"


def package_id(contract: ModelContract) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in contract.name.lower()).strip("-") or "model"


def write_package(model: str | Path, out: str | Path, frame: str | Path, *, author: str = "wellwatch export",
                  version: str = "0.1.0") -> WrittenPackage:
    """Write the package for `model` (an exported .onnx with a contract) into folder `out`, with test
    tensors and cover cut from `frame` (a real TIFF of the kind the model serves); validate it."""
    try:
        import bioimageio.spec  # noqa: F401
        import yaml
    except ImportError:
        raise ExportError(f"--bioimageio needs the bioimageio extra ({EXTRA})") from None
    model, out, frame = Path(model), Path(out), Path(frame)
    backend = OnnxBackend(model, device="cpu", warmup=False, max_batch=1)
    contract = backend.contract
    image = read_frame(str(frame))
    inputs = real_patches(image, contract, limit=1)
    if len(inputs) == 0:
        raise ExportError(f"{frame}: no model input could be cut from it (no cells or only empty tiles); give a "
                          "frame of the kind the model serves")
    test_in = np.ascontiguousarray(inputs[:1], np.float32)
    name = backend.session.get_inputs()[0].name
    test_out = backend.session.run(None, {name: test_in})[0].astype(np.float32)  # the graph's own output

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / "weights.onnx")
    np.save(out / "test_input.npy", test_in)
    np.save(out / "test_output.npy", test_out)
    _write_cover(image, out / "cover.png")
    (out / "README.md").write_text(_documentation(contract, frame), encoding="utf-8")
    (out / "LICENSE").write_text(_licence_text(), encoding="utf-8")
    doc = _description(contract, test_in, test_out, backend, author, version, out)
    description = out / "bioimageio.yaml"
    description.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    _validate(description)
    return WrittenPackage(out, description, float(np.abs(test_out).max()))


def package_exported_model(model: str | Path, out: str | Path, frame: str | Path | None,
                           parity_images) -> WrittenPackage:
    """write_package with `frame`, else the first of `parity_images`, else the shared real image
    (`wellwatch export --bioimageio` and `wellwatch export-bioimageio`)."""
    frame = frame or next(iter(parity_images or default_real_images()), None)
    if frame is None:
        raise UsageError("--bioimageio: give --bioimageio-frame PATH, a real frame (TIFF) of the kind the model "
                         "serves, for the package's test tensors and cover")
    return write_package(model, out, frame)


def _validate(description: Path) -> None:
    try:
        read_package(description)
    except PackageError as e:
        raise ExportError(f"the written package does not validate: {e.reason}") from None


def _axes(contract: ModelContract, channel_names) -> list[dict]:
    return [{"type": "batch"}, {"type": "channel", "channel_names": list(channel_names)},
            {"type": "space", "id": "y", "size": contract.height}, {"type": "space", "id": "x", "size": contract.width}]


def _description(contract: ModelContract, test_in, test_out, backend, author: str, version: str, out: Path) -> dict:
    channels = [_identifier(c) for c in contract.channels]
    seg = contract.task == "segmentation"
    if seg:
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(SEGMENTATION_MAPS)},
                    {"type": "space", "id": "y", "size": {"tensor_id": "input", "axis_id": "y"}},
                    {"type": "space", "id": "x", "size": {"tensor_id": "input", "axis_id": "x"}}]
        out_text = "per pixel: P(background), P(interior), P(boundary) and the distance map (wellwatch contract)"
    else:
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [_identifier(c) for c in contract.classes]}]
        out_text = f"{contract.output} of the classes {', '.join(contract.classes)}, in this order"
    crop = contract.crop
    in_text = ("normalised single-cell crops (mask_mean, radius %g px)" % crop.mask_radius if crop is not None else
               f"{contract.normalisation.method}-normalised {'covering tiles' if seg else 'tiles'} of "
               f"{', '.join(contract.channels)} (wellwatch contract: config.wellwatch.contract)")
    tags = ["wellwatch", "label-free", "onnx", "segmentation" if seg else "classification", contract.task]
    return {
        "format_version": "0.5.4", "type": "model", "id": package_id(contract), "name": _title(contract),
        "version": version,
        "description": f"wellwatch {contract.task} model {contract.name!r}, exported with its model contract.",
        "authors": [{"name": author}], "cite": [*CITATIONS, *([UNET_CITATION] if seg else [])],
        "license": LICENSE, "documentation": "README.md", "covers": ["cover.png"], "tags": tags,
        "inputs": [{"id": "input", "description": in_text, "axes": _axes(contract, channels),
                    "test_tensor": {"source": "test_input.npy", "sha256": file_sha256(out / "test_input.npy")}}],
        "outputs": [{"id": "output", "description": out_text, "axes": out_axes,
                     "test_tensor": {"source": "test_output.npy", "sha256": file_sha256(out / "test_output.npy")}}],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": file_sha256(out / "weights.onnx"),
                             "opset_version": _opset(backend.path)}},
        "config": {"wellwatch": {"contract": json.loads(contract.to_json())}},
    }


def _identifier(name: str) -> str:
    """Channel names in a description are identifiers: letters, digits, - and _."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name)) or "channel"


def _title(contract: ModelContract) -> str:
    title = f"wellwatch {contract.task.replace('_', ' ')} {contract.name}"
    return "".join(ch if ch.isalnum() or ch in " -_()" else " " for ch in title)[:128]


def _opset(path: str) -> int:
    import onnx

    return max(o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def _write_cover(image: np.ndarray, path: Path) -> None:
    import imageio.v3 as iio

    x = image[..., 0] if image.ndim == 3 else image
    lo, hi = np.percentile(x, [0.5, 99.5])
    u8 = (np.clip((x.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    iio.imwrite(path, u8)


def _licence_text() -> str:
    return ("MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy of this "
            "model package, to deal in it without restriction, subject to the MIT licence terms "
            "(https://opensource.org/license/mit).\n")


def _documentation(contract: ModelContract, frame: Path) -> str:
    trained = json.dumps(contract.trained_on, indent=2, sort_keys=True, default=str)
    metrics = json.dumps(contract.metrics, indent=2, sort_keys=True, default=str)
    calibration = contract.metrics.get("calibration") or contract.trained_on.get("calibration") or "not recorded"
    return f"""# {contract.name} (wellwatch {contract.task})

Exported by `wellwatch export --bioimageio` from a model that carries the wellwatch model contract
(config.wellwatch.contract here, and in weights.onnx's metadata under `wellwatch.contract`).

## Input
{len(contract.channels)} channel(s) ({', '.join(contract.channels)}), {contract.height} x {contract.width}, float32,
prepared as the contract says: normalisation `{contract.normalisation.method}` {contract.normalisation.params or ''}.
That preparation runs in wellwatch (core/preprocess.py); the test input here is one such input cut
from `{frame.name}` by the daemon's own code.

## Output
{'Per-pixel maps ' + ', '.join(SEGMENTATION_MAPS) if contract.task == 'segmentation' else
 f"{contract.output} of {', '.join(contract.classes)}; decision threshold {contract.decision_threshold:g} on "
 f"{contract.positive_class}"}.

## Training data (the contract's `trained_on`)
```json
{trained}
```

## Evaluation (the contract's `metrics`, grouped as training reported them)
```json
{metrics}
```

## Calibration verdict
{calibration}

## Licence and citations
MIT. Cite the seed studies listed in bioimageio.yaml (`cite`).
"""
