"""The daemon with `[plate] map`: dose fits on `dose/<plate>/<compound>`, journaled like every message."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from wellwatch.daemon.config import load_config
from wellwatch.daemon.errors import ConfigError
from wellwatch.simulator.plate import plan_plate
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import plate_map_csv, write_plate

SPEC = SimulationSpec(wells=("A1", "A2", "A3", "A4", "A5", "A6"), fields=1, timepoints=2, size=192, cells_per_field=10,
                      channels=("BF",), treatment="dose_series", control_columns=1, plate_name="dose-stream", seed=6)


def test_daemon_publishes_a_fit_per_compound_when_each_timepoint_completes(run_daemon, recorder_for, tmp_path):
    (tmp_path / "map.csv").write_text(plate_map_csv(plan_plate(SPEC)))
    config, _ = run_daemon(SPEC, **{"plate.map": str(tmp_path / "map.csv"), "watch.settle_s": 0.05})
    rec = recorder_for(config)
    write_plate(SPEC, tmp_path / "acquisition")
    rec.wait_frames(len(SPEC.wells) * SPEC.timepoints)
    deadline = time.monotonic() + 30
    while len(rec.of_type("dose")) < SPEC.timepoints and time.monotonic() < deadline:
        time.sleep(0.05)
    doses = rec.of_type("dose")
    assert {(d["topic"], d["timepoint"]) for d in doses} == {("dose/dose-stream/simdrug", 0), ("dose/dose-stream/simdrug", 1)}
    last = {d["timepoint"]: d for d in doses}  # a well that changes again refits its timepoint
    for d in last.values():
        assert {"schema", "seq", "type", "plate", "timepoint", "models", "t_created", "t_published"} <= set(d)
        assert d["complete"] and len(d["points"]) == 5 and d["controls"]["wells"] == 1
        assert d["models"] == rec.of_type("frame")[0]["models"]
    # each fit follows the well message that completed its timepoint, and is journaled
    last_well_t1 = max(m["seq"] for m in rec.of_type("well") if m["timepoint"] == 1)
    assert last[1]["seq"] == last_well_t1 + 1
    with sqlite3.connect(config.journal.path) as db:
        journaled = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE topic LIKE 'dose/%'")]
    assert [d["seq"] for d in journaled] == [d["seq"] for d in doses]


def test_a_missing_plate_map_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="plate.map.*no such file"):
        load_config(None, {"plate.map": str(tmp_path / "nope.csv")})
