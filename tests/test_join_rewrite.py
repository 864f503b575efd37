"""A joined field (two-channel model, DIC + PH) one of whose channel files is re-written after the
field was counted: the field is scored again once, as a new version, with the new file and its
partner's current file on disk; nothing is counted twice, across a restart too; a partner gone from
disk is reported as a missing channel.

Real parts: the daemon in-process, watchdog, TIFF files, a real SQLite journal, ONNX Runtime,
ZeroMQ on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.two_channel_model import build_two_channel_model, expected_dead_tiles
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

pytestmark = pytest.mark.integration

CHANNELS = ("DIC", "PH")
SPEC = SimulationSpec(wells=("A1",), fields=1, timepoints=1, size=128, cells_per_field=6,
                      channels=CHANNELS, plate_name="rewrite", seed=5)
NAME = "A1--W00001--P00001--Z00000--T00000--{}.tif"


@pytest.fixture
def model(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "two-channel.onnx"
    return path, build_two_channel_model(path, CHANNELS)


def start(run_daemon, recorder_for, model_path: Path, **extra):
    config, daemon = run_daemon(SPEC, model=str(model_path), **{"channels.label_free": list(CHANNELS),
                                                                "inference.device": "cpu", **extra})
    return config, daemon, recorder_for(config)


def data(tmp_path: Path) -> Path:
    return tmp_path / "acquisition" / "data"


def rewrite(path: Path) -> np.ndarray:
    """Re-acquire one channel file with new pixels (mirrored: other calls), written under a temp
    name and renamed into place as microscopes do; returns the new image."""
    image = tifffile.imread(path)[:, ::-1].copy()
    tmp = path.with_suffix(".tmp")
    tifffile.imwrite(tmp, image)
    os.replace(tmp, path)
    return image


def versions(config) -> dict[str, list[tuple[int, str, int | None]]]:
    """rel path -> [(version, sha256, dead)] in version order."""
    with sqlite3.connect(config.journal.path) as db:
        rows = db.execute("SELECT path, version, sha256, dead FROM frames WHERE state = 'done' "
                          "ORDER BY path, version").fetchall()
    out: dict[str, list] = {}
    for path, version, sha, dead in rows:
        out.setdefault(path, []).append((version, sha, dead))
    return out


def max_seq(config) -> int:
    """The seq of the latest well message the journal holds."""
    with sqlite3.connect(config.journal.path) as db:
        return db.execute("SELECT MAX(seq) FROM outbox WHERE topic LIKE 'well/%'").fetchone()[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_scored_again_once(config, folder: Path, contract) -> int:
    """The journal holds version 2 of both of the field's files, as they are on disk, the counts on
    the DIC file's row; returns the field's dead tiles computed offline from both files."""
    dic, ph = (folder / NAME.format(c) for c in CHANNELS)
    expected = expected_dead_tiles([tifffile.imread(dic), tifffile.imread(ph)], contract)
    rows = versions(config)
    assert [v for v, _, _ in rows[dic.name]] == [1, 2] and [v for v, _, _ in rows[ph.name]] == [1, 2]
    assert rows[dic.name][-1][1] == sha256(dic) and rows[ph.name][-1][1] == sha256(ph)
    assert rows[dic.name][-1][2] == expected and rows[ph.name][-1][2] is None
    return expected


def wait_well(rec, predicate, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wells = [m for m in rec.of_type("well") if predicate(m)]
        if wells:
            return wells[-1]
        time.sleep(0.05)
    raise AssertionError(f"no matching well message within {timeout} s: {rec.of_type('well')}")


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_rewritten_channel_file_rescores_its_field_once(run_daemon, recorder_for, tmp_path, model, channel):
    """The field's scored file (DIC) or its joined partner (PH) is re-written after the field was
    counted: one new scoring, the partner read from disk, the well's counts replaced, not added."""
    model_path, contract = model
    config, _, rec = start(run_daemon, recorder_for, model_path)
    write_plate(SPEC, tmp_path / "acquisition")
    rec.wait_frames(1)
    rewrite(data(tmp_path) / NAME.format(channel))
    second = rec.wait_frames(2, timeout=30)[1]
    expected = assert_scored_again_once(config, data(tmp_path), contract)
    assert (second["path"], second["version"], second["counts"]["dead"]) == (NAME.format("DIC"), 2, expected)
    well = wait_well(rec, lambda m: m["seq"] > second["seq"])
    assert well["frames"] == 1 and well["counts"] == second["counts"]  # replaced: not first + second
    time.sleep(2.5)  # a reconcile scan (2 s) finds nothing more to score
    assert len(rec.of_type("frame")) == 2


def test_a_rewrite_while_the_daemon_was_stopped_rescores_the_field_after_restart(run_daemon, recorder_for,
                                                                                 tmp_path, model):
    """The journal, not memory, knows the field's partner file: a PH re-written while the daemon was
    down is scored with the DIC file once the daemon is back."""
    model_path, contract = model
    config, daemon, rec = start(run_daemon, recorder_for, model_path)
    write_plate(SPEC, tmp_path / "acquisition")
    rec.wait_frames(1)
    time.sleep(0.3)  # the commit's messages are sent
    assert daemon.stop() == 0
    rewrite(data(tmp_path) / NAME.format("PH"))
    config, _, rec = start(run_daemon, recorder_for, model_path)
    dic = NAME.format("DIC")
    deadline = time.monotonic() + 30  # scored at start-up, maybe before the recorder connected: the journal tells
    while len(versions(config).get(dic, ())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    expected = assert_scored_again_once(config, data(tmp_path), contract)
    deadline = time.monotonic() + 10  # the snapshot, or an update after it, holds the well's latest message
    while (well := rec.state.wells.get(("rewrite", "A1", 0))) is None or well["seq"] < max_seq(config):
        assert time.monotonic() < deadline, f"the well's latest message never reached the subscriber: {well}"
        time.sleep(0.05)
    assert well["frames"] == 1 and well["counts"]["dead"] == expected  # the new version replaced the old
    time.sleep(2.5)  # a reconcile scan (2 s) finds nothing more to score
    assert len(versions(config)[dic]) == 2


def test_both_channel_files_rewritten_end_with_the_field_as_on_disk(run_daemon, recorder_for, tmp_path, model):
    """Both files re-acquired one after the other: whichever comes first brings the other's file
    from disk; the field's last scoring is of both new files, and the well counts it once."""
    model_path, contract = model
    config, _, rec = start(run_daemon, recorder_for, model_path)
    write_plate(SPEC, tmp_path / "acquisition")
    rec.wait_frames(1)
    folder = data(tmp_path)
    dic, ph = rewrite(folder / NAME.format("DIC")), rewrite(folder / NAME.format("PH"))
    expected = expected_dead_tiles([dic, ph], contract)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            (frames := rec.of_type("frame"))[-1]["counts"]["dead"] == expected
            and all(r[-1][1] == sha256(folder / p) for p, r in versions(config).items())):
        time.sleep(0.05)
    last = frames[-1]
    assert last["counts"]["dead"] == expected and 2 <= len(frames) <= 3
    assert all(r[-1][1] == sha256(folder / p) for p, r in versions(config).items())
    well = wait_well(rec, lambda m: m["seq"] > last["seq"])
    assert well["frames"] == 1 and well["counts"] == last["counts"]


def test_a_rewrite_whose_partner_is_gone_is_reported_as_a_missing_channel(run_daemon, recorder_for, tmp_path,
                                                                          model):
    model_path, _ = model
    config, _, rec = start(run_daemon, recorder_for, model_path, **{"channels.missing_after_s": 0.5})
    write_plate(SPEC, tmp_path / "acquisition")
    rec.wait_frames(1)
    (data(tmp_path) / NAME.format("DIC")).unlink()
    rewrite(data(tmp_path) / NAME.format("PH"))
    deadline = time.monotonic() + 15
    while not (missing := [m for m in rec.of_type("status") if m["kind"] == "channel_missing"]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    (m,) = missing
    assert (m["well"], m["field"], m["present"], m["missing"]) == ("A1", 1, ["PH"], ["DIC"])
    assert len(rec.of_type("frame")) == 1
