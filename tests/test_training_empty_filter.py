"""Empty-patch filters: the seed study's ResNet-18 + SVM and the daemon's tile-std filter."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.training.empty_filter import (compare_empty_filters, f1_report, supervised_std_threshold,
                                             unsupervised_std_threshold)

pytestmark = pytest.mark.unit


def tiles_with_truth(n=360, size=24, seed=0):
    """Normalised tiles: empty ones are unit noise, occupied ones hold a bright disc."""
    rng = np.random.default_rng(seed)
    empty = rng.random(n) < 0.4
    x = rng.normal(0, 1, (n, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in np.nonzero(~empty)[0]:
        cy, cx = rng.uniform(4, size - 4, 2)
        x[i] += 4 * (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 6) ** 2)
    return x, empty


def test_f1_report_counts():
    truth = np.array([1, 1, 0, 0, 1], bool)
    pred = np.array([1, 0, 0, 1, 1], bool)
    r = f1_report(truth, pred)
    assert r["precision"] == r["recall"] == r["f1"] == round(2 / 3, 4) and r["accuracy"] == 0.6


def test_supervised_std_threshold_separates_noise_from_cells():
    x, empty = tiles_with_truth()
    stds = x.reshape(len(x), -1).std(axis=1)
    t = supervised_std_threshold(stds, empty)
    assert f1_report(empty, stds < t)["f1"] > 0.98


@pytest.mark.slow  # builds a ResNet-18 and an SVM: ~5 s idle, 20 s on a busy 2-core machine
def test_comparison_scores_both_methods_on_held_out_tiles():
    x, empty = tiles_with_truth(200, 16)
    r = compare_empty_filters(x, empty, n_train=120, seed=0, pretrained=None)
    assert r["n_train"] == 120 and r["n_test"] == 80
    assert r["std_supervised"]["f1"] > 0.95
    assert r["resnet18_svm"]["f1"] > 0.7 and r["resnet18_svm"]["features"] == "random"
    assert r["resnet18_svm"]["ms_per_1000_tiles"] > r["std_unsupervised"]["ms_per_1000_tiles"]


def test_unsupervised_threshold_finds_the_empty_mode():
    rng = np.random.default_rng(0)
    empty = np.exp(rng.normal(np.log(0.64), 0.03, 400))   # background tiles: a tight low mode
    cells = np.exp(rng.normal(np.log(0.9), 0.18, 800))     # tiles holding cells
    t = unsupervised_std_threshold(np.concatenate([empty, cells]))
    assert (empty < t).mean() > 0.99 and (cells < t).mean() < 0.2


def test_unsupervised_threshold_drops_almost_nothing_without_an_empty_mode():
    """Large tiles that nearly all hold cells: no distinct empty mode, so few tiles may be dropped."""
    rng = np.random.default_rng(1)
    stds = np.concatenate([np.exp(rng.normal(np.log(0.86), 0.06, 300)), np.exp(rng.normal(np.log(0.99), 0.08, 350))])
    t = unsupervised_std_threshold(stds)
    assert (stds < t).mean() < 0.05
