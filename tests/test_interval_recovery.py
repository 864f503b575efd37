"""A calibrated model's per-well estimates survive a restart and an evicted timepoint's refill.

The mean_probability estimator needs each field's sum of P(dead); the journal keeps it beside the
counts, so a daemon killed with SIGKILL and restarted, or one that brings an old timepoint back from
the journal, publishes the well messages an uninterrupted run does. Real parts: `wellwatch run`
processes, kill -9, TIFF files, a real SQLite journal, ZeroMQ on 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from wellwatch.core.aggregate import PlateAggregate
from wellwatch.results.journal_reader import well_history
from wellwatch.core.intervals import Calibration, live_fraction_fields
from wellwatch.daemon.journal import FrameRecord, Journal
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.writer import write_plate

from .calibrated_model import calibrated_demo_model
from .test_daemon_ops import config_of, plate, start, wait_rows, write_config
from .test_daemon_segmentation import SIMULATED_BF

TILE_CAL = Calibration("mean_probability", {"0.9": 0.1}, "per-well fractions only", wells=9)
CELL_CAL = Calibration("mean_probability", {"0.9": 0.1}, "per-well fractions only", unit="cell", wells=9)


def deliver(files: list[Path], root: Path) -> None:
    """As an acquisition writes them: each file appears whole (copied beside, then renamed in)."""
    for f in files:
        staging = root.parent / f".{f.name}"
        shutil.copy2(f, staging)
        os.replace(staging, root / f.name)


def final_well_messages(journal: str) -> dict[tuple, dict]:
    """The last well message per (plate, well, timepoint), without what differs between runs."""
    return {(m["plate"], m["well"], m["timepoint"]):
            {k: v for k, v in m.items() if k not in ("seq", "source") and not k.startswith("t_")}
            for m in well_history(journal)}


def assert_same(got, want, where: str = "") -> None:
    """Equal, floats to 1e-6 (ONNX Runtime may batch tiles differently from run to run)."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {got} != {want}"
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.unit
def test_old_journal_rows_give_a_null_estimate_never_a_wrong_one(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the frames table as the release before the P(dead) sums made it
        db.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL, "
                   "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, "
                   "reason TEXT, plate TEXT, well TEXT, field INTEGER, timepoint INTEGER, z INTEGER, channel TEXT, "
                   "live INTEGER, dead INTEGER, empty INTEGER, t_file REAL, t_done REAL, seq INTEGER, cells INTEGER, "
                   "cell_live INTEGER, cell_dead INTEGER, cell_types TEXT, UNIQUE (path, version))")
        db.execute("INSERT INTO frames (path, size, mtime_ns, sha256, version, state, plate, well, field, timepoint, "
                   "z, channel, live, dead, empty) VALUES ('a.tif', 1, 1, 'x', 1, 'done', 'p', 'A1', 1, 0, 0, 'BF', 3, 1, 0)")
    journal = Journal(path)
    try:
        new = FrameRecord("b.tif", 1, 1, "y", 1, "done", None, "p", "A1", 2, 0, 0, "BF", 2, 2, 0, 0.0, 0.0, 7,
                          dead_p_sum=1.75)
        journal.commit([new], [])
        old_counts, new_counts = (r.counts() for r in journal.records())
        assert (old_counts.dead_p_sum, new_counts.dead_p_sum) == (None, 1.75)
        agg = PlateAggregate(2)
        for f, z, c in journal.field_counts("p", "A1", 0):
            state = agg.add("p", "A1", 0, f, c, z=z)
        t = state.totals()
        # a partial sum over one of two fields would be a wrong number: the estimate is null instead
        assert live_fraction_fields(TILE_CAL, 0.9, t.live, t.dead, t.dead_p_sum)["live_fraction_estimate"] is None
        alone = new_counts
        assert live_fraction_fields(TILE_CAL, 0.9, alone.live, alone.dead, alone.dead_p_sum)[
            "live_fraction_estimate"] == pytest.approx(1 - 1.75 / 4)
    finally:
        journal.close()


def run_to_the_end(cfg: Path, journal: Path, rows: int) -> None:
    proc = start(cfg)
    try:
        assert wait_rows(journal, rows, timeout=90) == rows
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        proc.kill()


@pytest.mark.integration
def test_well_estimates_after_kill_9_and_restart_equal_an_uninterrupted_runs(tmp_path):
    spec = plate(wells=("A1", "A2"), fields=2, timepoints=1)
    write_plate(spec, tmp_path / "staged")
    files = sorted((tmp_path / "staged" / "data").glob("*.tif"))
    first_fields = [f for f in files if "--P00001--" in f.name]
    assert 0 < len(first_fields) < len(files)
    model = calibrated_demo_model(tmp_path / "calibrated.onnx", TILE_CAL)
    extra = {"models.live_dead.path": f'"{model}"', "intervals.level": "0.9"}

    reference = config_of(write_config(tmp_path / "reference", **extra))  # in-process: one start fewer
    daemon = start_daemon(reference)
    try:
        deliver(files, Path(reference.watch.root))
        assert wait_rows(Path(reference.journal.path), len(files), timeout=90) == len(files)
    finally:
        assert daemon.stop() == 0

    killed = write_config(tmp_path / "killed", **extra)
    root, journal = tmp_path / "killed" / "acq" / "data", tmp_path / "killed" / "journal.sqlite"
    deliver(first_fields, root)
    proc = start(killed)
    try:
        assert wait_rows(journal, len(first_fields), timeout=90) == len(first_fields)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    deliver([f for f in files if f not in first_fields], root)
    run_to_the_end(killed, journal, len(files))

    want = final_well_messages(reference.journal.path)
    got = final_well_messages(str(journal))
    assert want.keys() == got.keys() and len(want) == len(spec.wells)
    for key, message in want.items():
        assert message["complete"] and message["estimator"] == "mean_probability"
        assert message["live_fraction_estimate"] is not None  # the estimate the restart must reproduce
        assert_same(got[key], message, str(key))


@pytest.mark.integration
def test_a_refilled_evicted_timepoint_publishes_what_an_uninterrupted_run_does(tmp_path):
    """Cells (a cell calibration, classical segmentation): timepoint 0 leaves memory when timepoint 2
    arrives (two are kept); its second field then brings its first back from the journal."""
    spec = plate(wells=("A1",), fields=2, timepoints=3, size=256, cells_per_field=12, seed=11)
    write_plate(spec, tmp_path / "staged")
    files = sorted((tmp_path / "staged" / "data").glob("*.tif"))
    model = calibrated_demo_model(tmp_path / "calibrated.onnx", CELL_CAL)
    overrides = {"intervals.level": 0.9, "segmentation.method": "classical", "segmentation.workers": 1,
                 **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}}

    def run(workdir: Path, batches: list[list[Path]]) -> dict[tuple, dict]:
        config = local_config(workdir, spec, model=str(model), **overrides)
        daemon = start_daemon(config)
        try:
            delivered = 0
            for batch in batches:
                deliver(batch, Path(config.watch.root))
                delivered += len(batch)
                assert wait_rows(Path(config.journal.path), delivered, timeout=90) == delivered
        finally:
            assert daemon.stop() == 0
        return final_well_messages(config.journal.path)

    def named(field: int, timepoint: int) -> Path:
        return next(f for f in files if f"--P{field:05d}--" in f.name and f"--T{timepoint:05d}--" in f.name)

    want = run(tmp_path / "reference", [[named(1, t), named(2, t)] for t in range(spec.timepoints)])
    order = [named(1, 0), named(1, 1), named(1, 2), named(2, 0), named(2, 1), named(2, 2)]
    got = run(tmp_path / "refilled", [[f] for f in order])
    assert want.keys() == got.keys() and len(want) == spec.timepoints
    for key, message in want.items():
        assert message["complete"] and message["cell_estimator"] == "mean_probability" and message["cells"]
        assert message["cell_live_fraction_estimate"] is not None
        assert_same(got[key], message, str(key))
