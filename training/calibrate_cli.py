"""`wellwatch calibrate`: the argument parser (training/calibrate.py does the work; imported only when
the command runs, so the daemon's CLI needs none of the training extras)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibrate import CalibrateError, CalibrateOptions, calibrate
    from .stain_labels import StainFitError

    if not args.folders and not args.dataset:
        raise CalibrateError("give the calibration plate's FOLDER(s), or a built dataset with --dataset")
    if args.folders and args.dataset:
        raise CalibrateError("give FOLDER(s) or --dataset, not both")
    if args.epochs < 1:
        raise CalibrateError(f"--epochs {args.epochs}: at least 1")
    torch.set_num_threads(args.threads)
    o = CalibrateOptions(tuple(args.folders), Path(args.out), args.label_free, args.dead_stain, args.segment_on,
                         args.dataset, args.naming, args.tile, args.stride, args.arch, args.epochs, args.group_by,
                         args.init, args.name or "", args.threshold, args.bootstrap, args.folds, tuple(args.dataset_arg))
    try:
        calibrate(o, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except StainFitError as e:
        raise CalibrateError(f"the dead stain cannot label this plate: {e}") from None
    return 0


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="from a stained calibration plate to a served model with per-well intervals "
                                         "and a verdict (leave-one-experiment-out training, export, report)")
    p.add_argument("folders", nargs="*", help="acquisition folder(s) of the calibration plate")
    p.add_argument("--out", required=True, help="output folder CAL: model.onnx, report.html, config.toml")
    p.add_argument("--label-free", default="BF", help="label-free channel the model reads (default BF)")
    p.add_argument("--dead-stain", default="PI", help="dead-stain channel that labels the calibration (default PI)")
    p.add_argument("--segment-on", help="per-cell model: segment cells on this channel (as `dataset cells "
                                        "--segment-on`), e.g. LIVE or BF; default: per-tile model")
    p.add_argument("--dataset", help="a dataset already built (`wellwatch dataset ...`) instead of FOLDER(s)")
    p.add_argument("--naming", default="scanr", help="file naming preset (default scanr)")
    p.add_argument("--tile", type=int, default=64, help="tile size in px (default 64)")
    p.add_argument("--stride", type=int, default=32, help="tile stride in px (default 32)")
    p.add_argument("--arch", default="tiny", help="network (default tiny: the whole run fits a small CPU)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fold and for the final model (default 4)")
    p.add_argument("--group-by", default="well", choices=["well", "plate", "source"],
                   help="what one experiment is, left out in turn (default well)")
    p.add_argument("--folds", type=int, default=0,
                   help="k folds of whole experiments (default 0: leave one experiment out; 10 folds above 20 "
                        "experiments, e.g. --group-by source on hand-labelled images)")
    p.add_argument("--init", help="re-calibrate: fine-tune from a previous calibration (its CAL folder or best.pt) "
                                  "and report before/after")
    p.add_argument("--name", help="model name in the contract (default calibrated-UNIT-ARCH)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold on P(dead) (default 0.5)")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the CIs (default 500)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--dataset-arg", action="append", default=[], metavar="OPTION",
                   help="extra option for the dataset step, repeatable, e.g. --dataset-arg=--min-area=200")
    p.set_defaults(func=cmd_calibrate)
