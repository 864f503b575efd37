"""Per-cell counts in the daemon: segmentation in the process pool, `cells` in the stream and journal.

Real parts: simulated plates written as TIFF files, the daemon's watcher, SQLite and ZeroMQ. The
expected answer for every frame is the same segmentation code run on the finished file directly.
"""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from wellwatch.core.config import load_config
from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Segmentation, Tiling
from wellwatch.core.files.tiff import read_frame
from wellwatch.core.segmentation.segmenters import ModelSegmenter
from wellwatch.core.segmentation.classical import ClassicalParams, segment_classical
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

# chosen on other simulated plates (every cell of both cell types found); the tests use other seeds
SIMULATED_BF = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
                "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}


def plate(seed: int, **kw) -> SimulationSpec:
    base = dict(wells=("A1", "A6", "B3"), fields=2, timepoints=2, size=256, cells_per_field=12,
                channels=("BF", "PI"), treatment="dose_series", plate_name="p1", seed=seed)
    base.update(kw)
    return SimulationSpec(**base)


def last_well_messages(rec) -> dict:
    latest = {}
    for m in rec.of_type("well"):
        latest[(m["well"], m["timepoint"])] = m
    return latest


@pytest.mark.integration
def test_classical_cells_per_frame_and_well_match_the_segmenter_and_the_truth(run_daemon, recorder_for, tmp_path):
    spec = plate(seed=11)
    overrides = {"segmentation.method": "classical", "segmentation.workers": 2,
                 **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}}
    config, _ = run_daemon(spec, **overrides)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    n = len(spec.wells) * spec.fields * spec.timepoints
    frames = rec.wait_frames(n, timeout=120)
    time.sleep(0.3)

    params = ClassicalParams(**SIMULATED_BF)
    data = tmp_path / "acquisition" / "data"
    truth = {(f.well, f.field, f.timepoint): len(f.cells) for f in iter_fields(spec)}
    errors = []
    for m in frames:
        assert m["cells"] == int(segment_classical(read_frame(str(data / m["path"])), params).max())
        errors.append(m["cells"] - truth[(m["well"], m["field"], m["timepoint"])])
    assert sum(truth.values()) > 50
    assert np.abs(errors).sum() / sum(truth.values()) < 0.15, errors

    # a well's cells are the sum of its fields' cells
    by_well: dict = {}
    for m in frames:
        by_well.setdefault((m["well"], m["timepoint"]), []).append(m["cells"])
    for key, msg in last_well_messages(rec).items():
        assert msg["complete"] and msg["cells"] == sum(by_well[key])

    with sqlite3.connect(config.journal.path) as db:
        journaled = dict(db.execute("SELECT path, cells FROM frames"))
    assert journaled == {m["path"]: m["cells"] for m in frames}


@pytest.mark.integration
def test_without_segmentation_cells_are_null(run_daemon, recorder_for, tmp_path):
    spec = plate(seed=12, wells=("A1",), fields=1, timepoints=1)
    config, _ = run_daemon(spec)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frame = rec.wait_frames(1)[0]
    time.sleep(0.2)
    assert frame["cells"] is None and all(m["cells"] is None for m in rec.of_type("well"))


class ThresholdNetwork:
    """A stand-in segmentation network: maps from local contrast, tile by tile (tests may pass fakes).

    Its output depends on which tile a pixel is in, so a frame's labels are right only if every
    tile's maps come back to their own frame and position after pooling across frames."""

    def __init__(self, tile: int = 64, stride: int = 48):
        self.path, self.sha256, self.provider = "threshold-network", "0" * 64, "CPUExecutionProvider"
        self.contract = ModelContract(
            name="threshold-network", task="segmentation", classes=("background", "cell"), positive_class="cell",
            output="probabilities", input_name="image", channels=("BF",), layout="NCHW", height=tile, width=tile,
            normalisation=Normalisation("robust_zscore", {}), tiling=Tiling(tile, stride),
            empty_filter=EmptyFilter("none", {}), decision_threshold=0.5, trained_on={}, metrics={},
            segmentation=Segmentation(downsample=1, postprocess={"min_area": 40, "seed_threshold": 0.5,
                                                                 "min_seed_area": 4}))
        self.batches: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        contrast = np.stack([ndi.gaussian_filter(np.abs(t[0]), 2.0) for t in batch])
        cell = np.clip((contrast - 1.0) / 2.0, 0, 1)
        distance = np.stack([ndi.distance_transform_edt(c > 0.5) for c in cell])
        distance = np.clip(distance / 6.0, 0, 1)
        return np.stack([1 - cell, cell * 0.9, cell * 0.1, distance], axis=1).astype(np.float32)


@pytest.mark.integration
def test_network_tiles_pooled_across_frames_come_back_to_their_frames(run_daemon, recorder_for, tmp_path):
    spec = plate(seed=13, write_mode="rename")
    network = ThresholdNetwork()
    config, _ = run_daemon(spec, segmentation_backend=network, **{"segmentation.method": "model",
                                                                  "segmentation.max_batch": 7,
                                                                  "segmentation.workers": 2})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(len(spec.wells) * spec.fields * spec.timepoints, timeout=120)
    daemon_batches = list(network.batches)
    data = tmp_path / "acquisition" / "data"
    direct = ModelSegmenter(network)
    for m in frames:
        assert m["cells"] == int(direct.segment(read_frame(str(data / m["path"]))).max()), m["path"]
        assert m["models"]["threshold-network"] == network.sha256
    assert sum(m["cells"] for m in frames) > 20
    assert max(daemon_batches) == 7  # batches filled to segmentation.max_batch


@pytest.mark.unit
def test_journal_from_before_cells_existed_is_migrated(tmp_path):
    from wellwatch.core.aggregate import TileCounts
    from wellwatch.daemon.journal import FrameRecord, Journal

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the frames table as the previous release made it
        db.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL, "
                   "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, "
                   "reason TEXT, plate TEXT, well TEXT, field INTEGER, timepoint INTEGER, z INTEGER, channel TEXT, "
                   "live INTEGER, dead INTEGER, empty INTEGER, t_file REAL, t_done REAL, seq INTEGER, "
                   "UNIQUE (path, sha256))")
        db.execute("INSERT INTO frames (path, size, mtime_ns, sha256, version, state, live, dead, empty) "
                   "VALUES ('a.tif', 1, 1, 'x', 1, 'done', 3, 1, 0)")
    journal = Journal(path)
    try:
        (record,) = list(journal.records())
        assert (record.live, record.dead, record.cells) == (3, 1, None)
        # new results keep their per-cell counts through the journal (a restart rebuilds from them)
        new = FrameRecord("b.tif", 1, 1, "y", 1, "done", None, "p", "A1", 1, 0, 0, "BF", 5, 2, 1, 0.0, 0.0, 7,
                          9, 6, 2, json.dumps({"lmpp": 4, "prob": 3}))
        journal.commit([new], [])
        again = [r for r in journal.records() if r.path == "b.tif"][0]
        assert again.counts() == TileCounts(5, 2, 1, 9, 6, 2, {"lmpp": 4, "prob": 3})
    finally:
        journal.close()


@pytest.mark.unit
def test_segmentation_config_errors_name_the_key(tmp_path):
    import pytest

    from wellwatch.core.errors import ConfigError

    for overrides, key in (({"segmentation.method": "watershed"}, "segmentation.method"),
                           ({"segmentation.classical.min_area": 50000}, "segmentation.classical.min_area"),
                           ({"segmentation.classical.sigma": 1}, "segmentation.classical.sigma")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, overrides)


class CropStdClassifier:
    """A stand-in cell-type model: P(second class) from each crop's texture (tests may pass fakes)."""

    def __init__(self, size: int = 32, radius: float = 12.0, min_area: int = 60):
        from wellwatch.core.contract import CellCrop

        self.path, self.sha256, self.provider = "crop-std", "1" * 64, "CPUExecutionProvider"
        self.contract = ModelContract(
            name="crop-std", task="cell_type", classes=("lmpp", "prob"), positive_class="prob",
            output="probabilities", input_name="input", channels=("BF",), layout="NCHW", height=size, width=size,
            normalisation=Normalisation("mask_mean", {}), tiling=None, empty_filter=EmptyFilter("none", {}),
            decision_threshold=0.5, trained_on={}, metrics={},
            crop=CellCrop(size=size, mask_radius=radius, min_area=min_area, max_area=100000))
        self.batches: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        p = 1 / (1 + np.exp(-(batch.std(axis=(1, 2, 3)) - 0.5) * 8))
        return np.stack([1 - p, p], axis=1).astype(np.float32)


@pytest.mark.integration
def test_cell_types_and_per_cell_live_dead_in_frame_and_well_messages(run_daemon, recorder_for, tmp_path):
    from wellwatch.core.cell_calls import type_counts
    from wellwatch.core.segmentation.segmenters import classical_cells

    spec = plate(seed=14, cell_types=("lmpp", "prob"), type_mix="series")
    classifier = CropStdClassifier()
    overrides = {"segmentation.method": "classical", "segmentation.workers": 2,
                 "batching.max_delay_ms": 2000.0,  # crops wait for other frames' crops: pooling is certain
                 **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}}
    config, _ = run_daemon(spec, cell_type_backend=classifier, **overrides)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(len(spec.wells) * spec.fields * spec.timepoints, timeout=120)
    time.sleep(0.3)
    daemon_batches = list(classifier.batches)

    data = tmp_path / "acquisition" / "data"
    c = classifier.contract
    for m in frames:
        cells, crops, keep = classical_cells(read_frame(str(data / m["path"])), ClassicalParams(**SIMULATED_BF), c.crop)
        expected = type_counts(classifier.infer(crops), c.classes, c.positive_index, c.decision_threshold)
        assert m["cells"] == len(cells) and m["cell_types"] == expected
        assert sum(m["cell_types"].values()) == int(keep.sum()) <= m["cells"]
        called = m["cell_counts"]["live"] + m["cell_counts"]["dead"]
        assert 0 < called <= m["cells"]
    assert sum(sum(m["cell_types"].values()) for m in frames) > 50
    per_frame = [sum(m["cell_types"].values()) for m in frames]
    assert max(daemon_batches) > max(per_frame), (daemon_batches, per_frame)  # crops of several frames
    for (well, t), msg in last_well_messages(rec).items():
        mine = [m for m in frames if (m["well"], m["timepoint"]) == (well, t)]
        assert msg["cell_types"] == {k: sum(m["cell_types"][k] for m in mine) for k in c.classes}
        assert msg["cell_counts"]["dead"] == sum(m["cell_counts"]["dead"] for m in mine)
        assert msg["models"]["crop-std"] == classifier.sha256


# benchmarks/nis-timelapse-manual-count.md, counted by eye on t01: 58 adherent cells (±4) and 6 round,
# detached cells; the model segments most round cells too (4 of the 6), so the total is the reference
MANUAL_COUNT_T01 = 58 + 6


@pytest.mark.integration
def test_nis_timelapse_cells_per_frame_with_the_bundled_model(tmp_path):
    """The real NIS-Elements time-lapse (no channel in its names) through the daemon with the
    bundled phase-contrast segmentation model: a `cells` count for every frame, equal to
    `wellwatch segment` on the same file, and t01 close to a manual count."""
    from tests.conftest import daemon_frames, shared_data
    from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL
    from wellwatch.core.segmentation.segmenters import load_segmenter
    from wellwatch.harness import local_config

    folder = shared_data("nis-timelapse")
    spec = SimulationSpec(naming="nis", plate_name="T98G")  # only for the config's naming/plate keys
    config = local_config(tmp_path, spec, **{"channels.label_free": "phase", "plate.fields_per_well": 1,
                                             "segmentation.method": "model", "segmentation.workers": 2})
    frames = daemon_frames(config, sorted(folder.glob("*.tif")), 8)
    by_time = {m["timepoint"]: m for m in frames}
    assert sorted(by_time) == list(range(1, 9))
    direct = load_segmenter("")
    assert BUNDLED_SEGMENTATION_MODEL.name in frames[0]["models"] or "phase-segmentation" in frames[0]["models"]
    for t in (1, 8):
        labels = direct.segment(read_frame(str(folder / f"20180101ef002xy01t0{t}.tif")))
        assert by_time[t]["cells"] == int(labels.max())
    assert abs(by_time[1]["cells"] - MANUAL_COUNT_T01) <= 0.15 * MANUAL_COUNT_T01, by_time[1]["cells"]
    assert all(m["well"] == "A1" and m["cells"] > 20 for m in frames)
