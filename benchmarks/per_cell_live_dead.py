"""Per-cell live/dead calls against the simulator's truth: tiles at the centroid vs a per-cell crop model.

1. `wellwatch simulate` a calibration plate (dose series, bright field + PI, seed 5);
2. `wellwatch dataset cells --dead-stain PI --segment-on BF` on it (classical segmentation, crops
   from the bright field, labels from each cell's PI fold over the field's background);
3. `wellwatch train` (the crop default, the Ogawa CNN; validation and test groups by well) and
   `wellwatch export`: a live_dead model with a crop section;
4. the daemon on a different plate (seed 21, 12 wells x 2 fields x 3 timepoints) twice, with the
   bundled demo tile model: once calling each cell from the tiles at its centroid, once with the crop
   model in [models.cell_live_dead]. Per well and timepoint: `live_fraction` (tiles) and
   `cell_live_fraction` against the simulated cells' true live fraction, and `cells` against the
   true cell count.

    python benchmarks/per_cell_live_dead.py [--workdir DIR] [--model CELL.onnx] [--json]

About 3 minutes on a 2-core CPU (1 with --model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from cli_steps import steps  # benchmarks/, this script's folder
from wellwatch.client import follow
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

# classical parameters for the simulator's cells (see benchmarks/cell_types_simulated.py)
SIMULATED = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}
CROP = ["--crop", "48", "--mask-radius", "16", "--min-area", "60", "--max-area", "2000"]
CALIBRATION = ["--wells", "12", "--fields", "4", "--timepoints", "1", "--treatment", "dose_series",
               "--channels", "BF,PI", "--seed", "5"]
EVALUATION = SimulationSpec(fields=2, timepoints=3, treatment="dose_series", seed=21, channels=("BF", "PI"))


say, wellwatch = steps("per-cell live/dead")


def train_crop_model(work: Path) -> tuple[Path, dict]:
    classical = [x for k, v in SIMULATED.items() if k != "min_area" for x in ("--classical", f"{k}={v}")]
    wellwatch("simulate", str(work / "calibration"), *CALIBRATION)
    built = json.loads(wellwatch("dataset", "cells", str(work / "calibration"), "--out", str(work / "ds"),
                                 "--label-free", "BF", "--dead-stain", "PI", "--segment-on", "BF", *CROP, *classical))
    trained = json.loads(wellwatch("train", str(work / "ds"), "--out", str(work / "run"), "--group-by", "well",
                                   "--quiet"))
    wellwatch("export", str(work / "run" / "best.pt"), "--out", str(work / "cell-live-dead.onnx"))
    return work / "cell-live-dead.onnx", {"dataset": built["counts"], "test": trained["metrics"]["test"]}


def daemon_wells(work: Path, cell_model: str) -> dict:
    """The daemon on the evaluation plate: the last well message of every well and timepoint."""
    config = local_config(work, EVALUATION, **{"segmentation.method": "classical",
                                               "models.cell_live_dead.path": cell_model,
                                               **{f"segmentation.classical.{k}": v for k, v in SIMULATED.items()}})
    running = start_daemon(config)
    wells: dict = {}
    try:
        stream = follow(config.publish.endpoint, config.publish.snapshot_endpoint, topics=("well/",), timeout_s=120)
        next(stream)  # subscribed
        write_plate(EVALUATION, work / "acquisition")
        for _, msg, _ in stream:
            wells[(msg["well"], msg["timepoint"])] = msg
            if len(wells) == len(EVALUATION.wells) * EVALUATION.timepoints and all(w["complete"] for w in wells.values()):
                break
    finally:
        running.stop()
    return wells


def errors(wells: dict, truth: dict, key: str) -> np.ndarray:
    return np.array([m[key] - truth[k]["live_fraction"] for k, m in sorted(wells.items())])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="keep everything here (default: a temp folder)")
    parser.add_argument("--model", help="a per-cell live/dead ONNX model to use instead of training one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wellwatch-percell-"))
    say(f"working in {work}")
    model, training = (Path(args.model), {}) if args.model else train_crop_model(work)
    say("the daemon, cells called from the tiles at their centroids ...")
    tiles = daemon_wells(work / "tile-call", "")
    say("the daemon, cells called by the crop model ...")
    crops = daemon_wells(work / "crop-call", str(model.resolve()))
    truth = {(w["well"], w["timepoint"]): w
             for w in json.loads((work / "crop-call" / "acquisition" / "ground_truth.json").read_text())["wells"]}
    per_tile = errors(tiles, truth, "live_fraction")
    at_centroid = errors(tiles, truth, "cell_live_fraction")
    per_cell = errors(crops, truth, "cell_live_fraction")
    count = np.array([m["cells"] - truth[k]["live"] - truth[k]["dead"] for k, m in crops.items()])
    called = np.array([sum(m["cell_counts"].values()) / max(m["cells"], 1) for m in crops.values()])
    summary = {name: {"mae": round(float(np.abs(e).mean()), 4), "max": round(float(np.abs(e).max()), 4),
                      "bias": round(float(e.mean()), 4)}
               for name, e in (("tiles", per_tile), ("cells_from_tiles_at_centroid", at_centroid),
                               ("cells_from_crop_model", per_cell))}
    result = {"well_timepoints": len(crops), "live_fraction_error": summary, "training": training,
              "cells_minus_true": {"mean": round(float(count.mean()), 2), "max_abs": int(np.abs(count).max())},
              "called_fraction_of_cells": round(float(called.mean()), 4), "model": str(model), "workdir": str(work)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{len(crops)} well-timepoints; live fraction against the true cells':")
    for name, label in (("tiles", "per tile"), ("cells_from_tiles_at_centroid", "per cell, tiles at centroid"),
                        ("cells_from_crop_model", "per cell, crop model")):
        s = summary[name]
        print(f"  {label:28}: mean absolute error {s['mae']:.3f}, max {s['max']:.3f}, bias {s['bias']:+.3f}")
    print(f"  cells found - true cells: mean {count.mean():+.1f}, largest |difference| {np.abs(count).max()}; "
          f"{result['called_fraction_of_cells']:.1%} of the cells in the crop model's size range")
    if training:
        print(f"  crop model: {training['dataset']['kept']} labelled cells; test (held-out wells) {training['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
