"""IC50 and GR50 recovered from a simulated dose-series plate, against the simulator's truth.

The simulator grows cells (1 doubling over the run in untreated wells) and kills them along a Hill
curve (EC50 1 uM, Hill 1.5); 3 rows x 10 columns (2 control columns, 8 log-spaced doses),
2 fields, 3 timepoints. The daemon counts the plate with classical segmentation and the demo
live/dead model and, with `[plate] map` set to the simulator's plate map, publishes `dose` fits.
Printed per timepoint: IC50 and GR50 with 95% CIs from (a) the simulator's true counts and
(b) the daemon's published fits, each with its error against the truth (dose_truth.json).

    python benchmarks/dose_response_simulated.py      # about 2-3 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from wellwatch.client import follow
from wellwatch.core.dose import WellReading, dose_response
from wellwatch.core.plate_map import read_plate_map
from wellwatch.harness import local_config, start_daemon, start_writer
from wellwatch.simulator.plate import plan_plate
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import DOSE_TRUTH, PLATE_MAP, ground_truth, plate_map_csv

# classical parameters for the simulator's cells (see benchmarks/per_cell_live_dead.py)
SIMULATED = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}
SPEC = SimulationSpec(wells=tuple(f"{r}{c}" for r in "ABC" for c in range(1, 11)), fields=2, timepoints=3,
                      cells_per_field=40, treatment="dose_series", control_columns=2, growth_doublings=1.0,
                      channels=("BF",), write_mode="rename", plate_name="dose-bench", seed=31)


def describe(label: str, fit: dict, truth: float | None, key: str) -> str:
    value, ci = fit.get(key), fit.get(f"{key}_ci")
    if value is None or truth is None:
        return f"{label} {key.upper()} - ({fit.get('reason', 'no truth')})"
    ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[-]"
    covered = "yes" if ci and ci[0] <= truth <= ci[1] else "no"
    return (f"{label} {key.upper()} {value:.3f} {ci_text} truth {truth:.3f} error {100 * (value / truth - 1):+.1f}% "
            f"(truth in CI: {covered})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=SPEC.fields)
    parser.add_argument("--cells-per-field", type=float, default=SPEC.cells_per_field)
    parser.add_argument("--seed", type=int, default=SPEC.seed)
    args = parser.parse_args()
    spec = dataclasses.replace(SPEC, fields=args.fields, cells_per_field=args.cells_per_field, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="wellwatch-dose-"))
    acquisition = work / "acquisition"
    acquisition.mkdir(parents=True)
    plan = plan_plate(spec)
    (work / "plate_map.csv").write_text(plate_map_csv(plan))  # the map exists before imaging starts
    config = local_config(work, spec, **{"segmentation.method": "classical", "plate.map": str(work / "plate_map.csv"),
                                         **{f"segmentation.classical.{k}": v for k, v in SIMULATED.items()}})
    running = start_daemon(config)
    fits: dict[int, dict] = {}
    n_frames = len(spec.wells) * spec.fields * spec.timepoints
    start = time.monotonic()
    try:
        stream = follow(config.publish.endpoint, config.publish.snapshot_endpoint, topics=("well/", "dose/"),
                        timeout_s=120)
        next(stream)
        writer = start_writer(spec, acquisition)
        counted: dict[tuple, int] = {}
        for _, message, _ in stream:
            if message["type"] == "well":
                counted[(message["well"], message["timepoint"])] = message["frames"]
                done = sum(counted.values())
                if done % 30 == 0:
                    print(f"{done}/{n_frames} fields counted, {time.monotonic() - start:.0f} s", file=sys.stderr)
            elif message["type"] == "dose":
                fits[message["timepoint"]] = message
            if len(fits) == spec.timepoints:
                break
        writer.join()
    finally:
        running.stop()
    truth = json.loads((acquisition / DOSE_TRUTH).read_text())["timepoints"]
    doc, _ = ground_truth(spec, plan)
    pm = read_plate_map(acquisition / PLATE_MAP)
    true_counts = {(w["well"], w["timepoint"]): WellReading(w["live_fraction"], w["live"]) for w in doc["wells"]}
    print(f"plate: {len(spec.wells)} wells (2 control columns, 8 doses 0.01-100 uM, 3 replicates), "
          f"{spec.fields} fields, {spec.timepoints} timepoints, growth {spec.growth_doublings} doubling(s); "
          f"{n_frames} frames counted in {time.monotonic() - start:.0f} s")
    for t in range(1, spec.timepoints):
        exact = dose_response(pm, "simdrug", true_counts, t)
        daemon = fits.get(t)
        print(f"timepoint {t}:")
        print("  " + describe("simulator counts", exact["viability_fit"], truth[t]["ic50"], "ic50"))
        print("  " + describe("simulator counts", exact["gr_fit"], truth[t]["gr50"], "gr50"))
        if daemon is None:
            print("  daemon: no dose message for this timepoint")
            continue
        print("  " + describe("daemon          ", daemon["viability_fit"], truth[t]["ic50"], "ic50"))
        print("  " + describe("daemon          ", daemon["gr_fit"], truth[t]["gr50"], "gr50"))
    print(f"journal: {config.journal.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
