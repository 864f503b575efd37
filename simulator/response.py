"""Cell death over time: a small spontaneous rate plus a Hill-curve drug response.

Each cell draws one uniform number u once; it is dead at timepoint t when u < F(t), the
cumulative dead fraction of its well. F rises with t, so a dead cell stays dead, and the
per-well dead fractions follow the curve without any per-timepoint randomness.
"""

from __future__ import annotations

import numpy as np

BASELINE_DEAD = 0.05      # dead at t=0 without drug
SPONTANEOUS_RISE = 0.03   # extra dead by the last timepoint without drug
EC50 = 1.0                # same unit as the doses (think uM)
HILL = 1.5
EMAX = 0.9                # fraction of the surviving cells the top dose kills by the last timepoint
DOSE_RANGE = (0.01, 100.0)


def dose_series(n: int) -> list[float]:
    """n log-spaced doses over DOSE_RANGE, lowest first."""
    return np.geomspace(*DOSE_RANGE, n).tolist() if n > 1 else [DOSE_RANGE[0]]


def hill(dose: float) -> float:
    """Fraction of cells the drug kills at full exposure."""
    return EMAX * dose ** HILL / (dose ** HILL + EC50 ** HILL) if dose > 0 else 0.0


def dead_fraction(timepoints: int, dose: float) -> np.ndarray:
    """F(t) for t = 0..timepoints-1: the expected dead fraction, non-decreasing in t.

    Exposure grows linearly from 0 at the first timepoint (drug added as imaging starts) to
    full at the last; a single-timepoint run shows the full response.
    """
    t = np.arange(timepoints, dtype=np.float64)
    progress = t / (timepoints - 1) if timepoints > 1 else np.ones(1)
    spontaneous = BASELINE_DEAD + SPONTANEOUS_RISE * progress
    return 1.0 - (1.0 - spontaneous) * (1.0 - hill(dose) * progress)


def death_timepoints(u: np.ndarray, timepoints: int, dose: float) -> np.ndarray:
    """First timepoint at which each cell is dead; `timepoints` means it survives the run."""
    return np.searchsorted(dead_fraction(timepoints, dose), u, side="right")


# --- the truth a dose-response fit should recover -------------------------------------------
# Viability (live fraction / the controls') at timepoint t is exactly a 4-parameter log-logistic
# curve in the dose: top 1, bottom 1 - EMAX * progress(t), midpoint EC50, Hill slope HILL.
# With growth, expected live cells x(c, t) = x0 * 2**(r t) * (1 - F(c, t)) / (1 - F(c, 0)), so
# GR (Hafner et al. 2016) has a closed form, and so has GR50.

def progress(t: int, timepoints: int) -> float:
    return t / (timepoints - 1) if timepoints > 1 else 1.0


def control_log2_growth(t: int, timepoints: int, doublings: float) -> float:
    """log2(x_ctrl(t) / x_ctrl(0)) of the expected live cells of an untreated well."""
    f = dead_fraction(timepoints, 0.0)
    return doublings * progress(t, timepoints) + float(np.log2((1 - f[t]) / (1 - f[0])))


def gr_value(dose: float, t: int, timepoints: int, doublings: float) -> float | None:
    a = control_log2_growth(t, timepoints, doublings)
    if a <= 0:
        return None
    return 2.0 ** ((a + np.log2(1.0 - hill(dose) * progress(t, timepoints))) / a) - 1.0


def gr50(t: int, timepoints: int, doublings: float) -> float | None:
    """Dose where GR = 0.5 at timepoint t; None if GR is undefined or never falls that far."""
    a, p = control_log2_growth(t, timepoints, doublings), progress(t, timepoints)
    if a <= 0 or p == 0:
        return None
    kill = (1.0 - 2.0 ** (a * (np.log2(1.5) - 1.0))) / p  # hill(dose) that gives GR 0.5
    if not 0 < kill < EMAX:
        return None
    return float(EC50 * (kill / (EMAX - kill)) ** (1.0 / HILL))


def dose_truth(timepoints: int, doublings: float, compound: str, unit: str) -> dict:
    """The true response parameters of a 'dose_series', per timepoint."""
    per_t = []
    for t in range(timepoints):
        p = progress(t, timepoints)
        gr_inf = gr_value(1e12, t, timepoints, doublings) if doublings > 0 else None
        per_t.append({"timepoint": t, "ic50": EC50 if p > 0 else None, "viability_top": 1.0,
                      "viability_bottom": 1.0 - EMAX * p, "hill": HILL,
                      "gr50": gr50(t, timepoints, doublings) if doublings > 0 else None, "gr_inf": gr_inf})
    return {"compound": compound, "unit": unit, "ec50": EC50, "hill": HILL, "emax": EMAX,
            "baseline_dead": BASELINE_DEAD, "spontaneous_rise": SPONTANEOUS_RISE,
            "growth_doublings": doublings, "timepoints": per_t,
            "ic50_meaning": "relative IC50: the midpoint of viability (live fraction / controls')"}
