"""Instance-segmentation scores in plain numpy/scipy (no torch).

Conventions (the DSB 2018 / StarDist / Cellpose ones):
- label images: integer arrays, 0 = background, any positive id = one object (ids need not be
  sequential);
- a predicted object and a ground-truth object match one-to-one: among the pairs with
  IoU >= threshold, the Hungarian assignment (scipy's linear_sum_assignment) that matches the most
  pairs, ties broken by the larger summed IoU (as StarDist's `matching`); each matched pair is a
  true positive, unmatched predictions are false positives, unmatched ground truth false negatives;
- precision = TP/(TP+FP), recall = TP/(TP+FN), f1 = 2TP/(2TP+FP+FN), and "ap" (the "average
  precision" of those papers) = TP/(TP+FP+FN). A ratio whose denominator is 0 is 1.0 when the image
  has neither ground truth nor predictions (nothing to find, nothing wrongly found) and 0.0
  otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# Joint histograms up to this many (gt x pred) bins are dense bincounts; larger ones go sparse.
_DENSE_JOINT_MAX = 1 << 22


def _compress(labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, index): the sorted non-zero ids, and the image with each id replaced by 1..n (0 stays 0)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name}: label image must have an integer dtype, got {labels.dtype}")
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0:
        raise ValueError(f"{name}: label ids must be >= 0 (0 = background), got {lo}")
    if hi < (1 << 24):
        present = np.bincount(flat, minlength=hi + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(hi + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[flat]
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), inverse.astype(np.int64)
    return uniq.astype(np.int64), inverse.astype(np.int64) + 1


def _overlaps(gt: np.ndarray, pred: np.ndarray):
    """Sparse overlap of two label images.

    Returns (gt_ids, pred_ids, gt_area, pred_area, rows, cols, inter): areas indexed 0..n-1 in the
    order of the sorted ids, and the intersecting pairs (row into gt_ids, col into pred_ids, pixels).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    g_ids, g = _compress(gt, "gt")
    p_ids, p = _compress(pred, "pred")
    ng, npr = g_ids.size, p_ids.size
    g_area = np.bincount(g, minlength=ng + 1)[1:]
    p_area = np.bincount(p, minlength=npr + 1)[1:]
    if ng == 0 or npr == 0:
        empty = np.zeros(0, np.int64)
        return g_ids, p_ids, g_area, p_area, empty, empty, empty
    if (ng + 1) * (npr + 1) <= _DENSE_JOINT_MAX:
        joint = np.bincount(g * (npr + 1) + p, minlength=(ng + 1) * (npr + 1)).reshape(ng + 1, npr + 1)
        joint = joint[1:, 1:]
        rows, cols = np.nonzero(joint)
        inter = joint[rows, cols]
    else:
        both = (g > 0) & (p > 0)
        codes, inter = np.unique((g[both] - 1) * npr + (p[both] - 1), return_counts=True)
        rows, cols = np.divmod(codes, npr)
    return g_ids, p_ids, g_area, p_area, rows, cols, inter


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object (rows) with every predicted object (columns).

    Rows and columns follow the sorted non-zero ids of `gt` and `pred`. Computed from one joint
    histogram of label pairs (np.bincount), so it costs one pass over the pixels whatever the
    number of objects; pairs that do not touch are 0.
    """
    g_ids, p_ids, g_area, p_area, rows, cols, inter = _overlaps(gt, pred)
    iou = np.zeros((g_ids.size, p_ids.size), np.float64)
    iou[rows, cols] = inter / (g_area[rows] + p_area[cols] - inter)
    return iou


def _ratio(num: int, den: int, empty: bool) -> float:
    if den == 0:
        return 1.0 if empty else 0.0
    return num / den


def _counts_to_scores(tp: int, fp: int, fn: int, empty: bool) -> dict:
    return {
        "tp": int(tp), "fp": int(fp), "fn": int(fn),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "ap": _ratio(tp, tp + fp + fn, empty),
    }


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(t) for t in thresholds)
    if not out:
        raise ValueError("thresholds: give at least one IoU threshold")
    for t in out:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"thresholds: IoU threshold must be in (0, 1], got {t}")
    return out


def match_scores(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5, 0.75)) -> dict:
    """Scores of one predicted label image against its ground truth.

    Returns {"n_gt", "n_pred", "count_error" (n_pred - n_gt), "iou": {threshold: {"tp", "fp", "fn",
    "precision", "recall", "f1", "ap"}}} with the thresholds as float keys (json.dumps writes them
    as strings).
    """
    thresholds = _check_thresholds(thresholds)
    g_ids, p_ids, g_area, p_area, rows, cols, inter = _overlaps(gt, pred)
    n_gt, n_pred = int(g_ids.size), int(p_ids.size)
    iou = inter / (g_area[rows] + p_area[cols] - inter) if rows.size else np.zeros(0)
    empty = n_gt == 0 and n_pred == 0
    out: dict = {"n_gt": n_gt, "n_pred": n_pred, "count_error": n_pred - n_gt, "iou": {}}
    for t in thresholds:
        keep = iou >= t
        tp = _max_matching(rows[keep], cols[keep], iou[keep])
        out["iou"][t] = _counts_to_scores(tp, n_pred - tp, n_gt - tp, empty)
    return out


def _max_matching(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> int:
    """Number of pairs in the best one-to-one matching of the candidate pairs (IoU >= threshold).

    As StarDist's `matching`: the Hungarian assignment maximises the number of matched pairs first
    and, among those, the summed IoU (cost = -(1 + IoU / (2 n))). Only objects with at least one
    candidate enter the (small, dense) problem; when no object has two candidates (always so for
    thresholds above 0.5) every candidate pair is a match.
    """
    if rows.size == 0:
        return 0
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    if r_ids.size == rows.size and c_ids.size == cols.size:
        return int(rows.size)
    n = min(r_ids.size, c_ids.size)
    cost = np.zeros((r_ids.size, c_ids.size))
    cost[r, c] = -(1.0 + weights / (2.0 * n))
    ri, ci = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[ri, ci] < 0))


def aggregate_scores(per_image: Sequence[dict]) -> dict:
    """Micro-average over images: TP/FP/FN summed per threshold, ratios from the sums.

    Also: n_images, n_gt and n_pred summed, mean_abs_count_error (mean over images of
    |n_pred - n_gt|), mean_count_error (signed: > 0 = over-counting), and mean_rel_count_error
    (mean over images with n_gt > 0 of |n_pred - n_gt| / n_gt).
    """
    per_image = list(per_image)
    if not per_image:
        raise ValueError("aggregate_scores: no images")
    thresholds = list(per_image[0]["iou"])
    for s in per_image[1:]:
        if list(s["iou"]) != thresholds:
            raise ValueError("aggregate_scores: images scored at different IoU thresholds")
    n_gt = sum(s["n_gt"] for s in per_image)
    n_pred = sum(s["n_pred"] for s in per_image)
    errors = np.array([s["count_error"] for s in per_image], np.float64)
    rel = [abs(s["count_error"]) / s["n_gt"] for s in per_image if s["n_gt"] > 0]
    out: dict = {
        "n_images": len(per_image), "n_gt": n_gt, "n_pred": n_pred,
        "mean_abs_count_error": float(np.abs(errors).mean()),
        "mean_count_error": float(errors.mean()),
        "mean_rel_count_error": float(np.mean(rel)) if rel else float("nan"),
        "iou": {},
    }
    for t in thresholds:
        tp = sum(s["iou"][t]["tp"] for s in per_image)
        fp = sum(s["iou"][t]["fp"] for s in per_image)
        fn = sum(s["iou"][t]["fn"] for s in per_image)
        out["iou"][t] = _counts_to_scores(tp, fp, fn, n_gt == 0 and n_pred == 0)
    return out
