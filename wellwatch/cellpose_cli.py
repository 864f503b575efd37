"""`wellwatch cellpose export` and `wellwatch cellpose train`: Cellpose models for the daemon.

Both need the `cellpose` extra (`pip install 'wellwatch[cellpose]'`: cellpose and a CPU torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_cellpose_export(args: argparse.Namespace) -> int:
    from .export.cellpose_export import export_cellpose

    out, parity = export_cellpose(args.model, args.out, args.pixel_size, args.parity_image or [], args.name,
                                  postprocess=mask_settings(args))
    print(f"wrote {out}" + (f"; {parity.summary()}" if parity else " (no parity frames given: --parity-image)"))
    return 0


def cmd_cellpose_train(args: argparse.Namespace) -> int:
    from .export.cellpose_export import export_cellpose
    from .training.cellpose_adapt import init_scores, served_scores
    from .training.cellpose_train import train_cellpose
    from .training.masks import load_mask_set

    full = load_mask_set(args.dataset)
    data = full.select(args.frames.split(",")) if args.frames else full
    scored = score_set(full, data, args.score)
    out = Path(args.out)
    name = args.name or out.stem
    settings = train_settings(args, len(data))
    result = train_cellpose(data, out.parent / f"{name}.cellpose", name, args.init, settings)
    trained_on = {"dataset": str(args.dataset), "images": data.names, "init": args.init or "scratch",
                  "epochs": settings.epochs, "learning_rate": settings.learning_rate,
                  "optimizer": "SGD" if settings.sgd else "AdamW", "train_seconds": round(result.seconds, 1)}
    onnx, parity = export_cellpose(str(result.model_file), out, args.pixel_size, args.parity_image or [], name,
                                   trained_on, postprocess=mask_settings(args))
    report = {"cellpose_model": str(result.model_file), "onnx": str(onnx), "seconds": round(result.seconds, 1),
              "final_loss": round(result.final_loss, 4), "diam_labels_px": round(result.diam_labels, 1),
              "parity": None if parity is None else parity.summary()}
    if scored is not None:
        # both at the trained frames' cell diameter: what a user of the model before would have set
        if args.init:
            report["before"] = init_scores(args.init, scored, result.diam_labels, mask_settings(args))
        report["after"] = served_scores(onnx, scored, result.diam_labels)
        print(f"[cellpose train {name}] on {len(scored)} frames not trained on ({report['after']['cells']} cells): "
              + "; ".join(f"{when} F1@0.5 {report[when]['f1@0.5']:.3f}, F1@0.75 {report[when]['f1@0.75']:.3f}"
                          for when in ("before", "after") if when in report), file=sys.stderr)
    print(json.dumps(report))
    return 0


def train_settings(args: argparse.Namespace, frames: int):
    """Cellpose's defaults, or with --adapt the few-frame recipe; a flag given overrides either."""
    import dataclasses

    from .training.cellpose_train import ADAPTATION, CellposeTrainSettings

    # the GUI draws max(8, frames) crops per epoch: every frame at least once when there are many
    base = (dataclasses.replace(ADAPTATION, images_per_epoch=max(ADAPTATION.images_per_epoch, frames))
            if args.adapt else CellposeTrainSettings())
    given = {key: value for key, value in (("epochs", args.epochs), ("learning_rate", args.lr),
                                           ("batch_size", args.batch), ("images_per_epoch", args.images_per_epoch),
                                           ("weight_decay", args.weight_decay))
             if value is not None}
    return dataclasses.replace(base, seed=args.seed, **given)


def score_set(full, trained, score: str | None):
    """The frames --score names, as a MaskSet (None without --score), checked before any training starts."""
    from .core.errors import UsageError
    from .training.masks import frames_to_score

    try:
        names = frames_to_score(full.names, trained.names, score)
    except ValueError as e:
        raise UsageError(f"wellwatch cellpose train: {e}") from None
    return full.select(names) if names else None


def mask_settings(args: argparse.Namespace) -> dict:
    """Cellpose's flows -> masks settings given on the command line (the rest: Cellpose's defaults)."""
    return {key: value for key, value in (("flow_threshold", args.flow_threshold),
                                          ("cellprob_threshold", args.cellprob_threshold),
                                          ("min_size", args.min_size)) if value is not None}


def add_mask_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow-threshold", type=float, help="Cellpose's flow error threshold (default 0.4; 0 = off)")
    p.add_argument("--cellprob-threshold", type=float, help="Cellpose's cell probability threshold (default 0.0)")
    p.add_argument("--min-size", type=int, help="smallest mask kept, px (default 15)")


def register(subparsers) -> None:
    group = subparsers.add_parser("cellpose", help="Cellpose models: export to ONNX for the daemon, train from labels")
    sub = group.add_subparsers(dest="cellpose_command", required=True)

    p = sub.add_parser("export", help="a Cellpose model file or built-in name -> ONNX with the model contract",
                       description="Export a Cellpose 3 network to ONNX for segmentation.method = 'cellpose'. With "
                                   "--parity-image, the served path is checked against cellpose's own eval on those "
                                   "frames (network outputs and masks) and the export refused when they differ.")
    p.add_argument("model", help="a Cellpose model file, or a built-in name (cyto3, nuclei, ...)")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--pixel-size", type=float, default=0.0, metavar="UM",
                   help="um per pixel of the frames the model was trained on (0 = unknown)")
    p.add_argument("--parity-image", action="append", metavar="TIFF", help="a real frame for the parity check "
                                                                          "(repeatable)")
    p.add_argument("--name", default="", help="the model's name in its contract (default: the file's stem)")
    add_mask_settings(p)
    p.set_defaults(func=cmd_cellpose_export)

    p = sub.add_parser("train", help="train a Cellpose network on a `dataset masks` folder and export it",
                       description="Cellpose's own training (cellpose.train.train_seg) from scratch or --init a "
                                   "Cellpose model, then the export above, in one command.")
    p.add_argument("dataset", help="a `wellwatch dataset masks` folder")
    p.add_argument("--out", required=True, help="the ONNX file to write; the Cellpose model file goes beside it")
    p.add_argument("--init", help="start from this Cellpose model file or built-in name (default: from scratch)")
    p.add_argument("--frames", help="comma-separated image names of the dataset to train on (default: all)")
    p.add_argument("--adapt", action="store_true",
                   help="the few-frame adaptation recipe (Cellpose's human-in-the-loop training: SGD, learning rate "
                        "0.1, weight decay 1e-4, 50 epochs of at least 8 crops, frames with few cells kept); "
                        "use with --init")
    p.add_argument("--score", metavar="FRAMES",
                   help="score the model before (--init) and after on these annotated frames of the dataset, never "
                        "trained on (comma-separated, or `rest`: every frame not in --frames)")
    p.add_argument("--epochs", type=int, help="Cellpose epochs (default 100; --adapt: 50)")
    p.add_argument("--images-per-epoch", type=int, help="random crops per epoch (default 8)")
    p.add_argument("--batch", type=int, help="batch size (default 8)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.005 with AdamW, Cellpose's; --adapt: 0.1 "
                                            "with SGD)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 1e-5; --adapt: 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel-size", type=float, default=0.0, metavar="UM", help="um per pixel of the training frames")
    p.add_argument("--parity-image", action="append", metavar="TIFF", help="a real frame for the export's parity check")
    p.add_argument("--name", default="", help="model name (default: the --out file's stem)")
    add_mask_settings(p)
    p.set_defaults(func=cmd_cellpose_train)
