"""`wellwatch dataset cells --dead-stain`: single-cell crops labelled live/dead from a dead stain.

A simulated dose-series plate (bright field + PI) gives every cell a known state; a nuclear stain
channel (`NUC`) drawn from the ground truth's cell positions stands in for a live-nuclei stain to
segment on (the simulator renders none)."""

from __future__ import annotations

import argparse
import csv
import json
import re

import numpy as np
import pytest
import tifffile

from wellwatch.core.contract import CellCrop, ModelContract
from wellwatch.simulator import SimulationSpec, write_plate
from wellwatch.training import cli as training_cli
from wellwatch.training.cells import CellDatasetError
from wellwatch.training.cells_live_dead import StainMeasure, label_live_dead, stain_per_cell
from wellwatch.training.dataset import load_dataset

WELLS = ("A1", "A4", "A8", "A12")  # the dose series: from untreated to mostly dead
CLASSICAL_BF = ["--classical", "foreground=texture", "--classical", "texture_window=5", "--classical",
                "threshold_factor=0.6", "--classical", "smooth_sigma=1.0", "--classical", "closing_radius=0",
                "--classical", "min_distance=6", "--classical", "downsample=1", "--classical", "dist_sigma=1.0"]
CROP = ["--crop", "48", "--mask-radius", "16", "--min-area", "60", "--max-area", "2000"]
ID = re.compile(r"^[^/]+/(?P<well>\w+)/f(?P<field>\d+)/t\d+/z\d+#\d+@y(?P<y>\d+)x(?P<x>\d+)$")


def _run(argv):
    parser = argparse.ArgumentParser(prog="wellwatch")
    training_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _truth(root):
    out = {}
    with open(root / "ground_truth_cells.csv", newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault((r["well"], int(r["field"])), []).append(
                (float(r["y"]), float(r["x"]), float(r["radius"]), r["state"]))
    return out


def _write_nuclear_channel(root, truth) -> None:
    """NUC: a bright disc (half the cell's radius) on every cell's centre, on a dim noisy background."""
    rng = np.random.default_rng(0)
    for bf in sorted((root / "data").glob("*--BF.tif")):
        frame = tifffile.imread(bf)
        well, fld = bf.name.split("--")[0], int(bf.name.split("--P")[1][:5])
        yy, xx = np.indices(frame.shape)
        nuc = rng.normal(200, 10, frame.shape)
        for y, x, r, _ in truth[(well, fld)]:
            nuc[np.hypot(yy - y, xx - x) <= max(r * 0.5, 3)] += 2000
        tifffile.imwrite(bf.with_name(bf.name.replace("--BF", "--NUC")), nuc.clip(0, 65535).astype(np.uint16))
        # FLAT: a "stain" with no dead cells, only a high, uneven, noisy background
        flat = 3000 + 2000 * xx / frame.shape[1] + rng.normal(0, 40, frame.shape)
        tifffile.imwrite(bf.with_name(bf.name.replace("--BF", "--FLAT")), flat.clip(0, 65535).astype(np.uint16))


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells-ld")
    spec = SimulationSpec(wells=WELLS, fields=2, timepoints=1, size=256, cells_per_field=25, channels=("BF", "PI"),
                          treatment="dose_series", seed=3)
    write_plate(spec, root / "plate")
    _write_nuclear_channel(root / "plate", _truth(root / "plate"))
    return root


def _states(ds, truth, tolerance=4.0):
    """Each dataset cell's true state (None when no simulated cell centre is within `tolerance` px)."""
    out = []
    for cell_id in ds.ids:
        m = ID.match(str(cell_id))
        cand = truth[(m["well"], int(m["field"]))]
        d = np.hypot([c[0] - int(m["y"]) for c in cand], [c[1] - int(m["x"]) for c in cand])
        out.append(cand[int(np.argmin(d))][3] if d.min() <= tolerance else None)
    return np.array(out, dtype=object)


@pytest.mark.unit
@pytest.mark.parametrize("segment_on, extra", [("BF", CLASSICAL_BF),
                                               ("NUC", ["--classical", "foreground=intensity",
                                                        "--classical", "downsample=1", "--min-area", "10"])])
def test_labels_agree_with_the_simulated_cells_state(plate, segment_on, extra, capsys):
    out = plate / f"ds-{segment_on}"
    assert _run(["dataset", "cells", str(plate / "plate"), "--out", str(out), "--label-free", "BF",
                 "--dead-stain", "PI", "--segment-on", segment_on] + CROP + extra) == 0
    printed = json.loads(capsys.readouterr().out)
    ds = load_dataset(out)
    assert ds.classes == ("live", "dead") and ds.positive_class == "dead"
    assert ds.meta["task"] == "live_dead" and ds.meta["channels"] == ["BF"]  # crops from the label-free channel
    assert ds.meta["segmentation"]["channel"] == segment_on and ds.meta["stain"]["channel"] == "PI"
    states = _states(ds, _truth(plate / "plate"))
    matched = states != None  # noqa: E711 (elementwise)
    assert matched.mean() > 0.9, matched.mean()
    agree = ((states[matched] == "dead") == (ds.y[matched] == 1)).mean()
    assert agree > 0.97, agree
    c = printed["counts"]
    assert c["live"] > 20 and c["dead"] > 20 and c["kept"] == len(ds)
    assert printed["thresholds"]["live_below"] < printed["thresholds"]["dead_above"]
    assert printed["separation"]["ashman_d"] > 2
    assert (out / "stain_histogram.png").stat().st_size > 10_000
    # the crop section a live_dead crop model's contract will carry
    assert ds.cell_crop == CellCrop(48, 16.0, 10 if segment_on == "NUC" else 60, 2000) and ds.tiling is None


@pytest.mark.integration
def test_trained_crop_model_has_a_live_dead_contract_with_a_crop_section(plate):
    ds_dir = plate / "ds-BF"
    if not (ds_dir / "dataset.json").exists():  # built by the test above when it ran first
        assert _run(["dataset", "cells", str(plate / "plate"), "--out", str(ds_dir), "--label-free", "BF",
                     "--dead-stain", "PI", "--segment-on", "BF"] + CROP + CLASSICAL_BF) == 0
    run = plate / "run"
    assert _run(["train", str(ds_dir), "--out", str(run), "--arch", "tiny", "--epochs", "1", "--group-by", "well",
                 "--quiet"]) == 0
    from wellwatch.training.checkpoint import load_checkpoint

    _, _, contract, _ = load_checkpoint(run / "best.pt")
    assert contract.task == "live_dead" and contract.per_cell and contract.tiling is None
    assert contract.classes == ("live", "dead") and contract.positive_class == "dead"
    assert ModelContract.from_json(contract.to_json()) == contract


# --- the measurement and the labels, on data with known answers ----------------------------------

@pytest.mark.unit
def test_stain_signal_over_an_uneven_background():
    """Two objects on a noisy background that rises 4-fold across the field: each is measured against
    the background where it sits, in noise units, not against the field's mean."""
    rng = np.random.default_rng(0)
    yy, xx = np.indices((256, 256))
    stain = 100.0 + 300.0 * xx / 255 + rng.normal(0, 10, (256, 256))
    labels = np.zeros((256, 256), np.int32)
    labels[(yy - 128) ** 2 + (xx - 30) ** 2 <= 64] = 1   # on ~135
    labels[(yy - 128) ** 2 + (xx - 220) ** 2 <= 64] = 2  # on ~360
    stain[labels == 1] += 200.0  # dead: 20 noise sd above its background, yet dimmer than the live one
    ids, centroids = np.array([1, 2]), np.array([[128.0, 30.0], [128.0, 220.0]])
    for measure in (StainMeasure("mean", 0.0, 32), StainMeasure("p90", 5.0, 32)):
        dead, live = stain_per_cell(stain, labels, ids, centroids, measure)
        assert 12 < dead < 30 and abs(live) < 3, (measure, dead, live)


@pytest.mark.unit
def test_a_stain_without_dead_cells_is_refused_naming_the_acquisition(plate):
    out = plate / "ds-flat"
    with pytest.raises(CellDatasetError, match=r"dead stain 'FLAT' of plate: .*(overlap|no dead|no second class|"
                                               r"cross|outside).*--segment-on"):
        _run(["dataset", "cells", str(plate / "plate"), "--out", str(out), "--label-free", "BF",
              "--dead-stain", "FLAT", "--segment-on", "BF"] + CROP + CLASSICAL_BF)
    assert (out / "stain_histogram.png").stat().st_size > 10_000  # drawn for the refused fit
    assert not (out / "dataset.json").exists()
    labels, fit = label_live_dead(np.r_[np.full(300, 0.3), np.full(200, 3.0)] + np.random.default_rng(2).normal(
        0, 0.1, 500), "two populations")
    assert (labels == 0).sum() > 250 and (labels == 1).sum() > 150 and fit.separation.ashman_d > 2


@pytest.mark.unit
def test_options_are_checked_with_their_names(plate):
    base = ["dataset", "cells", str(plate / "plate"), "--out", str(plate / "bad"), "--label-free", "BF"] + CROP
    with pytest.raises(CellDatasetError, match="--dead-stain labels cells live/dead: --marker"):
        _run(base + ["--dead-stain", "PI", "--marker", "PI"])
    with pytest.raises(CellDatasetError, match="--segment-on 'PI' is the labelling stain"):
        _run(base + ["--dead-stain", "PI", "--segment-on", "PI"])
    with pytest.raises(CellDatasetError, match="--dead-stain 'GFP': no file of channel 'GFP'"):
        _run(base + ["--dead-stain", "GFP"])
    with pytest.raises(CellDatasetError, match="--stain-statistic 'median'"):
        _run(base + ["--dead-stain", "PI", "--stain-statistic", "median"] + CLASSICAL_BF)


@pytest.mark.unit
def test_live_dead_contract_has_tiles_or_a_crop_section():
    from wellwatch.core.contract import EmptyFilter, Normalisation, Tiling
    from wellwatch.core.errors import ContractError

    from .test_contract import live_dead_contract

    per_cell = live_dead_contract(tiling=None, height=48, width=48, normalisation=Normalisation("mask_mean"),
                                  empty_filter=EmptyFilter("none"), crop=CellCrop(48, 16.0, 60, 2000))
    back = ModelContract.from_json(per_cell.to_json())
    assert back == per_cell and back.per_cell and not live_dead_contract().per_cell
    with pytest.raises(ContractError, match="tiling .*or a crop section .*not both"):
        ModelContract.from_json(live_dead_contract(tiling=Tiling(48, 24), height=48, width=48,
                                                   crop=CellCrop(48, 16.0)).to_json())
    with pytest.raises(ContractError, match="needs tiling .*or a crop section"):
        ModelContract.from_json(live_dead_contract(tiling=None).to_json())
    with pytest.raises(ContractError, match="crop.size 32 differs from input 48x48"):
        ModelContract.from_json(per_cell.__class__(**{**per_cell.__dict__, "crop": CellCrop(32, 16.0)}).to_json())
