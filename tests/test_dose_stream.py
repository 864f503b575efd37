"""The daemon with `[plate] map`: dose fits on `dose/<plate>/<compound>`, journaled like every message."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from wellwatch.core.config import load_config
from wellwatch.core.errors import ConfigError
from wellwatch.simulator.plate import plan_plate
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import plate_map_csv, write_plate

SPEC = SimulationSpec(wells=("A1", "A2", "A3", "A4", "A5", "A6"), fields=1, timepoints=2, size=192, cells_per_field=10,
                      channels=("BF",), treatment="dose_series", control_columns=1, plate_name="dose-stream", seed=6)


@pytest.mark.integration
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
    # fields_per_well is set: each timepoint is fitted once, when its last well is complete, even
    # when frames of the next timepoint are counted before it (parallel readers)
    assert [(d["topic"], d["timepoint"]) for d in doses] == [("dose/dose-stream/simdrug", 0), ("dose/dose-stream/simdrug", 1)]
    last = {d["timepoint"]: d for d in doses}
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


@pytest.mark.unit
def test_a_missing_plate_map_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="plate.map.*no such file"):
        load_config(None, {"plate.map": str(tmp_path / "nope.csv")})


SIMULATED_CELLS = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
                   "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}


@pytest.mark.integration
def test_a_restarted_daemon_keeps_its_dose_history(tmp_path):
    """Stopped after two timepoints and started again: the fits already published are not sent
    again, and the third timepoint's GR still counts from the first timepoint (from the journal)."""
    from wellwatch.harness import local_config, start_daemon

    spec = SimulationSpec(**{**SPEC.__dict__, "timepoints": 3, "growth_doublings": 1.0, "cells_per_field": 20})
    (tmp_path / "map.csv").write_text(plate_map_csv(plan_plate(spec)))
    write_plate(spec, tmp_path / "source")
    config = local_config(tmp_path, spec, **{"plate.map": str(tmp_path / "map.csv"), "watch.settle_s": 0.05,
                                             "segmentation.method": "classical", "segmentation.workers": 1,
                                             **{f"segmentation.classical.{k}": v for k, v in SIMULATED_CELLS.items()}})
    data = Path(config.watch.root)

    def copy(timepoint: int) -> None:
        for f in sorted((tmp_path / "source" / "data").glob(f"*--T{timepoint:05d}--*.tif")):
            (data / f.name).write_bytes(f.read_bytes())

    def doses() -> list[dict]:
        if not Path(config.journal.path).exists():
            return []
        with sqlite3.connect(config.journal.path) as db:
            return [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE topic LIKE 'dose/%' ORDER BY seq")]

    def wait_doses(timepoints: set[int]) -> None:
        deadline = time.monotonic() + 90
        while {d["timepoint"] for d in doses()} != timepoints and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {d["timepoint"] for d in doses()} == timepoints

    first = start_daemon(config)
    copy(0)
    copy(1)
    wait_doses({0, 1})
    assert first.stop() == 0
    before = [d["seq"] for d in doses()]
    second = start_daemon(config)
    copy(2)
    wait_doses({0, 1, 2})
    assert second.stop() == 0
    after = doses()
    assert [d["seq"] for d in after if d["timepoint"] < 2] == before, "fits already published are not sent again"
    last = [d for d in after if d["timepoint"] == 2][-1]
    assert last["controls"]["doublings"] is not None and last["controls"]["doublings"] > 0.5
    assert all(p["gr"] is not None for p in last["points"]), last["controls"]
