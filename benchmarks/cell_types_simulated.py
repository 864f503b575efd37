"""Cell types end to end on simulated two-type plates, with the real tools.

1. `wellwatch simulate` a training plate (LMPP-like and pro-B-like cells, bright-field + CD19
   marker, the type mix varying across wells) and a second, different plate (another seed).
2. `wellwatch dataset cells` on the training plate (classical segmentation, crops, marker GMM).
3. `wellwatch train --folds 4 --group-by well`: the ogawa CNN and the cell-size SVM, cross-validated
   by well (the dish); then one 80/10/10 run whose model is exported with `wellwatch export`.
4. The daemon (classical segmentation + that cell-type model) on the second plate: its final
   per-well `cell_types` against the simulator's ground truth.

    python benchmarks/cell_types_simulated.py [--workdir DIR] [--json]

About 5 minutes on a 2-core CPU.
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

# classical parameters for the simulator's small cells (radii 5.5-12 px at 512 px frames)
# (chosen on a training plate: every cell of both types found; per-frame Otsu on texture with a
# factor of 1 missed the smooth pro-B cells in LMPP-rich wells)
CLASSICAL = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}
CROP = ["--crop", "48", "--mask-radius", "16", "--marker-radius", "5", "--min-area", "60", "--max-area", "2000"]
PLATE = ["--wells", "12", "--fields", "4", "--timepoints", "1", "--size", "512", "--cells-per-field", "40",
         "--cell-types", "lmpp,prob", "--type-mix", "series", "--channels", "BF,CD19"]


say, wellwatch = steps("cell types")


def run_daemon(work: Path, model: Path, plate: Path) -> dict:
    """Copy the plate's bright-field files into a watched folder; return the last well messages."""
    spec = SimulationSpec(plate_name="plate1", fields=4)
    config = local_config(work / "daemon", spec, **{
        "segmentation.method": "classical", "models.cell_type.path": str(model),
        **{f"segmentation.classical.{k}": v for k, v in CLASSICAL.items()}})
    files = sorted((plate / "data").glob("*--BF.tif"))
    running = start_daemon(config)
    wells: dict = {}
    try:
        data = Path(config.watch.root)
        stream = follow(config.publish.endpoint, config.publish.snapshot_endpoint, topics=("well/", "frame/"),
                        timeout_s=120)
        next(stream)  # the snapshot: subscribed
        for f in files:
            (data / f.name).write_bytes(f.read_bytes())
        frames = 0
        for kind, msg, _ in stream:
            if msg.get("type") == "well":
                wells[msg["well"]] = msg
            elif msg.get("type") == "frame":
                frames += 1
            if frames == len(files) and all(w["complete"] for w in wells.values()) and len(wells) == 12:
                break
    finally:
        running.stop()
    return wells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="keep everything here (default: a temp folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wellwatch-celltypes-"))
    say(f"working in {work}")
    classical = [x for k, v in CLASSICAL.items() for x in ("--classical", f"{k}={v}")]

    wellwatch("simulate", str(work / "train-plate"), *PLATE, "--seed", "7")
    wellwatch("simulate", str(work / "test-plate"), *PLATE, "--seed", "8")
    built = json.loads(wellwatch("dataset", "cells", str(work / "train-plate"), "--out", str(work / "ds"),
                                 "--label-free", "BF", "--marker", "CD19", "--classes", "LMPP,pro-B",
                                 *CROP, *classical))
    cv = json.loads(wellwatch("train", str(work / "ds"), "--out", str(work / "run-cv"), "--folds", "4",
                              "--group-by", "well", "--quiet"))
    wellwatch("train", str(work / "ds"), "--out", str(work / "run"), "--group-by", "well", "--quiet")
    wellwatch("export", str(work / "run" / "best.pt"), "--out", str(work / "cell-type.onnx"))

    say("the daemon on the second plate ...")
    wells = run_daemon(work, work / "cell-type.onnx", work / "test-plate")
    truth = {w["well"]: w["types"] for w in json.loads((work / "test-plate" / "ground_truth.json").read_text())["wells"]}
    rows = []
    for well in sorted(truth, key=lambda w: (w[0], int(w[1:]))):
        t, m = truth[well], wells[well]["cell_types"]
        true_prob = t.get("prob", 0) / max(sum(t.values()), 1)
        called = m["LMPP"] + m["pro-B"]
        rows.append({"well": well, "true_cells": sum(t.values()), "cells": wells[well]["cells"], "typed": called,
                     "true_prob_fraction": round(true_prob, 3),
                     "prob_fraction": round(m["pro-B"] / called, 3) if called else None})
    err = np.array([r["prob_fraction"] - r["true_prob_fraction"] for r in rows if r["prob_fraction"] is not None])
    result = {"dataset": built, "cv": cv["metrics"]["cv"], "wells": rows,
              "prob_fraction_mae": float(np.abs(err).mean()), "prob_fraction_max_error": float(np.abs(err).max()),
              "prob_fraction_pearson_r": float(np.corrcoef([r["true_prob_fraction"] for r in rows],
                                                           [r["prob_fraction"] for r in rows])[0, 1]),
              "workdir": str(work)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    svm = result["cv"].get("baseline_cell_size_svm", {})
    print(f"cross-validated by well: CNN AUC {result['cv']['auc']}, cell-size SVM AUC {svm.get('auc')}")
    print(f"{'well':5} {'true cells':>10} {'cells':>6} {'typed':>6} {'true pro-B':>11} {'pro-B':>6}")
    for r in rows:
        print(f"{r['well']:5} {r['true_cells']:10d} {r['cells']:6d} {r['typed']:6d} "
              f"{r['true_prob_fraction']:11.3f} {r['prob_fraction']:6.3f}")
    print(f"pro-B fraction per well: mean absolute error {result['prob_fraction_mae']:.3f}, "
          f"max {result['prob_fraction_max_error']:.3f}, Pearson r {result['prob_fraction_pearson_r']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
