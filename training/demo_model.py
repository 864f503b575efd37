"""Make the bundled demo live/dead model, honestly, with this project's own tools.

    python -m wellwatch.training.demo_model --out wellwatch/models/demo-live-dead.onnx

1. simulate a stained calibration plate (bright-field + propidium iodide, a dose series) in memory;
2. tile the bright-field frames with the daemon's own tiling; drop empty tiles;
3. label each tile by its mean PI fluorescence with the two-component mixture rule;
4. train a tiny CNN on grouped splits (by source field); evaluate on held-out fields;
5. save RUN/best.pt, then export it with `wellwatch export`'s entry point (export_checkpoint): ONNX with
   the model contract, parity-checked against PyTorch on random, held-out and real patches.

The model knows only simulated frames: it is a demo, not a model for real experiments.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Tiling
from wellwatch.core.preprocess import cut_tiles, normalise_frame, tile_origins, tile_std
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec

from .checkpoint import history_dict, save_checkpoint
from .checkpoint_export import export_checkpoint
from .gmm import fit_mixture
from .patches import PairedField, cut_patches, label_patches
from .scores import balanced_accuracy, roc_auc
from .splits import grouped_split
from .classifier_loop import TrainConfig, predict_proba, train_classifier

log = logging.getLogger(__name__)

TILE = 64  # about three cell diameters: fewer tiles hold only a sliver of a cell (measured: 32 px tiles overstate live fraction)
CALIBRATION_PLATE = SimulationSpec(plate_name="calibration", treatment="dose_series", fields=3, timepoints=4,
                                   seed=1000)


def paired_fields(spec: SimulationSpec) -> list[PairedField]:
    # The split unit is the field position: its timepoints show the same cells, so they stay together.
    return [PairedField(f.images["BF"], f.images["PI"], f"{f.plate}/{f.well}/{f.field}", f.well, f.plate,
                        frame=f"{f.plate}/{f.well}/{f.field}/{f.timepoint}")
            for f in iter_fields(spec)]


def empty_threshold(fields: list[PairedField], norm: Normalisation, tiling: Tiling) -> float:
    """Tile std of cell-free background forms a tight low mode: threshold 4 sd above it (log scale)."""
    stds = []
    for f in fields:
        n = normalise_frame(f.label_free, norm)
        tiles = cut_tiles(n, tile_origins(n.shape, tiling), tiling.tile_size)
        stds.append(tile_std(tiles))
    mix = fit_mixture(np.log(np.concatenate(stds)))
    return float(np.exp(mix.means[0] + 4 * mix.sds[0]))


def build(out: Path, epochs: int = 12, seed: int = 0, tile: int = TILE,
          run_dir: Path = Path("runs/demo-live-dead")) -> ModelContract:
    serve_stride, train_stride = tile, tile // 2  # overlap for training only: serving counts each area once
    t0 = time.perf_counter()
    norm = Normalisation("robust_zscore", {})
    fields = paired_fields(CALIBRATION_PLATE)
    log.info("simulated %d calibration fields in %.1f s", len(fields), time.perf_counter() - t0)
    threshold = empty_threshold(fields, norm, Tiling(tile, serve_stride))
    qc = EmptyFilter("std", {"threshold": round(threshold, 4)})
    patches, thresholds = label_patches(cut_patches(fields, Tiling(tile, train_stride), norm, qc))
    labelled = patches.subset(patches.labels >= 0)
    log.info("%d non-empty tiles: %d live, %d dead, %d ambiguous (PI thresholds: live < %.0f, dead > %.0f)",
             len(patches.labels), (patches.labels == 0).sum(), (patches.labels == 1).sum(),
             (patches.labels < 0).sum(), thresholds.live_below, thresholds.dead_above)
    train, val, test = grouped_split(labelled.sources, (0.8, 0.1, 0.1), seed)
    model, history = train_classifier(labelled.patches[train], labelled.labels[train], labelled.patches[val],
                                      labelled.labels[val], TrainConfig(epochs=epochs, seed=seed))
    p_dead = predict_proba(model, labelled.patches[test])[:, 1]
    y = labelled.labels[test]
    metrics = {"split": "held-out simulated field positions (all timepoints of a field on one side)", "n": int(len(y)),
               "auc": round(roc_auc(y, p_dead), 4), "balanced_accuracy": round(balanced_accuracy(y, p_dead >= 0.5), 4)}
    log.info("test: %s", metrics)
    contract = ModelContract(
        name="demo-live-dead", task="live_dead", classes=("live", "dead"), positive_class="dead",
        output="probabilities", input_name="input", channels=("brightfield",), layout="NCHW",
        height=tile, width=tile, normalisation=norm, tiling=Tiling(tile, serve_stride), empty_filter=qc,
        decision_threshold=0.5,
        trained_on={"demo": True, "data": "wellwatch simulator (not real cells)",
                    "plate": {"seed": CALIBRATION_PLATE.seed, "wells": len(CALIBRATION_PLATE.wells),
                              "fields": CALIBRATION_PLATE.fields, "timepoints": CALIBRATION_PLATE.timepoints,
                              "size": CALIBRATION_PLATE.size, "treatment": CALIBRATION_PLATE.treatment},
                    "labels": "mean PI fluorescence per tile, 2-component GMM rule",
                    "pi_thresholds": {"live_below": thresholds.live_below, "dead_above": thresholds.dead_above},
                    "train_stride": train_stride, "patches": {"train": int(train.sum()), "val": int(val.sum()),
                                                              "test": int(test.sum())},
                    "epochs_run": len(history.train_loss), "best_epoch": history.best_epoch + 1,
                    "arch": "tiny", "seconds": round(history.seconds, 1)},
        metrics=metrics, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), tool="wellwatch demo_model")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(run_dir / "best.pt", model, "tiny", contract, history_dict(history))
    # the same entry point as `wellwatch export`: exactly what the checkpoint holds, parity-checked
    result = export_checkpoint(checkpoint, out, real_inputs=labelled.patches[test])
    log.info("wrote %s in %.0f s", out, time.perf_counter() - t0)
    return result.contract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("wellwatch/models/demo-live-dead.onnx"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo-live-dead"), help="where best.pt goes")
    parser.add_argument("--tile", type=int, default=TILE, help="tile edge in px (stride = tile when served)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build(args.out, args.epochs, args.seed, args.tile, args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
