"""From out-of-experiment scores to a calibration: figures with CIs, the per-well estimator, the
conformal half-widths and a verdict. Pure numpy; `calibrate.py` runs the training around it.

Inputs are the leave-one-experiment-out P(dead) of every tile (cell), its stain label and its
experiment. The interval maths (estimators, the conformal quantile) is the daemon's own
(core/intervals.py), so what is measured here is what the daemon serves.

Verdict rules (printed in the report):
1. "per-cell calls usable": the mean AUC within an experiment is >= 0.80, the lower end of its 95% CI
   >= 0.70, and the pooled AUC >= 0.80 (a single tile's or cell's call means something on a plate
   the model never saw).
2. else "per-well fractions only": the chosen estimator beats the no-model reference (each held-out
   well predicted by the mean stained fraction of the others, no image looked at) both in mean
   absolute error and in the width of its honest interval: the conformal half-width at the default
   level is bounded and narrower than the same half-width computed from the reference's errors.
3. else "not usable on this assay".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wellwatch.core.intervals import ESTIMATORS, VERDICTS, Calibration, conformal_half_width, dead_fraction

from .scores import roc_auc

LEVELS = (0.8, 0.9)
DEFAULT_LEVEL = 0.9
CALLS_WITHIN_AUC, CALLS_WITHIN_LOW, CALLS_POOLED_AUC = 0.80, 0.70, 0.80
RULES = (
    f"per-cell calls usable: mean within-experiment AUC >= {CALLS_WITHIN_AUC:.2f}, the lower end of its 95% CI "
    f">= {CALLS_WITHIN_LOW:.2f}, and pooled AUC >= {CALLS_POOLED_AUC:.2f}",
    "per-well fractions only: otherwise, when the chosen estimator beats the no-model reference (each held-out "
    "well predicted by the other wells' mean stained fraction, no image looked at) in leave-experiment-out mean "
    f"absolute error and in the {DEFAULT_LEVEL:.0%} conformal half-width (bounded, and narrower than the same "
    "half-width of the reference's errors)",
    "not usable on this assay: otherwise",
)


def rates(y: np.ndarray, calls: np.ndarray) -> tuple[float, float]:
    """(tpr, fpr) of dead calls against stain labels (1.0, 0.0 where a class is absent)."""
    tpr = float(calls[y].mean()) if y.any() else 1.0
    fpr = float(calls[~y].mean()) if (~y).any() else 0.0
    return tpr, fpr


def per_well_estimates(y: np.ndarray, score: np.ndarray, groups: np.ndarray, threshold: float) -> dict[str, Any]:
    """Each experiment's stained dead fraction and the three estimators' values; `adjusted` uses
    tpr/fpr from the other experiments' out-of-experiment calls, never its own labels."""
    y, calls, groups = np.asarray(y, bool), np.asarray(score) >= threshold, np.asarray(groups).astype(str)
    wells: dict[str, dict[str, Any]] = {}
    names = sorted(set(groups.tolist()))
    stained = {g: float(y[groups == g].mean()) for g in names}
    total = sum(stained.values())
    for g in names:
        m = groups == g
        tpr, fpr = rates(y[~m], calls[~m])
        n, k = int(m.sum()), int(calls[m].sum())
        est = {"classify_count": dead_fraction("classify_count", n, k, None),
               "mean_probability": dead_fraction("mean_probability", n, k, float(np.sum(score[m]))),
               "adjusted": dead_fraction("adjusted", n, k, None, tpr, fpr) if tpr > fpr else None}
        wells[g] = {"n": n, "stain": stained[g], "estimates": est,
                    # the no-model reference: the other experiments' mean stained fraction
                    "no_model": (total - stained[g]) / (len(names) - 1) if len(names) > 1 else None,
                    "auc": roc_auc(y[m], score[m]) if 0 < y[m].sum() < n else None}
    return wells


def choose_estimator(wells: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float | None]]:
    """The estimator with the smallest leave-experiment-out mean absolute error, and every one's MAE."""
    mae: dict[str, float | None] = {}
    for e in ESTIMATORS:
        errs = [abs(w["estimates"][e] - w["stain"]) for w in wells.values() if w["estimates"][e] is not None]
        mae[e] = float(np.mean(errs)) if len(errs) == len(wells) else None
    best = min((e for e in ESTIMATORS if mae[e] is not None), key=lambda e: mae[e])
    return best, mae


def group_bootstrap_aucs(y: np.ndarray, score: np.ndarray, groups: np.ndarray, n_boot: int = 500,
                         seed: int = 0, within: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Pooled AUC, mean within-experiment AUC and the fraction-only reference (each tile scored by
    its experiment's stained dead fraction), each with a 95% CI resampling whole experiments."""
    y, groups = np.asarray(y, bool), np.asarray(groups).astype(str)
    names = sorted(set(groups.tolist()))
    idx = [np.flatnonzero(groups == g) for g in names]
    frac = np.array([y[i].mean() for i in idx])
    if within is None:  # per-experiment AUCs (per_well_estimates has them: not computed twice)
        within = {g: roc_auc(y[i], score[i]) if 0 < y[i].sum() < len(i) else None for g, i in zip(names, idx)}
    within = np.array([np.nan if within[g] is None else within[g] for g in names], float)

    def figures(draw: np.ndarray) -> tuple[float, float, float]:
        sel = np.concatenate([idx[k] for k in draw])
        ref = np.concatenate([np.full(len(idx[k]), frac[k]) for k in draw])
        w = within[draw]
        return (roc_auc(y[sel], score[sel]), roc_auc(y[sel], ref),
                float(np.nanmean(w)) if np.isfinite(w).any() else np.nan)

    point = figures(np.arange(len(names)))
    rng = np.random.default_rng(seed)
    draws = np.array([figures(rng.integers(0, len(names), len(names))) for _ in range(n_boot)])

    def ci(col: int) -> list[float] | None:
        v = draws[:, col][np.isfinite(draws[:, col])]
        return [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)] if len(v) else None

    out = {}
    for col, key in enumerate(("pooled_auc", "fraction_only_auc", "within_experiment_auc")):
        out[key] = {"value": None if not np.isfinite(point[col]) else round(float(point[col]), 4), "ci95": ci(col)}
    out["bootstrap"] = f"{n_boot} resamples of {len(names)} experiments"
    return out


def interval_checks(errors: np.ndarray, levels=LEVELS) -> dict[str, Any]:
    """Per level: the half-width, coverage of the calibration wells themselves (>= level by
    construction) and leave-one-well-out coverage (each well judged by the others' half-width)."""
    errors = np.abs(np.asarray(errors, float))
    out = {}
    for level in levels:
        q = conformal_half_width(errors, level)
        loo = []
        for i in range(len(errors)):
            qi = conformal_half_width(np.delete(errors, i), level)
            loo.append(qi is None or errors[i] <= qi)
        out[f"{level:g}"] = {"half_width": q, "in_sample_coverage": None if q is None else float(np.mean(errors <= q)),
                             "leave_one_well_out_coverage": float(np.mean(loo)) if loo else None,
                             "leave_one_well_out_unbounded": int(sum(
                                 conformal_half_width(np.delete(errors, i), level) is None
                                 for i in range(len(errors))))}
    return out


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    wells: dict[str, dict[str, Any]]
    aucs: dict[str, Any]
    mae: dict[str, float | None]
    no_model_mae: float
    no_model_half_width: float | None
    intervals: dict[str, Any]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "wells": self.wells, "aucs": self.aucs,
                "estimator_mae": self.mae, "no_model_mae": self.no_model_mae,
                "no_model_half_width": self.no_model_half_width, "intervals": self.intervals,
                "verdict_reasons": self.reasons, "rules": list(RULES)}


def verdict(aucs: dict[str, Any], best_mae: float, no_model_mae: float, half_width: float | None,
            no_model_half_width: float | None) -> tuple[str, list[str]]:
    w, p = aucs["within_experiment_auc"], aucs["pooled_auc"]
    wv, wl, pv = w["value"], (w["ci95"] or [None])[0], p["value"]
    calls = wv is not None and wl is not None and pv is not None and \
        wv >= CALLS_WITHIN_AUC and wl >= CALLS_WITHIN_LOW and pv >= CALLS_POOLED_AUC
    reasons = [f"within-experiment AUC {wv} (95% CI lower end {wl}), pooled AUC {pv}: per-cell calls "
               f"{'meet' if calls else 'do not meet'} rule 1"]
    if calls:
        return VERDICTS[0], reasons
    narrower = half_width is not None and (no_model_half_width is None or half_width < no_model_half_width)
    fractions = best_mae < no_model_mae and narrower

    def hw(v: float | None) -> str:
        return "unbounded" if v is None else f"{v:.3f}"

    reasons.append(f"per-well estimator MAE {best_mae:.3f} vs no-model reference {no_model_mae:.3f}; "
                   f"{DEFAULT_LEVEL:.0%} half-width {hw(half_width)} vs the reference's {hw(no_model_half_width)}: "
                   f"{'meets' if fractions else 'does not meet'} rule 2")
    return (VERDICTS[1] if fractions else VERDICTS[2]), reasons


def calibrate_scores(y: np.ndarray, score: np.ndarray, groups: np.ndarray, threshold: float = 0.5,
                     unit: str = "tile", n_boot: int = 500) -> CalibrationResult:
    """The whole calibration from out-of-experiment scores (see the module docstring)."""
    y, score, groups = np.asarray(y, bool), np.asarray(score, float), np.asarray(groups).astype(str)
    wells = per_well_estimates(y, score, groups, threshold)
    best, mae = choose_estimator(wells)
    errors = np.array([w["estimates"][best] - w["stain"] for w in wells.values()])
    intervals = interval_checks(errors)
    no_model_errors = [abs(w["no_model"] - w["stain"]) for w in wells.values() if w["no_model"] is not None]
    no_model = float(np.mean(no_model_errors)) if no_model_errors else float("inf")
    no_model_half = conformal_half_width(np.array(no_model_errors), DEFAULT_LEVEL) if no_model_errors else None
    aucs = group_bootstrap_aucs(y, score, groups, n_boot, within={g: w["auc"] for g, w in wells.items()})
    half = intervals[f"{DEFAULT_LEVEL:g}"]["half_width"]
    v, reasons = verdict(aucs, mae[best], no_model, half, no_model_half)
    tpr, fpr = rates(y, score >= threshold)
    cal = Calibration(estimator=best, half_width={k: v_["half_width"] for k, v_ in intervals.items()}, verdict=v,
                      unit=unit, tpr=tpr, fpr=fpr, wells=len(wells),
                      figures={"aucs": aucs, "estimator_mae": mae, "no_model_mae": no_model,
                               "no_model_half_width": no_model_half,
                               "intervals": intervals, "threshold": threshold})
    return CalibrationResult(cal, wells, aucs, mae, no_model, no_model_half, intervals, reasons)
