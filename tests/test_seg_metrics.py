"""Instance-segmentation scores on synthetic label images whose right answer is known by construction."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from wellwatch.training import seg_metrics
from wellwatch.training.seg_metrics import aggregate_scores, iou_matrix, match_scores


def squares(shape=(64, 96), size=10, n=6, ids=None):
    """A label image of n separate size x size squares on a grid; returns (labels, list of ids)."""
    labels = np.zeros(shape, np.int32)
    ids = list(ids) if ids is not None else list(range(1, n + 1))
    per_row = shape[1] // (2 * size)
    for k, i in enumerate(ids[:n]):
        y, x = (k // per_row) * 2 * size + 2, (k % per_row) * 2 * size + 2
        labels[y:y + size, x:x + size] = i
    return labels, ids[:n]


@pytest.mark.unit
def test_perfect_prediction_scores_one_whatever_the_ids():
    gt, ids = squares()
    renumbered = np.where(gt > 0, gt * 1000 + 7, 0)  # other, non-sequential ids
    for pred in (gt.copy(), renumbered, renumbered.astype(np.int64)):
        s = match_scores(gt, pred)
        assert s["n_gt"] == s["n_pred"] == len(ids) and s["count_error"] == 0
        for t in (0.5, 0.75):
            assert s["iou"][t] == {"tp": 6, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
                                   "f1": 1.0, "ap": 1.0}


@pytest.mark.unit
def test_one_object_removed_is_one_false_negative():
    gt, _ = squares()
    pred = gt.copy()
    pred[pred == 3] = 0
    s = match_scores(gt, pred)
    assert s["count_error"] == -1
    assert {k: s["iou"][0.5][k] for k in ("tp", "fp", "fn")} == {"tp": 5, "fp": 0, "fn": 1}
    assert s["iou"][0.5]["precision"] == 1.0 and s["iou"][0.5]["recall"] == pytest.approx(5 / 6)
    assert s["iou"][0.5]["ap"] == pytest.approx(5 / 6) and s["iou"][0.5]["f1"] == pytest.approx(10 / 11)


@pytest.mark.unit
def test_one_object_split_70_30():
    gt, _ = squares(size=10)
    pred = gt.copy()
    ys, xs = np.nonzero(gt == 2)
    x0 = xs.min()
    pred[(gt == 2) & (np.arange(gt.shape[1])[None, :] >= x0 + 7)] = 99  # 10x3 of the 10x10 square
    # the 10x7 part keeps id 2: IoU 0.7 (a match at 0.5, not at 0.75); the 10x3 part: IoU 0.3
    iou = iou_matrix(gt, pred)
    assert iou[1, 1] == pytest.approx(0.7) and iou[1, 6] == pytest.approx(0.3)
    s = match_scores(gt, pred)
    assert s["n_pred"] == 7 and s["count_error"] == 1
    assert {k: s["iou"][0.5][k] for k in ("tp", "fp", "fn")} == {"tp": 6, "fp": 1, "fn": 0}
    assert {k: s["iou"][0.75][k] for k in ("tp", "fp", "fn")} == {"tp": 5, "fp": 2, "fn": 1}
    assert s["iou"][0.75]["ap"] == pytest.approx(5 / 8)


@pytest.mark.unit
def test_two_objects_merged_match_once_at_exactly_half():
    gt = np.zeros((20, 40), np.uint8)
    gt[5:15, 5:15], gt[5:15, 15:25] = 1, 2  # two touching 10x10 squares
    pred = np.zeros_like(gt)
    pred[5:15, 5:25] = 1  # one 10x20 region: IoU 100/200 = 0.5 with each
    assert np.allclose(iou_matrix(gt, pred), [[0.5], [0.5]])
    s = match_scores(gt, pred)
    assert {k: s["iou"][0.5][k] for k in ("tp", "fp", "fn")} == {"tp": 1, "fp": 0, "fn": 1}  # IoU >= 0.5 counts
    assert {k: s["iou"][0.75][k] for k in ("tp", "fp", "fn")} == {"tp": 0, "fp": 1, "fn": 2}


@pytest.mark.unit
def test_iou_of_two_overlapping_squares_is_exact():
    gt = np.zeros((30, 30), np.uint16)
    pred = np.zeros((30, 30), np.int32)
    gt[0:10, 0:10] = 5
    pred[5:15, 5:15] = 9
    assert iou_matrix(gt, pred) == pytest.approx(np.array([[25 / 175]]))  # 5x5 / (100 + 100 - 25)


@pytest.mark.unit
def test_iou_matrix_rows_and_columns_follow_sorted_ids():
    gt = np.zeros((10, 30), np.int32)
    gt[:, 0:10], gt[:, 10:20], gt[:, 20:30] = 30, 10, 20
    pred = np.zeros_like(gt)
    pred[:, 0:10], pred[:, 20:30] = 7, 3
    iou = iou_matrix(gt, pred)  # rows: ids 10, 20, 30; columns: ids 3, 7
    assert iou.shape == (3, 2)
    assert np.array_equal(iou, [[0, 0], [1, 0], [0, 1]])


@pytest.mark.unit
def test_sparse_path_equals_dense_path(monkeypatch):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 40, (50, 60)).astype(np.int32)
    pred = np.roll(gt, 1, axis=1) * 3 + (gt > 20)
    dense = iou_matrix(gt, pred)
    dense_scores = match_scores(gt, pred, (0.1, 0.5))
    monkeypatch.setattr(seg_metrics, "_DENSE_JOINT_MAX", 0)
    assert np.array_equal(iou_matrix(gt, pred), dense)
    assert match_scores(gt, pred, (0.1, 0.5)) == dense_scores
    big = np.where(pred > 0, pred + (1 << 30), 0).astype(np.int64)  # ids past the lookup-table path
    assert np.array_equal(iou_matrix(gt, big), dense)


@pytest.mark.unit
def test_matching_maximises_the_number_of_matches_like_stardist():
    # 1-D intervals: gt A=[0,10) B=[10,20); pred Q=[0,2) P=[2,14).
    # IoU(A,P) = 8/14, IoU(A,Q) = 2/10, IoU(B,P) = 4/18, IoU(B,Q) = 0. At threshold 0.15 the
    # largest summed IoU would take A-P alone (0.571 > 0.2 + 0.222); the most matches is A-Q + B-P.
    gt = np.zeros((1, 20), np.int32)
    gt[0, 0:10], gt[0, 10:20] = 1, 2
    pred = np.zeros_like(gt)
    pred[0, 0:2], pred[0, 2:14] = 1, 2
    s = match_scores(gt, pred, thresholds=(0.15, 0.5))
    assert {k: s["iou"][0.15][k] for k in ("tp", "fp", "fn")} == {"tp": 2, "fp": 0, "fn": 0}
    assert {k: s["iou"][0.5][k] for k in ("tp", "fp", "fn")} == {"tp": 1, "fp": 1, "fn": 1}


@pytest.mark.unit
def test_empty_images():
    empty = np.zeros((8, 8), np.uint8)
    one, _ = squares((8, 8), size=4, n=1)
    s = match_scores(empty, empty)
    assert s["n_gt"] == s["n_pred"] == 0 and s["iou"][0.5]["f1"] == 1.0 and s["iou"][0.5]["ap"] == 1.0
    s = match_scores(empty, one)
    assert s["iou"][0.5] == {"tp": 0, "fp": 1, "fn": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "ap": 0.0}
    s = match_scores(one, empty)
    assert s["iou"][0.5]["fn"] == 1 and s["iou"][0.5]["f1"] == 0.0 and s["count_error"] == -1


@pytest.mark.unit
def test_bad_inputs_are_refused():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="shapes differ"):
        match_scores(a, np.zeros((4, 5), np.int32))
    with pytest.raises(TypeError, match="integer"):
        iou_matrix(a.astype(np.float32), a)
    with pytest.raises(ValueError, match=">= 0"):
        iou_matrix(a, a - 1)
    with pytest.raises(ValueError, match="threshold"):
        match_scores(a, a, thresholds=(0.0,))


@pytest.mark.unit
def test_aggregate_sums_counts_over_images():
    gt, _ = squares()
    removed = gt.copy()
    removed[removed == 3] = 0
    extra = gt.copy()
    extra[50:60, 80:90] = 77  # one false positive
    per = [match_scores(gt, gt), match_scores(gt, removed), match_scores(gt, extra)]
    agg = aggregate_scores(per)
    s = agg["iou"][0.5]
    assert (s["tp"], s["fp"], s["fn"]) == (17, 1, 1)
    assert s["f1"] == pytest.approx(34 / 36) and s["ap"] == pytest.approx(17 / 19)
    assert agg["n_images"] == 3 and agg["n_gt"] == 18 and agg["n_pred"] == 18
    assert agg["mean_abs_count_error"] == pytest.approx(2 / 3)
    assert agg["mean_count_error"] == pytest.approx(0.0)
    assert agg["mean_rel_count_error"] == pytest.approx((0 + 1 / 6 + 1 / 6) / 3)
    json.dumps(agg)  # float threshold keys serialise
    with pytest.raises(ValueError):
        aggregate_scores([])


@pytest.mark.unit
def test_fast_on_a_megapixel_frame_with_a_hundred_objects():
    rng = np.random.default_rng(1)
    gt = np.zeros((1024, 1024), np.int32)
    for i in range(100):
        y, x = (i // 10) * 100 + 10, (i % 10) * 100 + 10
        gt[y:y + 60, x:x + 60] = i + 1
    pred = np.roll(gt, (int(rng.integers(1, 20)), 5), axis=(0, 1))
    match_scores(gt, pred)
    t0 = time.perf_counter()
    s = match_scores(gt, pred)
    assert time.perf_counter() - t0 < 1.0  # ~20 ms on one idle core
    assert s["n_gt"] == 100


@pytest.mark.integration
def test_no_torch_import():
    import subprocess

    code = ("import sys\nsys.modules['torch'] = None\n"
            "import wellwatch.training.seg_metrics\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
