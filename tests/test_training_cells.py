"""`wellwatch dataset cells`: single-cell crops from paired label-free + marker fields, labelled by a
two-component GMM on the marker (the cell-type seed study), and the study's cell-size SVM baseline
beside the network in `train` cross-validation and `evaluate`.

The plate is simulated with two cell types (LMPP: large, CD19-dim; pro-B: small, CD19-bright), so
every label has a known answer: the simulator's ground-truth type of the cell at that centre."""

from __future__ import annotations

import argparse
import csv
import json
import re

import numpy as np
import pytest

from wellwatch.core.contract import CellCrop
from wellwatch.core.crops import cells_of, circular_mask, prepare_crops
from wellwatch.core.files.tiff import read_frame
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.core.segmentation.classical import ClassicalParams
from wellwatch.simulator import SimulationSpec, write_plate
from wellwatch.training import cli as training_cli
from wellwatch.training.cells import (CellDatasetError, balance_per_group, cell_size_svm_scores, label_by_marker,
                                      marker_means, marker_thresholds)
from wellwatch.training.dataset import load_dataset, save_dataset
from wellwatch.training.scores import roc_auc

from .test_training_data import blob_dataset

WELLS = tuple(f"A{i}" for i in range(1, 7))
# Simulated cells are small (radii ~5.5-13 px, segmented areas ~270-900 px with the phase halo): the
# study's 150 px crops, 50 px mask and 2000-8000 px range scaled down; classical parameters that find
# them on the simulator's phase contrast (probed: 121 of 121 cells found, no false ones, on 4 fields).
CELL_OPTIONS = ["--label-free", "PH", "--marker", "CD19", "--crop", "48", "--mask-radius", "16",
                "--marker-radius", "5", "--min-area", "40", "--max-area", "2000",
                "--classical", "downsample=1", "--classical", "min_distance=10", "--classical", "dist_sigma=2"]
CLASSICAL = ClassicalParams(downsample=1, min_distance=10, dist_sigma=2.0, min_area=40, max_area=2000)
CROP = CellCrop(48, 16.0, 40, 2000)


def _run(argv):
    parser = argparse.ArgumentParser(prog="wellwatch")
    training_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    spec = SimulationSpec(cell_types=("lmpp", "prob"), type_mix="series", channels=("PH", "CD19"), size=256,
                          cells_per_field=30, wells=WELLS, fields=2, timepoints=1, seed=1)
    write_plate(spec, root / "plate")
    return root


@pytest.fixture(scope="module")
def built(plate):
    assert _run(["dataset", "cells", str(plate / "plate"), "--out", str(plate / "ds")] + CELL_OPTIONS) == 0
    return plate / "ds"


def _truth(plate):
    with open(plate / "plate" / "ground_truth_cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        out.setdefault((r["well"], int(r["field"]), int(r["timepoint"])), []).append(
            (float(r["y"]), float(r["x"]), r["type"], float(r["marker"])))
    return out


ID = re.compile(r"^(?P<plate>[^/]+)/(?P<well>\w+)/f(?P<field>\d+)/t(?P<t>\d+)/z\d+#\d+@y(?P<y>\d+)x(?P<x>\d+)$")


def _match(ds, truth, tolerance=4.0):
    """For each dataset cell: the ground-truth type at its centre (None when no centre is near)."""
    types = []
    for cell_id in ds.ids:
        m = ID.match(str(cell_id))
        assert m, cell_id
        cand = truth[(m["well"], int(m["field"]), int(m["t"]))]
        d = np.hypot([c[0] - int(m["y"]) for c in cand], [c[1] - int(m["x"]) for c in cand])
        j = int(np.argmin(d))
        types.append(cand[j][2] if d[j] <= tolerance else None)
    return np.array(types, dtype=object)


# --- the dataset against the simulator's ground truth ----------------------------------------

@pytest.mark.unit
def test_labels_agree_with_the_ground_truth_types(built, plate):
    ds = load_dataset(built)
    assert ds.classes == ("LMPP", "pro-B") and ds.positive_class == "pro-B"
    types = _match(ds, _truth(plate))
    matched = types != None  # noqa: E711 (elementwise)
    assert matched.mean() > 0.95
    agree = ((types[matched] == "prob") == (ds.y[matched] == 1)).mean()
    assert agree > 0.9, agree
    # both types are present in quantity (the series spreads 10-90% LMPP over the wells)
    assert min(ds.counts().values()) > 0.3 * len(ds)


@pytest.mark.unit
def test_ambiguous_cells_are_counted_and_left_out(built):
    ds = load_dataset(built)
    c, t = ds.meta["label_counts"], ds.meta["thresholds"]
    assert c["ambiguous"] >= 1 and c["kept"] == len(ds) == c["in_size_range"] - c["ambiguous"]
    assert c["segmented"] == c["in_size_range"] + c["out_of_size_range"]
    assert c["LMPP"] + c["pro-B"] == len(ds) and c["removed_by_balance"] == 0
    log_marker = np.log(ds.fluorescence.astype(np.float64))
    assert t["negative_below"] < t["equal_posterior"] < t["positive_above"]
    assert (log_marker[ds.y == 0] <= t["negative_below"] + 1e-5).all()
    assert (log_marker[ds.y == 1] >= t["positive_above"] - 1e-5).all()
    # the kept cells are those whose fitted posterior reaches 0.8 in one component
    from wellwatch.training.gmm import Mixture

    mix = Mixture(**{k: tuple(v) for k, v in t["mixture"].items()})
    assert (mix.posterior(log_marker).max(axis=1) >= 0.8 - 1e-3).all()


@pytest.mark.unit
def test_histogram_groups_areas_and_crop_geometry_are_stored(built):
    assert (built / "marker_histogram.png").stat().st_size > 10_000
    ds = load_dataset(built)
    meta = json.loads((built / "dataset.json").read_text())
    assert meta["kind"] == "crops" and meta["task"] == "cell_type" and meta["channels"] == ["PH"]
    assert meta["cell_crop"] == {"size": 48, "mask_radius": 16.0, "min_area": 40, "max_area": 2000}
    assert meta["normalisation"] == {"method": "mask_mean", "params": {}} and meta["tiling"] is None
    assert ds.tiling is None and ds.cell_crop == CROP and meta["has_area"] is True
    assert meta["segmentation"]["method"] == "classical" and meta["segmentation"]["classical"]["min_distance"] == 10
    assert ds.x.shape == (len(ds), 1, 48, 48) and ds.x.dtype == np.float32
    # groups: field (source), well (the dish) and plate
    assert set(ds.well.tolist()) == set(WELLS) and set(ds.plate.tolist()) == {"plate"}
    assert set(ds.source.tolist()) == {f"plate/{w}/f{f}" for w in WELLS for f in (1, 2)}
    assert meta["groups"]["well"] == 6 and meta["groups"]["source"] == 12
    # areas: full-resolution px in the size range; LMPPs are the larger cells
    assert ds.area.dtype == np.int64 and len(ds.area) == len(ds)
    assert ds.area.min() >= 40 and ds.area.max() <= 2000
    assert np.median(ds.area[ds.y == 0]) > 1.25 * np.median(ds.area[ds.y == 1])  # LMPPs are larger
    # mean-in-mask normalisation: 0 outside the circle, mean 1 inside
    mask = circular_mask(48, 16.0).astype(bool)
    assert np.abs(ds.x[:, :, ~mask]).max() == 0
    np.testing.assert_allclose(ds.x[:, 0][:, mask].mean(axis=1), 1.0, atol=1e-4)


@pytest.mark.unit
def test_crops_and_marker_are_the_daemons_own(built, plate):
    """Train/serve parity: the crops of one field are what the daemon's segmenter + prepare_crops give."""
    ds = load_dataset(built)
    ph = plate / "plate" / "data" / "A3--W00003--P00002--Z00000--T00000--PH.tif"
    cd19 = ph.with_name(ph.name.replace("--PH", "--CD19"))
    frame, marker = read_frame(str(ph)), read_frame(str(cd19)).astype(np.float64)
    cells = cells_of(load_segmenter(None, CLASSICAL).segment(frame))
    crops, keep = prepare_crops([frame], cells, CROP)
    mine = np.array([str(i).startswith("plate/A3/f2/t0/") for i in ds.ids])
    labels = [int(str(i).split("#")[1].split("@")[0]) for i in ds.ids[mine]]
    index = {lab: k for k, lab in enumerate(np.nonzero(keep)[0] + 1)}
    assert len(labels) >= 10
    np.testing.assert_array_equal(ds.x[mine], crops[[index[lab] for lab in labels]])
    np.testing.assert_array_equal(ds.area[mine], cells.areas[np.array(labels) - 1])
    # the marker value: mean of the raw marker frame within 5 px of the (rounded) centroid
    yy, xx = np.indices(marker.shape)
    for k, lab in list(enumerate(labels))[:5]:
        cy, cx = np.rint(cells.centroids[lab - 1])
        inside = np.hypot(yy - cy, xx - cx) <= 5
        assert ds.fluorescence[mine][k] == pytest.approx(marker[inside].mean(), rel=1e-5)


# --- train and evaluate: the network beside the cell-size SVM ----------------------------------

@pytest.mark.integration
def test_train_cross_validation_reports_network_and_svm(built, plate, capsys):
    run = plate / "run-cv"
    rc = _run(["train", str(built), "--out", str(run), "--folds", "3", "--group-by", "well", "--epochs", "2",
               "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "train.json").read_text())
    assert summary["arch"] == "ogawa"  # the default for crops
    cv = summary["metrics"]["cv"]
    assert printed["metrics"]["cv"] == cv
    assert 0 <= cv["auc"] <= 1 and cv["n"] == len(load_dataset(built))
    svm = cv["baseline_cell_size_svm"]
    # simulated sizes overlap (as in the study): size is informative but not decisive
    assert svm["n"] == cv["n"] and 0.7 < svm["auc"] < 0.97
    detail = summary["cv"]["baseline_cell_size_svm"]
    assert detail["same_folds"] and "gamma=1" in detail["model"]
    assert [f["test_groups"] for f in summary["cv"]["folds"]] and \
        all("baseline_cell_size_svm" in f for f in summary["cv"]["folds"])
    lines = (run / "cv_scores.csv").read_text().splitlines()
    assert lines[0] == "id,label,score,fold,svm_cell_size" and len(lines) == cv["n"] + 1
    # the checkpoint's contract carries the crop geometry and no tiling
    from wellwatch.training.checkpoint import load_checkpoint

    _, arch, contract, _ = load_checkpoint(run / "best.pt")
    assert arch == "ogawa" and contract.task == "cell_type" and contract.crop == CROP
    assert contract.tiling is None and contract.normalisation.method == "mask_mean"
    assert contract.classes == ("LMPP", "pro-B") and contract.positive_class == "pro-B"


@pytest.mark.integration
def test_evaluate_reports_the_svm_on_the_same_test_cells(built, plate, capsys):
    run, report = plate / "run", plate / "report"
    assert _run(["train", str(built), "--out", str(run), "--group-by", "well", "--split", "4/1/1", "--epochs", "1",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert _run(["evaluate", str(run), str(built), "--out", str(report), "--bootstrap", "50", "--tsne-max", "0",
                 "--gradcam", "0"]) == 0
    m = json.loads((report / "metrics.json").read_text())
    b = m["baseline_cell_size_svm"]
    assert "held-out" in m["patches"] and "same held-out cells" in b["how"]
    assert b["n"] == m["n"] and b["auc"] > 0.7
    assert b["auc_difference"]["value"] == pytest.approx(m["auc"] - b["auc"], abs=2e-4)
    text = (report / "report.md").read_text()
    assert "cell-size SVM AUC" in text and "AUC difference (network - SVM)" in text
    assert (report / "baseline_scores.csv").read_text().startswith("id,label,svm_cell_size,area\n")


# --- errors name the file or option -------------------------------------------------------------

@pytest.mark.unit
def test_missing_marker_channel_names_the_option(plate):
    with pytest.raises(CellDatasetError, match=r"--marker 'GFP'.*channels found: CD19, PH"):
        _run(["dataset", "cells", str(plate / "plate"), "--out", str(plate / "bad")] + CELL_OPTIONS
             + ["--marker", "GFP"])
    with pytest.raises(CellDatasetError, match=r"--label-free 'DIC'"):
        _run(["dataset", "cells", str(plate / "plate"), "--out", str(plate / "bad"), "--label-free", "PH,DIC"])
    with pytest.raises(CellDatasetError, match=r"no such folder"):
        _run(["dataset", "cells", str(plate / "nowhere"), "--out", str(plate / "bad")])


@pytest.mark.unit
def test_no_cells_in_the_size_range_says_so(plate):
    with pytest.raises(CellDatasetError, match=r"0 of \d+ segmented cells have an area in \[5000, 8000\] px "
                                               r"\(--min-area/--max-area\).*percentile"):
        _run(["dataset", "cells", str(plate / "plate"), "--out", str(plate / "bad")] + CELL_OPTIONS
             + ["--min-area", "5000", "--max-area", "8000", "--classical", "min_area=40",
                "--classical", "max_area=20000"])


@pytest.mark.unit
def test_cli_errors_exit_2_with_the_message(plate, capsys, caplog):
    from wellwatch.cli import main

    rc = main(["dataset", "cells", str(plate / "plate"), "--out", str(plate / "bad"), "--segment-channel", "DIC"])
    assert rc == 2
    # --segment-channel is the old name of --segment-on (any channel, e.g. a nuclear stain)
    assert "--segment-on 'DIC': no file of channel 'DIC'" in caplog.text + capsys.readouterr().err


# --- the pieces, on data with known answers ------------------------------------------------------

@pytest.mark.unit
def test_marker_thresholds_follow_the_posterior():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(4.0, 0.3, 600), rng.normal(6.0, 0.5, 400)]
    t = marker_thresholds(x, 0.8)
    assert t.mixture.means == pytest.approx((4.0, 6.0), abs=0.1)
    labels = label_by_marker(x, t)
    post = t.mixture.posterior(x)
    central = (x > t.mixture.means[0]) & (x < t.mixture.means[1])
    # between the means the rule is exactly "posterior >= 0.8 in one component" (to the grid's step)
    step = (t.mixture.means[1] - t.mixture.means[0]) / 4000
    clear = central & (np.abs(x - t.negative_below) > step) & (np.abs(x - t.positive_above) > step)
    expected = np.where(post[:, 0] >= 0.8, 0, np.where(post[:, 1] >= 0.8, 1, -1))
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert (labels[x < 4.0] == 0).all() and (labels[x > 6.0] == 1).all()  # tails keep intensity order
    truth = np.r_[np.zeros(600), np.ones(400)]
    used = labels >= 0
    assert 5 <= (~used).sum() < 60 and (labels[used] == truth[used]).mean() > 0.99
    # a stricter posterior leaves more cells out
    assert (label_by_marker(x, marker_thresholds(x, 0.95)) < 0).sum() > (~used).sum()


@pytest.mark.unit
def test_marker_means_on_a_known_frame():
    frame = np.full((64, 64), 100.0, np.float32)
    yy, xx = np.indices(frame.shape)
    frame[np.hypot(yy - 20, xx - 30) <= 6] = 700.0
    m = marker_means(frame, np.array([[20.0, 30.0], [50.0, 50.0], [20.2, 29.8]]), 5.0)
    assert m == pytest.approx([700.0, 100.0, 700.0])
    assert marker_means(frame, np.zeros((0, 2)), 5.0).shape == (0,)


@pytest.mark.unit
def test_balance_per_group_trims_the_larger_class_within_each_dish():
    labels = np.array([0, 0, 0, 1, -1, 1, 1, 0, 0, 0, 0])
    groups = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 3)
    keep = balance_per_group(labels, groups, seed=0)
    for g, n in (("a", 1), ("b", 1), ("c", 0)):
        sel = keep & (groups == g)
        assert (labels[sel] == 0).sum() == (labels[sel] == 1).sum() == n
    assert not keep[labels < 0].any()
    assert np.array_equal(keep, balance_per_group(labels, groups, seed=0))


@pytest.mark.unit
def test_cell_size_svm_scores_rank_by_size():
    rng = np.random.default_rng(1)
    area_big, area_small = rng.normal(600, 80, 200), rng.normal(300, 50, 200)
    area = np.r_[area_big, area_small]
    y = np.r_[np.zeros(200), np.ones(200)]  # positive = the small cells
    s = cell_size_svm_scores(area[::2], y[::2], area[1::2])
    assert roc_auc(y[1::2] == 1, s) > 0.97
    one = rng.normal(450, 80, 400)  # one population, labels unrelated to size: no better than chance
    label = rng.integers(0, 2, 400)
    noise = cell_size_svm_scores(one[::2], label[::2], one[1::2])
    assert 0.35 < roc_auc(label[1::2] == 1, noise) < 0.65
    assert np.isnan(cell_size_svm_scores(area[:10], np.zeros(10), area[:3])).all()


@pytest.mark.unit
def test_datasets_without_areas_load_as_before(tmp_path):
    save_dataset(blob_dataset(20, 16, 4), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.area is None and ds.cell_crop is None and ds.tiling.tile_size == 16
    with np.load(tmp_path / "ds" / "dataset.npz") as z:
        assert "area" not in z


@pytest.mark.unit
def test_several_label_free_channels_pair_per_field(tmp_path):
    spec = SimulationSpec(cell_types=("lmpp", "prob"), type_mix="series", channels=("PH", "DIC", "CD19"), size=192,
                          cells_per_field=25, wells=("A1", "A2", "A3"), fields=1, timepoints=2, seed=4)
    write_plate(spec, tmp_path / "plate")
    opts = [o for o in CELL_OPTIONS if o not in ("--label-free", "PH")]
    assert _run(["dataset", "cells", str(tmp_path / "plate"), "--out", str(tmp_path / "ds"),
                 "--label-free", "dic,PH", "--segment-channel", "ph", "--classes", "neg,pos"] + opts) == 0
    ds = load_dataset(tmp_path / "ds")
    assert ds.x.shape[1:] == (2, 48, 48) and ds.meta["channels"] == ["dic", "PH"]
    assert ds.meta["segmentation"]["channel"] == "PH" and ds.classes == ("neg", "pos")
    # two timepoints of one field: two frames, one split unit
    assert {str(i).split("#")[0] for i in ds.ids} == {f"plate/A{w}/f1/t{t}/z0" for w in (1, 2, 3) for t in (0, 1)}
    assert set(ds.source.tolist()) == {"plate/A1/f1", "plate/A2/f1", "plate/A3/f1"}
    # each channel is mask-mean normalised on its own
    mask = circular_mask(48, 16.0).astype(bool)
    np.testing.assert_allclose(ds.x[:, :, mask].mean(axis=2), 1.0, atol=1e-4)
    assert not np.allclose(ds.x[:, 0], ds.x[:, 1])


@pytest.mark.unit
def test_cross_validation_by_few_dishes_keeps_a_validation_group():
    """With 4 training wells the 10% validation share rounds to none; early stopping then kept epoch 1."""
    from wellwatch.training.training_run import train_val_split

    groups = np.repeat(["p/A1", "p/A2", "p/A3", "p/A4"], 5)
    train, val = train_val_split(groups, seed=0)
    assert val.any() and train.any() and not (train & val).any() and (train | val).all()
    assert len(set(groups[val].tolist())) == 1
    many = np.repeat([f"g{i}" for i in range(20)], 3)
    from wellwatch.training.splits import grouped_split

    assert [m.tolist() for m in train_val_split(many, 1)] == [m.tolist() for m in grouped_split(many, (0.9, 0.1), 1)]
