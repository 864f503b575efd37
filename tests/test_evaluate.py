"""`wellwatch evaluate`: metrics that can fail, the report, checkpoint and ONNX inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from wellwatch.training.dataset import load_dataset, save_dataset
from wellwatch.training.evaluate import bootstrap_ci, compute_metrics, evaluate
from wellwatch.training.training_run import train_run

from .test_training_data import blob_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on learnable blobs, and a fresh test set drawn from the same generator."""
    root = tmp_path_factory.mktemp("eval")
    save_dataset(blob_dataset(160, 16, 20, seed=0), root / "train")
    train_run(root / "train", root / "run", arch="tiny", epochs=3, batch_size=16, lr=3e-3, seed=0, progress=False)
    save_dataset(blob_dataset(400, 16, 40, seed=1), root / "test")
    return root


def test_metrics_on_a_known_confusion_matrix():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    score = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.4, 0.95])
    m = compute_metrics(y, score, 0.5, np.arange(8).astype(str), ("live", "dead"), "dead", n_boot=200)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["balanced_accuracy"] == 0.75 and m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["auc"] == pytest.approx(13 / 16)
    lo, hi = m["balanced_accuracy_ci95"]
    assert 0 <= lo < 0.75 < hi <= 1


def test_bootstrap_resamples_groups_so_correlated_patches_widen_the_ci():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600).astype(bool)
    pred = np.where(rng.random(600) < 0.8, y, ~y)
    score = pred.astype(float)
    per_patch = bootstrap_ci(y, score, pred, np.arange(600).astype(str), 500)["balanced_accuracy_ci95"]
    ten_groups = bootstrap_ci(y, score, pred, (np.arange(600) // 60).astype(str), 500)["balanced_accuracy_ci95"]
    assert per_patch[0] < 0.8 < per_patch[1]
    assert ten_groups[1] - ten_groups[0] >= 0.5 * (per_patch[1] - per_patch[0])


def test_evaluation_passes_a_real_model_and_fails_shuffled_labels(trained, tmp_path):
    good = evaluate(trained / "run", trained / "test", tmp_path / "good", n_boot=300, tsne_max=0, gradcam_n=2)
    assert good["auc"] > 0.95 and good["balanced_accuracy"] > 0.85
    assert good["patches"].startswith("all patches")  # a dataset the model was not trained on
    ds = load_dataset(trained / "test")
    ds.y = np.random.default_rng(0).permutation(ds.y)  # labels shuffled: no relation to the images
    save_dataset(ds, tmp_path / "shuffled")
    bad = evaluate(trained / "run", tmp_path / "shuffled", tmp_path / "bad", n_boot=300, tsne_max=0, gradcam_n=2)
    assert abs(bad["auc"] - 0.5) < 0.08
    assert abs(bad["balanced_accuracy"] - 0.5) < 0.08
    assert bad["auc_ci95"][0] < 0.5 + 0.02  # the CI does not claim skill


def test_report_files(trained, tmp_path):
    m = evaluate(trained / "run", trained / "test", tmp_path / "r", n_boot=200, tsne_max=150, gradcam_n=4)
    out = tmp_path / "r"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("auc", "balanced_accuracy", "balanced_accuracy_ci95", "n", "positive_class", "confusion_matrix"):
        assert key in saved
    assert saved["positive_class"] == "dead" and saved["n"] == 400 == sum(map(sum, saved["confusion_matrix"]))
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert list(rows[0]) == ["id", "label", "score"] and len(rows) == 400
    assert {r["label"] for r in rows} == {"0", "1"} and all(0 <= float(r["score"]) <= 1 for r in rows)
    for fig in ("roc.png", "confusion.png", "fluorescence.png", "tsne.png", "gradcam.png"):
        assert (out / fig).stat().st_size > 5000, fig
    report = (out / "report.md").read_text()
    assert "![ROC curve](roc.png)" in report and "Pearson r" in report and f"{m['auc']:.4f}" in report


def test_several_wells_get_fractions_and_the_within_well_auc(trained, tmp_path):
    ds = load_dataset(trained / "test")
    ds.well = np.array([f"A{int(s[3:]) % 4 + 1}" for s in ds.source])  # whole images per well
    save_dataset(ds, tmp_path / "wells")
    m = evaluate(trained / "run", tmp_path / "wells", tmp_path / "w", n_boot=100, tsne_max=0, gradcam_n=0)
    assert len(m["per_well"]["per_group"]) == 4
    parts = m["auc_parts"]
    assert parts["pooled_auc"] == pytest.approx(m["auc"]) and parts["within_group_auc_mean"] > 0.9
    assert "mean AUC within a well" in (tmp_path / "w" / "report.md").read_text()


def test_own_dataset_is_evaluated_on_its_test_split_only(trained, tmp_path):
    m = evaluate(trained / "run", trained / "train", tmp_path / "own", n_boot=100, tsne_max=0, gradcam_n=2)
    split = json.loads((trained / "run" / "split.json").read_text())
    assert m["patches"].startswith("the run's held-out test split")
    ids = [r["id"] for r in csv.DictReader(open(tmp_path / "own" / "scores.csv"))]
    assert ids and all(i.split("#")[0] in split["test_groups"] for i in ids)


def test_onnx_model_gives_the_same_scores_as_its_checkpoint(trained, tmp_path):
    from wellwatch.export.onnx_export import export_classifier
    from wellwatch.training.checkpoint import load_checkpoint

    model, _, contract, _ = load_checkpoint(trained / "run" / "best.pt")
    export_classifier(model, contract, tmp_path / "m.onnx")
    a = evaluate(trained / "run", trained / "test", tmp_path / "pt", n_boot=100, tsne_max=0, gradcam_n=2)
    b = evaluate(tmp_path / "m.onnx", trained / "test", tmp_path / "onnx", n_boot=100)
    assert b["model_kind"] == "onnx" and b["auc"] == pytest.approx(a["auc"], abs=1e-3)
    sa = np.array([float(r["score"]) for r in csv.DictReader(open(tmp_path / "pt" / "scores.csv"))])
    sb = np.array([float(r["score"]) for r in csv.DictReader(open(tmp_path / "onnx" / "scores.csv"))])
    np.testing.assert_allclose(sa, sb, atol=1e-4)
    assert "need the PyTorch checkpoint" in (tmp_path / "onnx" / "report.md").read_text()
    assert not (tmp_path / "onnx" / "tsne.png").exists()


def test_mismatched_preprocessing_is_refused(trained, tmp_path):
    save_dataset(blob_dataset(40, 32, 8), tmp_path / "ds32")
    with pytest.raises(ValueError, match="does not fit this dataset: input 16x16 vs patches 32x32"):
        evaluate(trained / "run", tmp_path / "ds32", tmp_path / "x")
