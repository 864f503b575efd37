"""PyTorch classifier -> ONNX file(s) with the model contract, proven equal to the PyTorch model.

`export_classifier` writes `out` (float32) and, when asked, `out` with `.fp16.onnx` (float16
weights, float32 input and output). Each file is written under a temporary name, checked, and
only then moved into place with its manifest: a failed check leaves no model behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from wellwatch.core.inference.backend import softmax
from wellwatch.core.contract import ModelContract, file_sha256

from .fp16 import fp16_path, write_fp16
from .manifest import write_manifest
from .metadata import OPSET
from .onnx_graph import onnx_session, run_onnx, run_torch, servable, write_onnx
from .parity import (DecisionError, DecisionReport, ParityError, ParityReport, Tolerances, compare_cases,
                     compare_decisions)
from .parity_inputs import ParityCase, given_cases, random_cases, real_cases

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    contract: ModelContract
    path: Path
    sha256: str
    parity: ParityReport
    inputs: list[str]
    fp16_path: Path | None = None
    fp16_sha256: str | None = None
    fp16_parity: ParityReport | None = None
    fp16_decisions: DecisionReport | None = None
    manifests: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.path} (sha256 {self.sha256})",
                 f"  parity float32 vs PyTorch: {self.parity.describe()}"]
        if self.fp16_path is not None:
            lines += [f"wrote {self.fp16_path} (sha256 {self.fp16_sha256})",
                      f"  parity float16 vs PyTorch (on {self.fp16_parity.provider}): {self.fp16_parity.describe()}",
                      f"  {self.fp16_decisions.describe()}"]
        lines.append(f"  inputs: {'; '.join(self.inputs)}")
        return "\n".join(lines)


def parity_cases(contract: ModelContract, patches: np.ndarray | None = None,
                 images: list[str | Path] = ()) -> list[ParityCase]:
    """Random batches (1, 7, 32), the given patches, and patches cut from the given real images."""
    return random_cases(contract) + given_cases(patches, contract) + real_cases(list(images), contract)


def _outputs(graph: nn.Module, path: Path, contract: ModelContract, cases: list[ParityCase], prefer_gpu: bool = False):
    """[(case name, PyTorch output, ONNX Runtime output)] and the provider ONNX Runtime used."""
    session = onnx_session(path, prefer_gpu)
    outputs = [(c.name, run_torch(graph, c.batch), run_onnx(session, contract.input_name, c.batch)) for c in cases]
    return outputs, session.get_providers()[0]


def _probabilities(x: np.ndarray, contract: ModelContract) -> np.ndarray:
    return softmax(x.astype(np.float64)) if contract.output == "logits" else x


def verify_parity(model: nn.Module, path: str | Path, contract: ModelContract, cases: list[ParityCase],
                  atol: float = Tolerances.atol, rtol: float = Tolerances.rtol, label: str | Path | None = None
                  ) -> ParityReport:
    """Run the PyTorch model and the ONNX file on the same inputs; raise ParityError beyond tolerance.

    `label` names the file in the error (the destination, when `path` is a staging file)."""
    outputs, provider = _outputs(servable(model, contract), Path(path), contract, cases)
    report = dataclasses.replace(compare_cases(outputs, atol, rtol, contract.classes), provider=provider)
    if not report.passed:
        raise ParityError(report, f"exported model {label or path}")
    return report


def verify_fp16(model: nn.Module, path: str | Path, contract: ModelContract, cases: list[ParityCase],
                tol: Tolerances = Tolerances(), label: str | Path | None = None) -> tuple[ParityReport, DecisionReport]:
    """The float16 file against the PyTorch model: finite, close in value, and the same decisions.

    Run on CUDA when ONNX Runtime really has it. On the CPU, ONNX Runtime has no float16 kernels for
    most operators and inserts Casts, so there the check covers the float16 weights and the graph,
    not float16 arithmetic; the report's `provider` says which it was.
    """
    outputs, provider = _outputs(servable(model, contract), Path(path), contract, cases, prefer_gpu=True)
    values = dataclasses.replace(compare_cases(outputs, tol.fp16_atol, tol.fp16_rtol, contract.classes),
                                 provider=provider)
    if values.nonfinite or not values.passed:
        raise ParityError(values, f"float16 model {label or path}")
    decisions = compare_decisions([(n, _probabilities(e, contract), _probabilities(a, contract)) for n, e, a in outputs],
                                  contract.positive_index, contract.decision_threshold, tol.decision_margin)
    if not decisions.passed:
        raise DecisionError(decisions, f"float16 model {label or path}")
    return values, decisions


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def export_classifier(model: nn.Module, contract: ModelContract, out: str | Path,
                      parity_inputs: np.ndarray | None = None, atol: float = Tolerances.atol,
                      rtol: float = Tolerances.rtol, *, parity_images: list[str | Path] = (), fp16: bool = False,
                      tolerances: Tolerances | None = None, opset: int = OPSET,
                      provenance: dict | None = None) -> ExportResult:
    """Write `out` (+ manifest), and `out`.fp16.onnx (+ manifest) when `fp16`.

    Raises ParityError (DecisionError for float16 calls) when a file disagrees with PyTorch; the
    file that failed is deleted and nothing at its destination is replaced.
    """
    tol = tolerances or Tolerances(atol=atol, rtol=rtol)
    out = Path(out)
    contract.validate(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    if any(p.device.type != "cpu" for p in model.parameters()):  # parity is judged on the CPU reference
        model = copy.deepcopy(model).cpu()
    model.eval()
    cases = parity_cases(contract, parity_inputs, parity_images)
    details = {"opset": opset, **({"source": provenance} if provenance else {})}
    staged = _staging(out)
    try:
        write_onnx(model, contract, staged, opset)
        parity = verify_parity(model, staged, contract, cases, tol.atol, tol.rtol, label=out)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    inputs = [c.name for c in cases]
    manifest = write_manifest(out, contract, precision="float32",
                              parity={"against": "PyTorch (float32, CPU)", "inputs": inputs, **parity.as_dict()},
                              **details)
    result = ExportResult(contract, out, file_sha256(out), parity, inputs, manifests=[manifest])
    log.info("exported %s (parity: %s)", out, parity.describe())
    if fp16:
        half = fp16_path(out)
        staged = _staging(half)
        try:
            write_fp16(out, contract, staged)
            values, decisions = verify_fp16(model, staged, contract, cases, tol, label=half)
            os.replace(staged, half)
        finally:
            staged.unlink(missing_ok=True)
        manifest = write_manifest(half, contract, precision="float16",
                                  parity={"against": "PyTorch (float32, CPU)", "inputs": inputs, **values.as_dict()},
                                  decisions=decisions.as_dict(), float32_model={"file": out.name, "sha256": result.sha256},
                                  **details)
        result.fp16_path, result.fp16_sha256 = half, file_sha256(half)
        result.fp16_parity, result.fp16_decisions = values, decisions
        result.manifests.append(manifest)
        log.info("exported %s (parity: %s; %s)", half, values.describe(), decisions.describe())
    return result

