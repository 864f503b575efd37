"""The daemon on real vendor folders and a real .nd2 file, and a two-channel model on DIC + phase.

Real parts: the shared ImageXpress / CV8000 sample folders and cluster.nd2 as their software wrote
them, watchdog, SQLite, ZeroMQ on 127.0.0.1, ONNX Runtime.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import StreamRecorder, shared_data
from tests.nd2_writer import copy_in_chunks, write_live
from tests.two_channel_model import build_two_channel_model, expected_dead_tiles
from wellwatch.core.config import load_config
from wellwatch.harness import free_port, start_daemon, local_config
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

pytestmark = pytest.mark.integration


def vendor_config(tmp_path: Path, root: Path, naming: str, channel, **extra):
    values = {"watch.root": str(root), "watch.naming": naming, "watch.settle_s": 0.1, "watch.reconcile_s": 2.0,
              "channels.label_free": channel, "publish.endpoint": f"tcp://127.0.0.1:{free_port()}",
              "publish.snapshot_endpoint": f"tcp://127.0.0.1:{free_port()}", "metrics.port": 0,
              "journal.path": str(tmp_path / "journal.sqlite"), **extra}
    return load_config(None, values)


def journal(config) -> list[tuple]:
    with sqlite3.connect(config.journal.path) as db:
        return db.execute("SELECT path, sha256, state, well, field, timepoint, z, channel FROM frames").fetchall()


def wait_rows(config, n: int, timeout: float = 60) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while len(rows := journal(config)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return rows


@pytest.fixture
def daemons():
    running = []

    def start(config, **kw):
        d = start_daemon(config, **kw)
        running.append(d)
        rec = StreamRecorder(config)
        rec.start()
        assert rec.connected.wait(30), "no snapshot from the daemon"
        return d, rec

    yield start
    for d in running:
        d.stop()


IMAGE_SUFFIXES = (".tif", ".tiff")


def stage_metadata(src: Path, dst: Path) -> None:
    """The vendor's own files first, as the software writes them when the acquisition starts."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.name.lower().endswith(IMAGE_SUFFIXES):
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / p.relative_to(src))


def acquire_images(src: Path, dst: Path) -> None:
    """Then the images, one by one in name order (hard links: the same bytes, no copying time)."""
    for p in sorted(src.rglob("*")):
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, target)
            except OSError:  # another filesystem
                shutil.copy2(p, target)


def settled(rec: StreamRecorder, n_frames: int, timeout: float = 60) -> None:
    rec.wait_frames(n_frames, timeout)
    time.sleep(0.5)  # the last well/status messages follow their frames


def plate_events(config) -> list[dict]:
    """Every status/plate message the daemon published (from the journal's outbox: the start-up
    announcement may precede a subscriber)."""
    with sqlite3.connect(config.journal.path) as db:
        rows = db.execute("SELECT payload FROM outbox WHERE topic = 'status/plate' ORDER BY seq").fetchall()
    return [json.loads(p) for (p,) in rows]


# folder, naming, model channel, {(well, timepoint): images expected}, timepoints in the layout
REAL_FOLDERS = [
    (("ImageXpress_exported", "9987_Plate_3420"), "imagexpress", "DAPI", {("B2", 1): 1}, 1),
    (("ImageXpress_exported", "9987_Plate_3434"), "imagexpress", "1", {("B2", 1): 6, ("B3", 1): 6}, 1),
    (("ImageXpress_exported", "9987_Plate_3435"), "imagexpress", "1",
     {(w, t): 2 for w in ("B2", "B3") for t in (1, 2)}, 6),
    (("CV8000",), "cv8000", "1", {(w, 1): 16 for w in ("D8", "E3", "F8")}, 1),
]


@pytest.mark.parametrize("parts, naming, channel, expected, timepoints", REAL_FOLDERS,
                         ids=["imagexpress-1site", "imagexpress-zstack", "imagexpress-timelapse", "cv8000"])
def test_real_vendor_folder_layout_drives_completion(daemons, tmp_path, parts, naming, channel, expected,
                                                     timepoints):
    src = shared_data("vendor-folders", *parts)
    if parts == ("CV8000",):
        src = next(p.parent for p in src.glob("*/*/MeasurementData.mlf"))  # the measurement folder
    root = tmp_path / "acq"
    stage_metadata(src, root)
    config = vendor_config(tmp_path, root, naming, channel)
    _, rec = daemons(config)
    acquire_images(src, root)
    n = sum(expected.values())
    settled(rec, n)
    rows = journal(config)
    # every image of the model's channel, once; nothing else (other channels, thumbnails, .HTD)
    assert len(rows) == n and len({r[0] for r in rows}) == n and {r[2] for r in rows} == {"done"}
    for path, sha, *_ in rows:
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == sha
    wells = {(m["well"], m["timepoint"]): m for m in rec.state.wells.values()}
    assert set(wells) == set(expected)
    for key, images in expected.items():  # fields_expected comes from the vendor file, not the config
        assert wells[key]["fields_expected"] == images and wells[key]["frames"] == images
        assert wells[key]["complete"] is True
    layout, *progress = plate_events(config)
    assert layout["event"] == "layout" and layout["layout_file"].endswith((".HTD", ".mlf"))
    assert sorted(layout["wells"]) == sorted({w for w, _ in expected}) and len(layout["timepoints"]) == timepoints
    done = {m["timepoint"] for m in progress if m["event"] == "timepoint_complete"}
    assert done == {t for _, t in expected}
    assert any(m["event"] == "complete" for m in progress) == (timepoints == len(done))


def test_imagexpress_folder_without_htd_uses_config_fields(daemons, tmp_path):
    src = shared_data("vendor-folders", "ImageXpress", "1well-3C-2S-Zmix-T")
    root = tmp_path / "acq"
    root.mkdir()
    config = vendor_config(tmp_path, root, "imagexpress", "1", **{"plate.fields_per_well": 2})
    _, rec = daemons(config)
    acquire_images(src, root)
    settled(rec, 4)
    assert sorted((r[3], r[4], r[5]) for r in journal(config)) == [("C7", f, t) for f in (1, 2) for t in (1, 2)]
    assert all(m["complete"] and m["fields_expected"] == 2 for m in rec.state.wells.values())
    assert plate_events(config) == []  # no vendor layout: nothing to announce


def test_nd2_copied_in_chunks_is_read_frame_by_frame_once_across_restarts(daemons, tmp_path):
    import nd2

    src = shared_data("vendor-files", "nd2", "cluster.nd2")
    root = tmp_path / "acq"
    root.mkdir()
    config = vendor_config(tmp_path, root, "scanr", "FM 4-64/2% CHAPS")
    running, rec = daemons(config)
    for _ in copy_in_chunks(src, root / "cluster.nd2", 16384):
        time.sleep(0.01)
    settled(rec, 30)
    rows = wait_rows(config, 30)
    assert sorted(r[0] for r in rows) == sorted(f"cluster.nd2#{i}" for i in range(30))
    truth = nd2.imread(str(src))  # (T, Z, C, Y, X)
    for path, sha, state, well, field, t, z, channel in rows:
        assert state == "done" and well == "A1" and field == 1 and channel == "FM 4-64/2% CHAPS"
        assert sha == hashlib.sha256(np.ascontiguousarray(truth[t - 1, z, 1]).tobytes()).hexdigest()  # t from 1
    (m,) = [m for m in rec.state.wells.values() if m["timepoint"] == 2]
    assert m["fields_expected"] == 10 and m["complete"]  # 1 position x 10 z planes from the file's metadata
    # the results tables and the dashboard's history judge the well as the daemon does (images, not fields)
    from wellwatch.results.journal_reader import JournalView
    from wellwatch.results.tables import write_results

    _, wells_csv, _, _ = write_results(Path(config.journal.path), tmp_path / "results.csv")
    with open(wells_csv, newline="") as f:
        table = [(r["timepoint"], r["fields"], r["images"], r["images_expected"], r["complete"])
                 for r in csv.DictReader(f)]
    assert table == [(str(t), "1", "10", "10", "True") for t in range(1, 4)]  # .nd2 timepoints count from 1
    daemon_says = {m["timepoint"]: (m["frames"], m["fields_expected"], m["complete"], m["counts"])
                   for m in rec.state.wells.values()}
    history = {w["timepoint"]: (w["frames"], w["fields_expected"], w["complete"], w["counts"])
               for w in JournalView(Path(config.journal.path)).wells()}
    assert history == {t: daemon_says[t] for t in history} and len(history) == 3
    assert all(f["pixel_size_um"] == pytest.approx(0.1678, abs=1e-4) for f in rec.of_type("frame"))
    running.stop()
    again, rec2 = daemons(config)  # a restart finds every frame journaled: nothing is read twice
    time.sleep(2.5)
    assert len(journal(config)) == 30 and rec2.of_type("frame") == []


def test_nd2_layout_event_names_the_plate_and_counts_timepoints_from_1(daemons, tmp_path):
    src = shared_data("vendor-files", "nd2", "cluster.nd2")
    root = tmp_path / "plate-7"
    root.mkdir()
    config = vendor_config(tmp_path, root, "scanr", "FM 4-64/2% CHAPS")
    _, rec = daemons(config)
    shutil.copy2(src, root / "cluster.nd2")
    settled(rec, 30)
    (layout,) = [m for m in plate_events(config) if m["event"] == "layout"]
    assert layout["plate"] == "plate-7" == rec.of_type("frame")[0]["plate"]
    assert layout["timepoints"] == [1, 2, 3] == sorted({f["timepoint"] for f in rec.of_type("frame")})


def test_growing_nd2_frames_are_scored_while_it_is_written(daemons, tmp_path):
    src = shared_data("vendor-files", "nd2", "cluster.nd2")
    root = tmp_path / "acq"
    root.mkdir()
    config = vendor_config(tmp_path, root, "scanr", "5-FAM/pH 9.0")
    _, rec = daemons(config)
    for index in write_live(src, root / "live.nd2"):
        if index == 9:  # a third of the acquisition written: its frames are out before the rest exists
            rec.wait_frames(10, timeout=30)
            assert {f["path"] for f in rec.of_type("frame")} == {f"live.nd2#{i}" for i in range(10)}
    settled(rec, 30)
    assert sorted(r[0] for r in wait_rows(config, 30)) == sorted(f"live.nd2#{i}" for i in range(30))


def test_two_channel_model_on_simulated_dic_and_phase(daemons, tmp_path):
    pytest.importorskip("onnx")
    model = tmp_path / "two-channel.onnx"
    contract = build_two_channel_model(model, ("DIC", "PH"))
    spec = SimulationSpec(wells=("A1", "B2"), fields=2, timepoints=2, size=256, cells_per_field=15,
                          channels=("DIC", "PH"), plate_name="dicph", seed=3)
    config = local_config(tmp_path, spec, model=str(model), **{"channels.label_free": ["DIC", "PH"],
                                                               "inference.device": "cpu"})
    _, rec = daemons(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(8)
    time.sleep(0.5)
    data = tmp_path / "acquisition" / "data"
    rows = journal(config)
    assert len(rows) == 16 and {r[2] for r in rows} == {"done"}  # both channel files of each field
    swapped = []
    for f in frames:  # the daemon's calls = the same computation offline on both files, in model order
        dic = tifffile.imread(data / f["path"])
        ph = tifffile.imread(data / f["path"].replace("--DIC.tif", "--PH.tif"))
        assert f["channel"] == "DIC" and f["channels"] == ["DIC", "PH"]
        assert f["counts"]["dead"] == expected_dead_tiles([dic, ph], contract)
        swapped.append(expected_dead_tiles([ph, dic], contract) != f["counts"]["dead"])
    assert any(swapped)  # the order matters on these fields: a swap would have been caught
    assert all(m["complete"] for m in rec.state.wells.values())


def test_missing_channel_is_reported_not_dropped(daemons, tmp_path):
    pytest.importorskip("onnx")
    model = tmp_path / "two-channel.onnx"
    build_two_channel_model(model, ("DIC", "PH"))
    spec = SimulationSpec(wells=("A1",), fields=2, timepoints=1, size=128, cells_per_field=5,
                          channels=("DIC", "PH"), plate_name="gap", seed=4)
    config = local_config(tmp_path, spec, model=str(model), **{"channels.label_free": ["DIC", "PH"],
                                                               "channels.missing_after_s": 0.5})
    out = tmp_path / "staging"
    write_plate(spec, out)
    held = tmp_path / "held-PH.tif"  # field 2's phase image is held back
    shutil.move(out / "data" / "A1--W00001--P00002--Z00000--T00000--PH.tif", held)
    _, rec = daemons(config)
    for p in sorted((out / "data").glob("*.tif")):
        shutil.copy(p, tmp_path / "acquisition" / "data" / p.name)
    rec.wait_frames(1)
    deadline = time.monotonic() + 10
    while not (missing := [m for m in rec.of_type("status") if m["kind"] == "channel_missing"]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    (m,) = missing
    assert (m["well"], m["field"], m["present"], m["missing"]) == ("A1", 2, ["DIC"], ["PH"])
    assert len(rec.of_type("frame")) == 1
    shutil.copy(held, tmp_path / "acquisition" / "data" / "A1--W00001--P00002--Z00000--T00000--PH.tif")
    rec.wait_frames(2)  # the late channel completes the field: it is scored then


def test_two_channel_model_on_multichannel_ome_tiffs(daemons, tmp_path):
    """One file per field holding both channels (pages named by OME-XML), NIS-Elements names without c."""
    pytest.importorskip("onnx")
    from wellwatch.simulator.plate import iter_fields

    model = tmp_path / "two-channel.onnx"
    contract = build_two_channel_model(model, ("DIC", "PH"))
    spec = SimulationSpec(wells=("B3",), fields=2, timepoints=1, size=192, cells_per_field=10,
                          channels=("PH", "DIC"), plate_name="ome", seed=6)
    config = local_config(tmp_path, spec, model=str(model), **{
        "channels.label_free": ["DIC", "PH"], "watch.naming": "nis", "plate.fields_per_well": 2})
    _, rec = daemons(config)
    data = tmp_path / "acquisition" / "data"
    expected = {}
    for f in iter_fields(spec):  # pages in the file's order (PH first): names, not positions, decide
        name = f"run_B03_t01xy{f.field:02d}.tif"  # OME-XML inside; NIS names carry no .ome
        tifffile.imwrite(data / name, np.stack([f.images["PH"], f.images["DIC"]]), ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["PH", "DIC"]}})
        expected[name] = expected_dead_tiles([f.images["DIC"], f.images["PH"]], contract)
    frames = rec.wait_frames(2)
    assert {f["path"]: f["counts"]["dead"] for f in frames} == expected
    time.sleep(0.3)
    (well,) = rec.state.wells.values()
    assert well["complete"] and well["frames"] == 2

