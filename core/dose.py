"""Dose-response per compound and timepoint: a 4-parameter log-logistic fit of viability (IC50
with a confidence interval) and growth-rate inhibition (GR values and GR50, Hafner et al., Nature
Methods 2016). Pure functions over per-well numbers; the daemon and the dashboard both call them.

Viability of a well = its live fraction / the mean live fraction of the control wells at the same
timepoint. GR of a well at timepoint t, with x its viable cells (cells called live):
    GR = 2 ** (log2(x(t) / x(t0)) / log2(x_ctrl(t) / x_ctrl(t0))) - 1
where t0 is the plate's first timepoint (the well's own count then: seeding differences cancel)
and x_ctrl the mean over the control wells. GR needs segmented cells and controls that grew.

With a calibrated model (`wellwatch calibrate`, core/intervals.py) a well's live fraction is the
calibration's estimate (`live_fraction_estimate`) and each point carries `viability_interval`: the
well's live-fraction interval divided by the controls' mean live fraction (the controls' own
uncertainty is not propagated: the bounds are the treated well's alone). The fit stays unweighted on
purpose: a calibration's half-width is one number for every well, so inverse-variance weights would
all be equal and change nothing.

Curves: y = bottom + (top - bottom) / (1 + (c / mid) ** hill). For viability, IC50 = mid (the
relative IC50: half way between the fitted top and bottom). For GR, top is fixed at 1 (GR of
an untreated well), bottom = GRinf, and GR50 is the concentration where the curve crosses 0.5.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from wellwatch.core.plate_map import PlateMap

MIN_SPAN = 0.1             # a fitted top - bottom below this is no response: no IC50
MIN_CONTROL_DOUBLINGS = 0.1  # controls must grow at least this much for GR to mean anything
CI_LEVEL = 0.95
CI_DRAWS = 2000
MAX_CI_DECADES = 6.0       # a CI half-width beyond this many decades is reported as unbounded


@dataclass(frozen=True)
class WellReading:
    """What one well showed at one timepoint (from a well message or the journal)."""
    live_fraction: float | None
    viable_cells: float | None  # cells called live; None without segmentation
    complete: bool = True
    interval: tuple[float, float] | None = None  # calibrated live-fraction interval; None without one


def log_logistic(c: np.ndarray, top: float, bottom: float, log_mid: float, hill: float) -> np.ndarray:
    x = np.log10(np.asarray(c, float))
    return bottom + (top - bottom) / (1.0 + 10.0 ** (hill * (x - log_mid)))


def _curve_fit(conc: np.ndarray, y: np.ndarray, fixed_top: float | None, bottom_bounds: tuple[float, float]):
    """(params (top, bottom, log_mid, hill), covariance of the free ones, model) or None."""
    from scipy import optimize  # imported when a plate map is in use, not by every daemon start
    lo_c, hi_c = np.log10(conc.min()), np.log10(conc.max())
    order = np.argsort(conc)
    top0 = fixed_top if fixed_top is not None else float(np.mean(y[order[:2]]))
    bottom0 = float(np.clip(np.mean(y[order[-2:]]), *bottom_bounds))
    # Start the midpoint where the data cross half way between top and bottom.
    half = (top0 + bottom0) / 2
    mid0 = float(np.log10(conc[order][np.argmin(np.abs(y[order] - half))]))
    bounds_lo, bounds_hi = [bottom_bounds[0], lo_c - 3, 0.2], [bottom_bounds[1], hi_c + 3, 10.0]
    p0 = [bottom0, mid0, 1.0]
    if fixed_top is None:
        bounds_lo, bounds_hi, p0 = [-0.5] + bounds_lo, [2.0] + bounds_hi, [float(np.clip(top0, -0.5, 2))] + p0

        def model(c, top, bottom, log_mid, hill):
            return log_logistic(c, top, bottom, log_mid, hill)
    else:
        def model(c, bottom, log_mid, hill):
            return log_logistic(c, fixed_top, bottom, log_mid, hill)
    p0 = [float(np.clip(v, a + 1e-9, b - 1e-9)) for v, a, b in zip(p0, bounds_lo, bounds_hi)]
    try:
        with warnings.catch_warnings():  # an inestimable covariance shows as inf: no CI, said in the result
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, cov = optimize.curve_fit(model, conc, y, p0=p0, bounds=(bounds_lo, bounds_hi), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    full = list(params) if fixed_top is None else [fixed_top, *params]
    return full, cov, model


def _rmse(model, conc, y, free) -> float:
    return float(np.sqrt(np.mean((model(conc, *free) - y) ** 2)))


def _failed(reason: str, n: int, key: str) -> dict:
    """A fit that could not be made: the same keys as a made one (values None) and why."""
    return {"ok": False, "reason": reason, "n": n, key: None, f"{key}_ci": None}


def fit_viability(conc, viability) -> dict:
    """4PL fit of viability; IC50 with a t-based CI on log10(IC50) from the fit's covariance."""
    conc, y = np.asarray(conc, float), np.asarray(viability, float)
    n = len(conc)
    if n < 4 or len(np.unique(conc)) < 4:
        return _failed(f"{len(np.unique(conc))} concentrations with data; a 4-parameter fit needs 4", n, "ic50")
    fit = _curve_fit(conc, y, None, (-0.5, 1.5))
    if fit is None:
        return _failed("the fit did not converge", n, "ic50")
    (top, bottom, log_mid, hill), cov, model = fit
    out = {"ok": True, "n": n, "top": top, "bottom": bottom, "hill": hill,
           "rmse": _rmse(model, conc, y, (top, bottom, log_mid, hill)), "ic50": None, "ic50_ci": None}
    if top - bottom < MIN_SPAN:
        out["reason"] = f"no response: fitted top - bottom {top - bottom:.3f} < {MIN_SPAN}"
        return out
    out["ic50"] = 10.0 ** log_mid
    out["extrapolated"] = not (conc.min() <= out["ic50"] <= conc.max())
    se = math.sqrt(cov[2, 2]) if np.isfinite(cov[2, 2]) and cov[2, 2] >= 0 else math.inf
    from scipy.special import stdtrit  # Student's t quantile (scipy.stats costs more to import)

    half = stdtrit(n - 4, 0.5 + CI_LEVEL / 2) * se if n > 4 else math.inf
    if half <= MAX_CI_DECADES:
        out["ic50_ci"] = [10.0 ** (log_mid - half), 10.0 ** (log_mid + half)]
    else:
        out["ci_reason"] = "confidence interval unbounded (too few points or too flat a curve)"
    return out


def gr50_from(gr_inf: float, log_mid: float, hill: float) -> float | None:
    """Concentration where top-1 GR curve crosses 0.5; None if it never does (GRinf >= 0.5)."""
    if gr_inf >= 0.5:
        return None
    log_gr50 = log_mid + math.log10((1.0 - gr_inf) / (0.5 - gr_inf) - 1.0) / hill
    return 10.0 ** log_gr50 if abs(log_gr50) < 300 else None


def fit_gr(conc, gr) -> dict:
    """3-parameter GR fit (top fixed at 1); GR50 with a CI from draws of the fit's covariance."""
    conc, y = np.asarray(conc, float), np.asarray(gr, float)
    n = len(conc)
    if n < 4 or len(np.unique(conc)) < 4:
        return _failed(f"{len(np.unique(conc))} concentrations with GR values; the fit needs 4", n, "gr50")
    fit = _curve_fit(conc, y, 1.0, (-1.0, 1.0))
    if fit is None:
        return _failed("the fit did not converge", n, "gr50")
    (_, gr_inf, log_mid, hill), cov, model = fit
    gr50 = gr50_from(gr_inf, log_mid, hill)
    out = {"ok": True, "n": n, "gr_inf": gr_inf, "gec50": 10.0 ** log_mid, "hill": hill,
           "rmse": _rmse(model, conc, y, (gr_inf, log_mid, hill)), "gr50": gr50, "gr50_ci": None}
    if gr50 is None:
        out["reason"] = f"GR never reaches 0.5 (GRinf {gr_inf:.2f})"
        return out
    out["extrapolated"] = not (conc.min() <= gr50 <= conc.max())
    if n > 3 and np.all(np.isfinite(cov)):
        draws = np.random.default_rng(0).multivariate_normal([gr_inf, log_mid, hill], cov, CI_DRAWS,
                                                             check_valid="ignore")
        values = [gr50_from(*d) if d[2] > 0 else None for d in draws]
        found = np.array([v for v in values if v is not None])
        tail = (1 - CI_LEVEL) / 2
        if len(found) >= (1 - tail) * CI_DRAWS:  # the upper bound is finite only if almost all draws cross
            lo, hi = np.quantile(np.log10(found), [tail, 1 - tail])
            out["gr50_ci"] = [10.0 ** lo, 10.0 ** hi]
    return out


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def dose_points(plate_map: PlateMap, compound: str, readings: Mapping[tuple[str, int], WellReading],
                timepoint: int, first_timepoint: int = 0) -> tuple[list[dict], dict]:
    """Per treated well: concentration, viability, GR (None where it cannot be computed),
    and what the controls showed."""
    controls = [w.well for w in plate_map.controls()]
    ctrl = {t: [readings[(w, t)] for w in controls if (w, t) in readings] for t in (timepoint, first_timepoint)}
    ctrl_live = _mean([r.live_fraction for r in ctrl[timepoint]])
    ctrl_x, ctrl_x0 = _mean([r.viable_cells for r in ctrl[timepoint]]), _mean([r.viable_cells for r in ctrl[first_timepoint]])
    doublings = (math.log2(ctrl_x / ctrl_x0) if ctrl_x and ctrl_x0 else None)
    gr_possible = doublings is not None and doublings >= MIN_CONTROL_DOUBLINGS and timepoint != first_timepoint
    points = []
    for w in sorted(plate_map.treated(compound), key=lambda w: (w.concentration, w.well)):
        r, r0 = readings.get((w.well, timepoint)), readings.get((w.well, first_timepoint))
        if r is None:
            continue
        viability = (r.live_fraction / ctrl_live if r.live_fraction is not None and ctrl_live else None)
        gr = None
        if gr_possible and r.viable_cells is not None and r0 is not None and r0.viable_cells:
            # no viable cell left: log2(0) = -inf, GR's floor of -1 (every cell killed)
            gr = (2.0 ** (math.log2(r.viable_cells / r0.viable_cells) / doublings) - 1.0
                  if r.viable_cells > 0 else -1.0)
        bounds = ([r.interval[0] / ctrl_live, r.interval[1] / ctrl_live] if r.interval is not None and ctrl_live
                  else None)
        points.append({"well": w.well, "concentration": w.concentration, "viability": viability, "gr": gr,
                       "complete": r.complete, "viability_interval": bounds})
    controls_info = {"wells": len(ctrl[timepoint]), "live_fraction": ctrl_live, "viable_cells": ctrl_x,
                     "doublings": doublings}
    if not gr_possible:
        controls_info["gr_reason"] = ("no viable-cell counts (GR needs segmentation)" if doublings is None
                                      else "first timepoint: no growth yet" if timepoint == first_timepoint
                                      else f"controls grew {doublings:.2f} doublings (< {MIN_CONTROL_DOUBLINGS})")
    return points, controls_info


def dose_response(plate_map: PlateMap, compound: str, readings: Mapping[tuple[str, int], WellReading],
                  timepoint: int, first_timepoint: int = 0) -> dict:
    """The body of a `dose` message: points, the viability fit and the GR fit of one compound."""
    points, controls = dose_points(plate_map, compound, readings, timepoint, first_timepoint)
    via = [(p["concentration"], p["viability"]) for p in points if p["viability"] is not None]
    grs = [(p["concentration"], p["gr"]) for p in points if p["gr"] is not None]
    viability_fit = fit_viability(*zip(*via)) if via else _failed("no viability values", 0, "ic50")
    gr_fit = fit_gr(*zip(*grs)) if grs else _failed(controls.get("gr_reason", "no GR values"), 0, "gr50")
    return plain({"compound": compound, "unit": plate_map.unit(compound), "points": points,
                  "controls": controls, "complete": bool(points) and all(p["complete"] for p in points),
                  "viability_fit": viability_fit, "gr_fit": gr_fit})


def plain(value):
    """numpy scalars -> Python numbers, recursively, so the result is JSON as it stands."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def reading_from_message(message: dict) -> WellReading:
    """A well message (or a journal-derived dict of the same shape) -> WellReading."""
    calls = message.get("cell_counts") or {}
    calibrated = message.get("live_fraction_estimate")
    interval = message.get("live_fraction_interval")
    return WellReading(calibrated if calibrated is not None else message.get("live_fraction"), calls.get("live"),
                       bool(message.get("complete", True)), tuple(interval) if interval else None)
