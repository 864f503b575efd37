"""`wellwatch reprocess` against the daemon: same files, same models -> the same per-frame results.

The daemon runs on a small simulated plate (real TIFFs, watchdog, SQLite); then the archive is
reprocessed in-process and on a local Ray cluster (2 CPUs, no dashboard), and each frame's row is
compared with the daemon's journal row.
"""

from __future__ import annotations

import sqlite3
import time

import pyarrow.parquet as pq
import pytest

from wellwatch.cli import main
from wellwatch.harness import local_config, start_daemon
from wellwatch.scale.reprocess import reprocess, wells_path
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

pytestmark = pytest.mark.integration

# classical parameters for the simulator's cells (as benchmarks/per_cell_live_dead.py)
SIMULATED = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}
COMPARED = ("path", "sha256", "state", "live", "dead", "empty", "cells", "cell_live", "cell_dead")


def counted_by_daemon(tmp, segmentation: dict, cell_scale: float = 1.0):
    """A plate the daemon has counted: its config and journal rows."""
    spec = SimulationSpec(wells=("A1", "A6", "B3"), fields=2, timepoints=1, size=256, cells_per_field=15,
                          channels=("BF", "PI"), treatment="dose_series", plate_name="p1", seed=8,
                          cell_scale=cell_scale)
    config = local_config(tmp, spec, **{"segmentation.workers": 1, "inference.device": "cpu", **segmentation})
    write_plate(spec, tmp / "acquisition")
    (tmp / "acquisition" / "data" / "A1--W00001--P00009--Z00000--T00000--BF.tif").write_bytes(b"not a tiff")
    daemon = start_daemon(config)
    n = 7
    deadline = time.monotonic() + 90
    try:
        while True:
            with sqlite3.connect(config.journal.path) as db:
                try:
                    rows = db.execute(f"SELECT {', '.join(COMPARED)} FROM frames ORDER BY path").fetchall()
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) == n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        daemon.stop()
    assert len(rows) == n, f"the daemon journaled {len(rows)} of {n} frames"
    return config, [dict(zip(COMPARED, r)) for r in rows]


@pytest.fixture(scope="module")
def daemon_run(tmp_path_factory):
    """Classical segmentation on: every stage but a segmentation network."""
    return counted_by_daemon(tmp_path_factory.mktemp("archive"), {
        "segmentation.method": "classical", **{f"segmentation.classical.{k}": v for k, v in SIMULATED.items()}})


def per_frame(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in COMPARED} for r in rows]


def test_local_engine_equals_the_daemon_per_frame(daemon_run):
    config, journal = daemon_run
    result = reprocess([config.watch.root], config, engine="local", batch_frames=3)
    assert per_frame(result.frames) == journal
    assert sum(r["state"] == "quarantined" for r in result.frames) == 1  # the damaged file, as the daemon
    assert any(r["cells"] for r in journal)  # the per-cell path really ran
    # the per-well rows are the daemon's aggregation of those frames
    a1 = next(w for w in result.wells if w["well"] == "A1")
    done = [r for r in journal if r["path"].startswith("A1--") and r["state"] == "done"]
    assert a1["frames"] == 2 and a1["complete"] and a1["live"] == sum(r["live"] for r in done)


def test_local_engine_equals_the_daemon_with_a_segmentation_network(tmp_path):
    # cells the size the bundled phase-contrast model segments (its smallest kept cell is 600 px)
    config, journal = counted_by_daemon(tmp_path, {"segmentation.method": "model"}, cell_scale=2.5)
    result = reprocess([config.watch.root], config, engine="local", batch_frames=4)
    assert per_frame(result.frames) == journal
    assert any(r["cells"] for r in journal)


def test_ray_engine_equals_the_daemon_per_frame(daemon_run, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    config, journal = daemon_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = reprocess([config.watch.root], config, engine="ray", workers=2, batch_frames=2)
    finally:
        ray.shutdown()
    assert per_frame(result.frames) == journal


def test_cli_writes_frame_and_well_parquet(daemon_run, tmp_path):
    config, journal = daemon_run
    toml = tmp_path / "c.toml"
    toml.write_text(f'[watch]\nroot = "{config.watch.root}"\n[plate]\nname = "p1"\nfields_per_well = 2\n'
                    f'[segmentation]\nmethod = "classical"\n[inference]\ndevice = "cpu"\n'
                    f'[segmentation.classical]\n' + "".join(f"{k} = {v!r}\n".replace("'", '"')
                                                            for k, v in SIMULATED.items()))
    out = tmp_path / "out" / "results.parquet"
    assert main(["reprocess", config.watch.root, "--config", str(toml), "--out", str(out)]) == 0
    frames = pq.read_table(out).to_pylist()
    assert per_frame(frames) == journal
    wells = pq.read_table(wells_path(out))
    assert wells.num_rows == 3 and b"wellwatch.models" in wells.schema.metadata
    assert main(["reprocess", str(tmp_path / "nowhere"), "--config", str(toml), "--out", str(out)]) == 2
