"""`channels.segment_on`: the daemon segments a nuclear stain (adcc-paired's LIVE channel) while the
live/dead model reads bright field, as `dataset cells --segment-on LIVE` made a per-cell model's cells.

Real parts: the shared adcc-paired scanR files (BF, PI, LIVE), watchdog, SQLite, ZeroMQ on 127.0.0.1,
ONNX Runtime, the classical segmenter in its process pool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import shared_data
from tests.test_vendor_daemon import daemons, journal, vendor_config  # noqa: F401 (fixture)
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.config import ConfigError, load_config
from wellwatch.core.contract import CellCrop
from wellwatch.core.crops import cells_of, prepare_crops
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.bundled_models import bundled_model
from wellwatch.core.segmentation.classical import ClassicalParams, segment_classical

ADCC = shared_data("adcc-paired", "data")
NUCLEI = {"foreground": "intensity", "downsample": 1, "min_area": 50, "max_area": 3000}
FIELDS = ("A1--W00001--P00001", "A6--W00006--P00001")


def _stage(dst, channels=("BF", "PI", "LIVE")):
    (dst / "acq").mkdir()
    for f in FIELDS:
        for c in channels:
            name = f"{f}--Z00000--T00000--{c}.tif"
            shutil.copy(ADCC / name, dst / "acq" / name)
    return dst / "acq"


def _cells(path) -> int:
    return int(segment_classical(tifffile.imread(path), ClassicalParams(**NUCLEI)).max())


@pytest.mark.integration
@pytest.mark.skipif(not ADCC.is_dir(), reason="../shared/data/adcc-paired absent")
def test_cells_come_from_the_nuclear_stain_while_the_model_reads_bright_field(daemons, tmp_path):  # noqa: F811
    root = tmp_path / "watched"
    root.mkdir()
    config = vendor_config(tmp_path, root, "scanr", "BF", **{
        "channels.segment_on": "LIVE", "segmentation.method": "classical", "segmentation.workers": 1,
        **{f"segmentation.classical.{k}": v for k, v in NUCLEI.items()}})
    _, rec = daemons(config)
    src = _stage(tmp_path)
    for p in sorted(src.iterdir()):
        shutil.copy(p, root / p.name)
    frames = rec.wait_frames(len(FIELDS))
    assert sorted(f["path"] for f in frames) == sorted(f"{f}--Z00000--T00000--BF.tif" for f in FIELDS)
    for f in frames:
        live = src / f["path"].replace("--BF.tif", "--LIVE.tif")
        assert f["channels"] == ["BF"]  # what the model read
        assert f["cells"] == _cells(live) > 0  # the nuclei of the LIVE image, segmented as configured
        assert f["cells"] != _cells(src / f["path"])  # not the same segmentation of bright field
    rows = journal(config)
    assert sorted(r[7] for r in rows) == ["BF", "BF", "LIVE", "LIVE"]  # LIVE journaled with its field; PI ignored
    assert {r[2] for r in rows} == {"done"}
    # results.csv and the dashboard's QC table: one row per field, its LIVE file named on it
    from wellwatch.results.journal_reader import JournalView
    from wellwatch.results.tables import frame_rows

    table = frame_rows(Path(config.journal.path))
    assert sorted((r["file"], r["channels"], r["channel_files"]) for r in table) == sorted(
        (f"{f}--Z00000--T00000--BF.tif", "BF;LIVE", f"{f}--Z00000--T00000--BF.tif;{f}--Z00000--T00000--LIVE.tif")
        for f in FIELDS)
    qc = JournalView(Path(config.journal.path)).frames()
    assert sorted((f["path"], tuple(f["channels"])) for f in qc) == sorted(
        (f"{f}--Z00000--T00000--BF.tif", ("BF", "LIVE")) for f in FIELDS)


@pytest.mark.unit
def test_segment_on_needs_a_segmentation_method(tmp_path):
    with pytest.raises(ConfigError, match="channels.segment_on"):
        load_config(None, {"watch.root": str(tmp_path), "journal.path": str(tmp_path / "j.sqlite"),
                           "channels.segment_on": "LIVE"})


@pytest.mark.unit
@pytest.mark.skipif(not ADCC.is_dir(), reason="../shared/data/adcc-paired absent")
def test_crops_are_cut_from_bright_field_around_the_nuclei():
    bf = tifffile.imread(ADCC / f"{FIELDS[0]}--Z00000--T00000--BF.tif")
    live = tifffile.imread(ADCC / f"{FIELDS[0]}--Z00000--T00000--LIVE.tif")
    contract = OnnxBackend(str(bundled_model("demo-live-dead.onnx")), device="cpu", warmup=False).contract
    crop = CellCrop(48, 20.0, 50, 3000)
    params = ClassicalParams(**NUCLEI)
    p = prepare_frame(bf, contract, segmentation="classical", classical=params, crop=crop, segment_image=live)
    cells = cells_of(segment_classical(live, params))
    crops, keep = prepare_crops([bf], cells, crop)
    assert len(p.cells) == len(cells) > 0 and np.array_equal(p.crop_keep, keep)
    assert np.array_equal(p.crops, crops)
    assert not np.array_equal(p.crops, prepare_crops([live], cells, crop)[0])
