"""Parity: the exported ONNX model must compute what the PyTorch model computes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wellwatch.daemon.errors import WellwatchError


class ParityError(WellwatchError, AssertionError):
    """The ONNX model disagrees with the PyTorch model beyond tolerance."""

    def __init__(self, report: "ParityReport"):
        self.report = report
        super().__init__(f"exported model differs from the PyTorch model: {report.describe()}")


@dataclass(frozen=True)
class ParityReport:
    elements: int
    mismatched: int
    max_abs_diff: float
    worst_index: tuple[int, ...]
    atol: float
    rtol: float

    @property
    def mismatched_ppm(self) -> float:
        return 1e6 * self.mismatched / max(self.elements, 1)

    def describe(self) -> str:
        return (f"{self.mismatched} of {self.elements} elements ({self.mismatched_ppm:.1f} ppm) beyond "
                f"atol={self.atol} rtol={self.rtol}; largest difference {self.max_abs_diff:.3g} at {self.worst_index}")


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> ParityReport:
    if expected.shape != actual.shape:
        raise ParityError(ParityReport(expected.size, expected.size, float("inf"), (), atol, rtol))
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    bad = ~(diff <= atol + rtol * np.abs(expected)) | ~np.isfinite(actual)
    worst = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf))), diff.shape)
    return ParityReport(int(diff.size), int(bad.sum()), float(diff[worst]), tuple(int(i) for i in worst), atol, rtol)
