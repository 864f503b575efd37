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
