"""Leave-one-experiment-out evaluation and per-group fractions, on data whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wellwatch.training.dataset import Dataset
from wellwatch.training.fractions import group_fractions
from wellwatch.training.classifier_loop import sampling_weights


def spot_dataset(n_per_group=60, groups=("A1", "A2", "A3"), seed=0) -> Dataset:
    """16 px patches; dead ones hold a bright spot. Each well has its own dead fraction."""
    rng = np.random.default_rng(seed)
    xs, ys, wells = [], [], []
    for k, g in enumerate(groups):
        dead = rng.random(n_per_group) < 0.2 + 0.3 * k
        x = rng.normal(0, 1, (n_per_group, 1, 16, 16)).astype(np.float32)
        x[dead, :, 6:10, 6:10] += 4.0
        xs.append(x)
        ys.append(dead.astype(np.int64))
        wells += [g] * n_per_group
    n = len(wells)
    wells = np.array(wells)
    return Dataset(np.concatenate(xs), np.concatenate(ys), np.array([f"p{i}" for i in range(n)]), wells,
                   wells, np.full(n, "plate"), ("live", "dead"), {})


@pytest.mark.unit
def test_group_fractions_compare_model_and_labels_per_group():
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.4, 0.3])
    groups = np.array(["a"] * 4 + ["b"] * 4)
    f = group_fractions(y, score, 0.5, groups)
    assert f["per_group"]["a"]["fraction_labels"] == 0.25 and f["per_group"]["a"]["fraction_model"] == 0.5
    assert f["per_group"]["b"]["fraction_labels"] == 0.75 and f["per_group"]["b"]["fraction_model"] == 0.5
    assert f["mae"] == pytest.approx(0.25)
    assert f["per_group"]["a"]["auc"] == pytest.approx(1.0)


@pytest.mark.unit
def test_sampling_weights_balance_classes_within_groups():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    groups = np.array(["a"] * 4 + ["b"] * 4)
    w = sampling_weights(y, 2, groups)
    # each (group, class) cell carries the same total weight
    for g in "ab":
        for c in (0, 1):
            assert w[(groups == g) & (y == c)].sum() == pytest.approx(1.0)
    plain = sampling_weights(y, 2)
    assert plain[y == 0].sum() == pytest.approx(plain[y == 1].sum())


@pytest.mark.integration
def test_leave_one_experiment_out_scores_every_patch_out_of_its_group(tmp_path):
    pytest.importorskip("torch")
    from wellwatch.training.loeo import run
    from wellwatch.training.classifier_loop import TrainConfig

    ds = spot_dataset()
    s = run(ds, tmp_path, TrainConfig(arch="tiny", epochs=3, batch_size=32), "well")
    assert s["groups"] == 3 and s["n"] == len(ds) and s["k"] == 3
    assert [f["group"] for f in s["folds"]] == ["plate/A1", "plate/A2", "plate/A3"]
    assert s["auc"] > 0.9  # the spot is easy: held-out wells are scored right
    assert set(s["ci95"]) >= {"auc_ci95", "balanced_accuracy_ci95"}
    assert s["auc_parts"]["pooled_auc"] == pytest.approx(s["auc"])
    assert s["auc_parts"]["within_group_auc_mean"] > 0.8  # the spot is visible inside each well
    pg = s["dead_fraction"]["per_group"]
    assert [round(v["fraction_labels"], 3) for v in pg.values()] == [
        round(float(ds.y[ds.well == w].mean()), 3) for w in ("A1", "A2", "A3")]
    saved = json.loads((tmp_path / "loeo.json").read_text())
    assert saved["auc"] == pytest.approx(s["auc"])
    assert (tmp_path / "dead_fraction.png").stat().st_size > 5000
    scores = np.load(tmp_path / "loeo_scores.npz")
    assert np.isfinite(scores["score"]).all() and len(scores["score"]) == len(ds)


@pytest.mark.unit
def test_pooled_auc_parts_separate_ranking_experiments_from_ranking_samples():
    from wellwatch.training.fractions import pooled_auc_parts

    rng = np.random.default_rng(1)
    groups = np.repeat(["a", "b", "c"], 400)
    y = rng.random(1200) < np.repeat([0.1, 0.5, 0.9], 400)
    # scores that know only the experiment: no information inside one
    blind = np.repeat([0.2, 0.5, 0.8], 400) + rng.normal(0, 0.01, 1200)
    p = pooled_auc_parts(y, blind, groups, group_fractions(y, blind, 0.5, groups))
    assert p["pooled_auc"] > 0.75 and p["group_fraction_auc"] > 0.75
    assert abs(p["pooled_auc"] - p["group_fraction_auc"]) < 0.03
    assert abs(p["within_group_auc_mean"] - 0.5) < 0.1 and p["groups_with_both_classes"] == 3
    # scores that rank cells inside each experiment and say nothing of its fraction
    sharp = y + rng.normal(0, 0.3, 1200)
    q = pooled_auc_parts(y, sharp, groups, group_fractions(y, sharp, 0.5, groups))
    assert q["within_group_auc_mean"] > 0.95 and q["pooled_auc"] > 0.95
    assert q["group_fraction_auc"] == pytest.approx(p["group_fraction_auc"])  # a property of the labels only


@pytest.mark.unit
def test_the_report_warns_when_a_pooled_auc_only_ranks_wells():
    from wellwatch.training.evaluate import ranks_wells_not_samples
    from wellwatch.training.fractions import pooled_auc_parts

    rng = np.random.default_rng(2)
    groups = np.repeat(["a", "b", "c"], 300)
    y = rng.random(900) < np.repeat([0.1, 0.5, 0.9], 300)
    blind = np.repeat([0.2, 0.5, 0.8], 300) + rng.normal(0, 0.01, 900)
    assert ranks_wells_not_samples(pooled_auc_parts(y, blind, groups, group_fractions(y, blind, 0.5, groups)))
    sharp = y + rng.normal(0, 0.3, 900)
    assert not ranks_wells_not_samples(pooled_auc_parts(y, sharp, groups, group_fractions(y, sharp, 0.5, groups)))
    assert not ranks_wells_not_samples(None)
