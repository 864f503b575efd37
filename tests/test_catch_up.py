"""A daemon started on a plate already written (every restart and late start does this) counts
every well as a daemon that watched it being written: its range snapshot equals `results`."""

from __future__ import annotations

import csv
import sqlite3
import time

import pytest
import zmq

from wellwatch.client import request_snapshot
from wellwatch.results.tables import write_results
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

from .conftest import wait_ready

pytestmark = pytest.mark.integration


def test_start_on_a_written_plate_counts_both_fields_of_every_well_and_timepoint(tmp_path):
    """Defect 4 (`simulate --wells 12 --fields 2 --timepoints 4`, then `run`): 13-16 of 48 (well,
    timepoint)s had frames 1, complete false, in the daemon's own range snapshot."""
    spec = SimulationSpec(wells=(), fields=2, timepoints=4, size=128, cells_per_field=4, channels=("BF",),  # 12 wells
                          plate_name="written", seed=4)
    config = local_config(tmp_path, spec)
    write_plate(spec, tmp_path / "acquisition")
    running = start_daemon(config)
    try:
        wait_ready(config)
        deadline = time.monotonic() + 120
        while True:
            with sqlite3.connect(config.journal.path) as db:
                if db.execute("SELECT COUNT(*) FROM frames WHERE state = 'done'").fetchone()[0] == 96:
                    break
            assert time.monotonic() < deadline, "the plate was not counted"
            time.sleep(0.2)
        time.sleep(0.5)  # the last messages leave the publisher
        reply = request_snapshot(zmq.Context.instance(), config.publish.snapshot_endpoint, timepoints=(0, 3))
    finally:
        assert running.stop() == 0
    daemon_says = {(w["well"], w["timepoint"]): (w["frames"], w["complete"], w["counts"]) for w in reply["wells"]}
    assert len(daemon_says) == 48
    assert sorted(k for k, (frames, complete, _) in daemon_says.items() if frames != 2 or not complete) == []
    _, wells_csv, _, _ = write_results(tmp_path / "journal.sqlite", tmp_path / "results.csv")
    with open(wells_csv, newline="") as f:
        table = {(r["well"], int(r["timepoint"])): (int(r["images"]), r["complete"] == "True",
                                                     {c: int(r[c]) for c in ("live", "dead", "empty")})
                 for r in csv.DictReader(f)}
    assert table == daemon_says
