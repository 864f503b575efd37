"""PyTorch classifier -> ONNX file with the model contract in its metadata, checked for parity."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wellwatch import __version__
from wellwatch.daemon.contract import METADATA_KEY, ModelContract

from .parity import ParityError, compare

log = logging.getLogger(__name__)

OPSET = 17
PARITY_BATCH_SIZES = (1, 7, 32)


class WithSoftmax(nn.Module):
    """Exported graphs give probabilities, so the contract can say output = 'probabilities'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_classifier(model: nn.Module, contract: ModelContract, out: str | Path,
                      parity_inputs: np.ndarray | None = None, atol: float = 1e-4, rtol: float = 1e-3) -> Path:
    """Write `out` (+ `out`.manifest.json). Raises ParityError if ONNX Runtime disagrees with torch."""
    import onnx

    contract.validate(str(out))
    out = Path(out)
    graph = WithSoftmax(model) if contract.output == "probabilities" else model
    graph.eval()
    shape = (len(contract.channels), contract.height, contract.width)
    example = torch.zeros((2, *shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, (example,), str(out), input_names=[contract.input_name], output_names=["scores"],
                          dynamic_axes={contract.input_name: {0: "batch"}, "scores": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    proto.producer_name = "wellwatch"
    proto.doc_string = f"wellwatch {contract.task} model {contract.name!r}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    report = check_parity(graph, out, contract, parity_inputs, atol, rtol)
    write_manifest(out, contract, report)
    log.info("exported %s (parity: %s)", out, report.describe())
    return out


def check_parity(graph: nn.Module, path: Path, contract: ModelContract, inputs: np.ndarray | None,
                 atol: float, rtol: float):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    shape = (len(contract.channels), contract.height, contract.width)
    batches = [rng.normal(0, 3, (b, *shape)).astype(np.float32) for b in PARITY_BATCH_SIZES]
    if inputs is not None and len(inputs):
        batches.append(np.ascontiguousarray(inputs[:64], np.float32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected, actual = [], []
    with torch.no_grad():
        for b in batches:
            expected.append(graph(torch.from_numpy(b)).numpy().ravel())
            actual.append(session.run(None, {contract.input_name: b})[0].ravel())
    report = compare(np.concatenate(expected), np.concatenate(actual), atol, rtol)
    if report.mismatched:
        raise ParityError(report)
    return report


def write_manifest(path: Path, contract: ModelContract, report) -> Path:
    import onnx
    import onnxruntime

    data = path.read_bytes()
    manifest = {
        "file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "contract": json.loads(contract.to_json()), "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parity": {"elements": report.elements, "mismatched_ppm": report.mismatched_ppm,
                   "max_abs_diff": report.max_abs_diff},
        "tools": {"wellwatch": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
    }
    target = path.with_suffix(path.suffix + ".manifest.json")
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target
