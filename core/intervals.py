"""Per-well live fractions with intervals whose coverage a calibration measured. Pure; no I/O.

`wellwatch calibrate` scores every experiment (well) of a stained calibration plate with a model that
never saw it, estimates each well's dead fraction three ways and compares them with the stain's:
- classify_count: the share of tiles (cells) with P(dead) >= the decision threshold;
- mean_probability: the mean P(dead);
- adjusted: classify-and-count corrected for the classifier's error rates,
  (cc - fpr) / (tpr - fpr), clipped to 0..1, with tpr/fpr measured out of experiment.
It keeps the estimator with the smallest leave-experiment-out mean absolute error and records, per
nominal level, the split-conformal half-width: the ceil((n + 1) * level)-th smallest of the n
absolute per-well errors. If a new well's error is exchangeable with the calibration wells' (same
assay, same imaging, wells drawn like the calibration's), the interval estimate +- half-width covers
the stain's fraction with probability >= level. When (n + 1) * level > n there are too few wells
for that level: the half-width is None and the interval is the whole 0..1 range.

The contract's `calibration` section carries all of it; the daemon reads it through `Calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from wellwatch.core.errors import ContractError

ESTIMATORS = ("classify_count", "mean_probability", "adjusted")
VERDICTS = ("per-cell calls usable", "per-well fractions only", "not usable on this assay")
UNITS = ("tile", "cell")


@dataclass(frozen=True)
class Calibration:
    """What the daemon needs from a calibration: the estimator, its error rates, the half-widths."""
    estimator: str
    half_width: dict[str, float | None]  # nominal level ("0.9") -> half-width of the dead-fraction interval
    verdict: str
    unit: str = "tile"
    tpr: float = 1.0  # P(call dead | stained dead), out of experiment; used by `adjusted`
    fpr: float = 0.0  # P(call dead | stained live)
    wells: int = 0  # calibration wells (experiments) the half-widths stand on
    method: str = "split conformal on leave-experiment-out per-well absolute errors"
    figures: dict[str, Any] = field(default_factory=dict)  # the report's figures, for the record

    @property
    def calls_usable(self) -> bool:
        return self.verdict == VERDICTS[0]

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(sorted(float(k) for k in self.half_width))

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "half_width": dict(self.half_width), "verdict": self.verdict,
                "unit": self.unit, "tpr": self.tpr, "fpr": self.fpr, "wells": self.wells, "method": self.method,
                "figures": dict(self.figures)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<contract>") -> "Calibration":
        def bad(reason: str) -> ContractError:
            return ContractError(source, f"invalid calibration section: {reason}")

        if not isinstance(doc, Mapping):
            raise bad("it is not a JSON object")
        try:
            cal = cls(estimator=doc["estimator"], half_width=dict(doc["half_width"]), verdict=doc["verdict"],
                      unit=doc.get("unit", "tile"), tpr=float(doc.get("tpr", 1.0)), fpr=float(doc.get("fpr", 0.0)),
                      wells=int(doc.get("wells", 0)), method=str(doc.get("method", cls.method)),
                      figures=dict(doc.get("figures", {})))
        except KeyError as e:
            raise bad(f"lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise bad(f"a field has the wrong type ({e})") from None
        if cal.estimator not in ESTIMATORS:
            raise bad(f"estimator {cal.estimator!r}; allowed: {', '.join(ESTIMATORS)}")
        if cal.verdict not in VERDICTS:
            raise bad(f"verdict {cal.verdict!r}; allowed: {'; '.join(VERDICTS)}")
        if cal.unit not in UNITS:
            raise bad(f"unit {cal.unit!r}; allowed: {', '.join(UNITS)}")
        if not cal.half_width:
            raise bad("half_width is empty; it maps a nominal level such as \"0.9\" to a half-width")
        for level, width in cal.half_width.items():
            try:
                ok = 0 < float(level) < 1
            except ValueError:
                ok = False
            if not ok:
                raise bad(f"half_width level {level!r} must be a number strictly between 0 and 1")
            if width is not None and not (isinstance(width, (int, float)) and 0 <= width <= 1):
                raise bad(f"half_width[{level}] = {width!r} must be in 0..1, or null (too few wells)")
        if not (0 <= cal.fpr <= 1 and 0 <= cal.tpr <= 1):
            raise bad(f"tpr {cal.tpr} and fpr {cal.fpr} must be in 0..1")
        if cal.estimator == "adjusted" and cal.tpr - cal.fpr <= 0:
            raise bad(f"estimator 'adjusted' needs tpr > fpr, got tpr {cal.tpr}, fpr {cal.fpr}")
        return cal

    def half_width_at(self, level: float) -> float | None:
        for k, v in self.half_width.items():
            if math.isclose(float(k), level):
                return v
        raise KeyError(level)


def conformal_half_width(abs_errors: np.ndarray, level: float) -> float | None:
    """Split-conformal quantile: the ceil((n + 1) * level)-th smallest absolute error; None when
    there are too few errors for that level (the interval is then 0..1)."""
    e = np.sort(np.abs(np.asarray(abs_errors, float)))
    k = math.ceil((len(e) + 1) * level - 1e-9)
    return float(e[k - 1]) if 1 <= k <= len(e) else None


def dead_fraction(estimator: str, n: int, dead_calls: int, dead_p_sum: float | None,
                  tpr: float = 1.0, fpr: float = 0.0) -> float | None:
    """One well's dead fraction by `estimator` from its n scored tiles (cells); None when it has none
    or the estimator's input is missing (mean_probability without the probability sum)."""
    if n <= 0:
        return None
    if estimator == "classify_count":
        return dead_calls / n
    if estimator == "mean_probability":
        return None if dead_p_sum is None else min(1.0, max(0.0, dead_p_sum / n))
    if estimator == "adjusted":
        return min(1.0, max(0.0, (dead_calls / n - fpr) / (tpr - fpr)))
    raise ValueError(f"estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")


def interval(estimate: float | None, half_width: float | None) -> tuple[float, float] | None:
    """estimate +- half_width clipped to 0..1; 0..1 itself when the level had too few wells."""
    if estimate is None:
        return None
    if half_width is None:
        return (0.0, 1.0)
    return (max(0.0, estimate - half_width), min(1.0, estimate + half_width))


def live_fraction_fields(cal: Calibration | None, level: float, live: int | None, dead: int | None,
                         dead_p_sum: float | None, prefix: str = "") -> dict[str, Any]:
    """The message fields of one well's calibrated live fraction (`prefix` "cell_" for cells):
    `live_fraction_estimate`, `live_fraction_interval` [low, high], `interval_level`, `estimator`,
    `calls_usable` (False: the counts are tallies of calls the calibration found unusable one by
    one; read the fraction and its interval). All None without a calibration."""
    keys = ("live_fraction_estimate", "live_fraction_interval", "interval_level", "estimator", "calls_usable")
    out: dict[str, Any] = {prefix + k: None for k in keys}
    if cal is None or live is None or dead is None:
        return out
    dead_est = dead_fraction(cal.estimator, live + dead, dead, dead_p_sum, cal.tpr, cal.fpr)
    live_est = None if dead_est is None else 1.0 - dead_est
    bounds = interval(live_est, cal.half_width_at(level))
    out.update({prefix + "live_fraction_estimate": live_est,
                prefix + "live_fraction_interval": list(bounds) if bounds else None,
                prefix + "interval_level": level, prefix + "estimator": cal.estimator,
                prefix + "calls_usable": cal.calls_usable})
    return out
