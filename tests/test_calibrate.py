"""`wellwatch calibrate` end to end on a small real subset of ../shared/data/adcc-paired: three
experiments (one field each), one epoch per fold; the served file, its contract's calibration, the
report and a config snippet the daemon's own loader accepts."""

from __future__ import annotations

import json
import tomllib

import onnx
import pytest

from wellwatch.cli import main
from wellwatch.core.config import load_config
from wellwatch.core.contract import contract_from_metadata
from wellwatch.core.intervals import VERDICTS

from .conftest import shared_data

WELLS = ("A3", "A5", "A7")  # four fields; dead fractions from 0.1 to 0.8: the stain separates


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    data = shared_data("adcc-paired", "data")
    plate = tmp_path_factory.mktemp("plate")
    for f in data.iterdir():
        if f.name.split("--")[0] in WELLS:
            (plate / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("cal")
    rc = main(["calibrate", str(plate), "--label-free", "BF", "--dead-stain", "PI", "--out", str(out),
               "--epochs", "1", "--bootstrap", "50", "--threads", "1",
               # four fields hold fewer tiles than the plate: their mixture separates at Ashman's D ~1.95
               "--dataset-arg=--min-separation=1.5"])
    return rc, out


@pytest.mark.unit
def test_calibrate_serves_a_model_with_its_calibration(calibrated):
    rc, out = calibrated
    assert rc == 0
    contract = contract_from_metadata({p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props},
                                      "model.onnx")
    cal = contract.calibration
    assert cal is not None and cal.unit == "tile" and cal.wells == 3 and cal.verdict in VERDICTS
    assert cal.levels == (0.8, 0.9)
    # 3 experiments: (3 + 1) * 0.9 > 3, too few for a bounded 90% interval, and the contract says so
    assert cal.half_width["0.9"] is None
    summary = json.loads((out / "calibration.json").read_text())
    assert sorted(g.split("/")[-1] for g in summary["wells"]) == list(WELLS)  # one experiment per well
    assert summary["calibration"]["estimator"] == cal.estimator
    for w in summary["wells"].values():
        assert 0 <= w["stain"] <= 1 and w["n"] > 0
    assert summary["aucs"]["pooled_auc"]["ci95"] is not None


@pytest.mark.integration
def test_report_and_config_snippet(calibrated):
    rc, out = calibrated
    page = (out / "report.html").read_text()
    verdict = json.loads((out / "calibration.json").read_text())["calibration"]["verdict"]
    assert f"Verdict: <b>{verdict}</b>" in page
    assert page.count("data:image/png;base64,") >= 3  # thresholds histogram, AUCs, per-well fractions
    assert "split conformal" in page and "Rules, in order" in page
    snippet = tomllib.loads((out / "config.toml").read_text())
    assert snippet["models"]["live_dead"]["path"] == str((out / "model.onnx").resolve())
    config = load_config(out / "config.toml")
    assert config.intervals.level == 0.9 and config.channels.label_free == ("BF",)


@pytest.mark.integration
def test_recalibration_fine_tunes_the_previous_model_and_reports_before_and_after(calibrated, tmp_path):
    rc, first = calibrated
    out = tmp_path / "again"
    assert main(["calibrate", "--dataset", str(first / "dataset"), "--init", str(first), "--out", str(out),
                 "--epochs", "1", "--bootstrap", "20", "--threads", "1"]) == 0
    summary = json.loads((out / "calibration.json").read_text())
    before = summary["before"]
    assert before is not None and before["calibration"]["verdict"] in VERDICTS
    assert set(before["wells"]) == set(summary["wells"])  # the same experiments, scored as the old model was
    page = (out / "report.html").read_text()
    assert "Re-calibration: before and after" in page and "before (--init model as it was)" in page
    assert main(["calibrate", "--dataset", str(first / "dataset"), "--init", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "x")]) == 2  # a missing model: one clear line, exit 2


@pytest.mark.unit
def test_a_per_cell_snippet_segments_as_the_calibration_did(tmp_path):
    """--segment-on: the snippet's [segmentation.classical] is the calibration dataset's, and loads."""
    import dataclasses

    from wellwatch.core.contract import CellCrop, Normalisation
    from wellwatch.core.intervals import Calibration
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.bundled_models import bundled_demo_model
    from wellwatch.training.calibrate import CalibrateOptions
    from wellwatch.training.calibrate_report import write_config_snippet

    classical = {"foreground": "intensity", "downsample": 1, "min_area": 50, "max_area": 3000, "min_distance": 12}
    contract = dataclasses.replace(
        OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract, tiling=None, height=64, width=64,
        crop=CellCrop(64, 28.0, 50, 3000), normalisation=Normalisation("mask_mean", {}),
        trained_on={"dataset": {"segmentation": {"channel": "LIVE", "method": "classical", "classical": classical}}},
        calibration=Calibration("adjusted", {"0.9": 0.2}, "per-well fractions only", unit="cell", tpr=0.7, fpr=0.2))
    path = write_config_snippet(CalibrateOptions(("plate",), tmp_path, segment_on="LIVE"), contract,
                                tmp_path / "model.onnx", "cell")
    config = load_config(path)
    assert config.channels.segment_on == "LIVE" and config.segmentation.method == "classical"
    assert config.models.cell_live_dead.path == str((tmp_path / "model.onnx").resolve())
    assert {k: getattr(config.segmentation.classical, k) for k in classical} == classical
