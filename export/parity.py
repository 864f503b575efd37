"""Parity: the exported ONNX model must compute what the PyTorch model computes.

Values are compared element by element (|expected - actual| <= atol + rtol * |expected|, and the
actual value finite); decisions (the class each sample is given) are compared for reduced-precision
variants, where small value differences are expected but a changed call is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wellwatch.core.errors import WellwatchError


@dataclass(frozen=True)
class Tolerances:
    """Parity tolerances: float32 against PyTorch, float16 against PyTorch, and the decision margin.

    A float16 decision may differ from the float32 one only where the float32 score lies within
    `decision_margin` of the decision boundary (threshold, or the runner-up class).
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    fp16_atol: float = 2e-2
    fp16_rtol: float = 2e-2
    decision_margin: float = 1e-2


@dataclass(frozen=True)
class ParityReport:
    elements: int
    mismatched: int
    max_abs_diff: float
    worst_index: tuple[int, ...]
    atol: float
    rtol: float
    where: str = ""  # the worst element in words: input set, sample, output
    expected_at_worst: float = float("nan")
    actual_at_worst: float = float("nan")
    nonfinite: int = 0
    provider: str = ""  # the ONNX Runtime execution provider that produced the actual values

    @property
    def mismatched_ppm(self) -> float:
        return 1e6 * self.mismatched / max(self.elements, 1)

    @property
    def passed(self) -> bool:
        return self.mismatched == 0

    def describe(self) -> str:
        where = self.where or f"index {self.worst_index}"
        text = (f"{self.mismatched} of {self.elements} elements ({self.mismatched_ppm:.1f} ppm) beyond "
                f"atol={self.atol:g} rtol={self.rtol:g}; largest difference {self.max_abs_diff:.3g} at {where}")
        if np.isfinite(self.expected_at_worst):
            text += f" (expected {self.expected_at_worst:.6g}, got {self.actual_at_worst:.6g})"
        if self.nonfinite:
            text += f"; {self.nonfinite} NaN/inf outputs"
        return text

    def as_dict(self) -> dict:
        return {"elements": self.elements, "mismatched": self.mismatched,
                "mismatched_ppm": round(self.mismatched_ppm, 3), "max_abs_diff": self.max_abs_diff,
                "where": self.where, "atol": self.atol, "rtol": self.rtol, "nonfinite": self.nonfinite,
                "provider": self.provider}


class ParityError(WellwatchError, AssertionError):
    """The ONNX model disagrees with the PyTorch model beyond tolerance."""

    def __init__(self, report: ParityReport, what: str = "exported model"):
        self.report = report
        super().__init__(f"{what} differs from the PyTorch model: {report.describe()}")


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> ParityReport:
    """Compare two arrays of the same shape; the report's worst_index indexes them."""
    if expected.shape != actual.shape:
        raise ParityError(ParityReport(expected.size, expected.size, float("inf"), (), atol, rtol,
                                       where=f"shape {actual.shape} instead of {expected.shape}"))
    if expected.size == 0:
        return ParityReport(0, 0, 0.0, (), atol, rtol)
    exp64, act64 = expected.astype(np.float64), actual.astype(np.float64)
    diff = np.abs(exp64 - act64)
    finite = np.isfinite(act64)
    bad = ~(diff <= atol + rtol * np.abs(exp64)) | ~finite
    # a NaN/inf output is the worst difference there is
    worst = np.unravel_index(int(np.argmax(np.where(np.isfinite(diff), diff, np.inf))), diff.shape)
    return ParityReport(int(diff.size), int(bad.sum()), float(diff[worst]), tuple(int(i) for i in worst), atol, rtol,
                        expected_at_worst=float(exp64[worst]), actual_at_worst=float(act64[worst]),
                        nonfinite=int((~finite).sum()))


def compare_cases(cases: list[tuple[str, np.ndarray, np.ndarray]], atol: float, rtol: float,
                  classes: tuple[str, ...] = ()) -> ParityReport:
    """Compare (name, expected, actual) output batches of shape (N, K) as one population.

    The report counts mismatches over all of them and says in which input set, sample and output
    the largest difference lies.
    """
    reports = [(name, compare(e, a, atol, rtol)) for name, e, a in cases]
    if not reports:
        raise ValueError("no parity inputs")
    worst_name, worst = max(reports, key=lambda r: (r[1].max_abs_diff if np.isfinite(r[1].max_abs_diff)
                                                    else np.inf))
    where = f"input set {worst_name!r}"
    if len(worst.worst_index) == 2:
        sample, out = worst.worst_index
        label = f" ({classes[out]})" if out < len(classes) else ""
        where += f", sample {sample}, output {out}{label}"
    return ParityReport(sum(r.elements for _, r in reports), sum(r.mismatched for _, r in reports),
                        worst.max_abs_diff, worst.worst_index, atol, rtol, where, worst.expected_at_worst,
                        worst.actual_at_worst, sum(r.nonfinite for _, r in reports))


@dataclass(frozen=True)
class DecisionReport:
    """How often a variant gives each sample the same class as the reference."""

    samples: int
    disagreements: int
    borderline_disagreements: int  # disagreements where the reference itself was within `margin` of a tie
    margin: float
    where: str = ""

    @property
    def agreement(self) -> float:
        return 1.0 - self.disagreements / max(self.samples, 1)

    @property
    def passed(self) -> bool:
        return self.disagreements == self.borderline_disagreements

    def describe(self) -> str:
        text = (f"decisions agree on {self.samples - self.disagreements} of {self.samples} samples "
                f"({100 * self.agreement:.3f}%)")
        if self.disagreements:
            text += (f"; {self.disagreements - self.borderline_disagreements} disagreement(s) away from the "
                     f"decision boundary (margin {self.margin:g}), {self.borderline_disagreements} borderline")
            if self.where:
                text += f"; first at {self.where}"
        return text

    def as_dict(self) -> dict:
        return {"samples": self.samples, "disagreements": self.disagreements,
                "borderline_disagreements": self.borderline_disagreements, "agreement": self.agreement,
                "margin": self.margin}


class DecisionError(ParityError):
    """A reduced-precision variant calls some samples differently from the reference model."""

    def __init__(self, report: DecisionReport, what: str = "float16 model"):
        self.report = report
        WellwatchError.__init__(self, f"{what} changes decisions of the float32 model: {report.describe()}")


def decide(probabilities: np.ndarray, positive_index: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(class per sample, distance of the deciding score from the boundary).

    Two classes: the positive class when its probability >= threshold (the daemon's rule).
    More classes: the most probable one; the boundary distance is the gap to the runner-up.
    """
    p = probabilities.astype(np.float64)
    if p.shape[1] == 2:
        positive = p[:, positive_index] >= threshold
        calls = np.where(positive, positive_index, 1 - positive_index)
        return calls, np.abs(p[:, positive_index] - threshold)
    top2 = np.sort(p, axis=1)[:, -2:]
    return p.argmax(axis=1), top2[:, 1] - top2[:, 0]


def compare_decisions(cases: list[tuple[str, np.ndarray, np.ndarray]], positive_index: int, threshold: float,
                      margin: float) -> DecisionReport:
    """Compare the calls of (name, reference probabilities, variant probabilities) batches."""
    samples = disagreements = borderline = 0
    first = ""
    for name, ref, var in cases:
        ref_calls, distance = decide(ref, positive_index, threshold)
        var_calls, _ = decide(np.nan_to_num(var, nan=-1.0), positive_index, threshold)
        differ = ref_calls != var_calls
        samples += len(ref_calls)
        disagreements += int(differ.sum())
        borderline += int((differ & (distance <= margin)).sum())
        hard = np.flatnonzero(differ & (distance > margin))
        if len(hard) and not first:
            i = int(hard[0])
            first = f"input set {name!r}, sample {i} (reference {ref[i].round(4).tolist()}, variant {var[i].round(4).tolist()})"
    return DecisionReport(samples, disagreements, borderline, margin, first)
