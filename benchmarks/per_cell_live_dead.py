"""Per-cell live/dead calls against the simulator's truth, beside the per-tile live fraction.

A simulated 96-well dose-series plate (12 wells x 2 fields x 3 timepoints, bright-field + PI)
through the daemon with classical segmentation and the bundled demo live/dead model: per well and
timepoint, `live_fraction` (tiles) and `cell_live_fraction` (each segmented cell called from the
tiles at its centroid) against the simulated cells' true live fraction, and `cells` against the
true cell count.

    python benchmarks/per_cell_live_dead.py        (about a minute on a 2-core CPU)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from wellwatch.client import follow
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

# classical parameters for the simulator's cells (see benchmarks/cell_types_simulated.py)
SIMULATED = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}


def main() -> int:
    spec = SimulationSpec(fields=2, timepoints=3, treatment="dose_series", seed=21, channels=("BF", "PI"))
    work = Path(tempfile.mkdtemp(prefix="wellwatch-percell-"))
    config = local_config(work, spec, **{"segmentation.method": "classical",
                                         **{f"segmentation.classical.{k}": v for k, v in SIMULATED.items()}})
    running = start_daemon(config)
    wells: dict = {}
    try:
        stream = follow(config.publish.endpoint, config.publish.snapshot_endpoint, topics=("well/",), timeout_s=120)
        next(stream)  # subscribed
        write_plate(spec, work / "acquisition")
        for _, msg, _ in stream:
            wells[(msg["well"], msg["timepoint"])] = msg
            if len(wells) == len(spec.wells) * spec.timepoints and all(w["complete"] for w in wells.values()):
                break
    finally:
        running.stop()
    truth = {(w["well"], w["timepoint"]): w
             for w in json.loads((work / "acquisition" / "ground_truth.json").read_text())["wells"]}
    tile = np.array([m["live_fraction"] - truth[k]["live_fraction"] for k, m in wells.items()])
    cell = np.array([m["cell_live_fraction"] - truth[k]["live_fraction"] for k, m in wells.items()])
    count = np.array([m["cells"] - truth[k]["live"] - truth[k]["dead"] for k, m in wells.items()])
    print(f"{len(wells)} well-timepoints; live fraction against the true cells':")
    print(f"  per tile: mean absolute error {np.abs(tile).mean():.3f}, max {np.abs(tile).max():.3f}")
    print(f"  per cell: mean absolute error {np.abs(cell).mean():.3f}, max {np.abs(cell).max():.3f}")
    print(f"  cells found - true cells: mean {count.mean():+.1f}, largest |difference| {np.abs(count).max()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
