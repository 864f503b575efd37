"""`wellwatch cellpose export` and `wellwatch cellpose train`: Cellpose models for the daemon.

Both need the `cellpose` extra (`pip install 'wellwatch[cellpose]'`: cellpose and a CPU torch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_cellpose_export(args: argparse.Namespace) -> int:
    from .export.cellpose_export import export_cellpose

    out, parity = export_cellpose(args.model, args.out, args.pixel_size, args.parity_image or [], args.name,
                                  postprocess=mask_settings(args))
    print(f"wrote {out}" + (f"; {parity.summary()}" if parity else " (no parity frames given: --parity-image)"))
    return 0


def cmd_cellpose_train(args: argparse.Namespace) -> int:
    from .export.cellpose_export import export_cellpose
    from .training.cellpose_train import CellposeTrainSettings, train_cellpose
    from .training.masks import load_mask_set

    data = load_mask_set(args.dataset)
    if args.frames:
        data = data.select(args.frames.split(","))
    out = Path(args.out)
    name = args.name or out.stem
    settings = CellposeTrainSettings(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch,
                                     images_per_epoch=args.images_per_epoch, seed=args.seed)
    result = train_cellpose(data, out.parent / f"{name}.cellpose", name, args.init, settings)
    trained_on = {"dataset": str(args.dataset), "images": data.names, "init": args.init or "scratch",
                  "epochs": args.epochs, "train_seconds": round(result.seconds, 1)}
    onnx, parity = export_cellpose(str(result.model_file), out, args.pixel_size, args.parity_image or [], name,
                                   trained_on, postprocess=mask_settings(args))
    print(json.dumps({"cellpose_model": str(result.model_file), "onnx": str(onnx), "seconds": round(result.seconds, 1),
                      "final_loss": round(result.final_loss, 4), "diam_labels_px": round(result.diam_labels, 1),
                      "parity": None if parity is None else parity.summary()}))
    return 0


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
    p.add_argument("--epochs", type=int, default=100, help="Cellpose epochs (default 100)")
    p.add_argument("--images-per-epoch", type=int, default=8, help="random crops per epoch (default 8)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=float, default=0.005, help="learning rate (default 0.005, Cellpose's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel-size", type=float, default=0.0, metavar="UM", help="um per pixel of the training frames")
    p.add_argument("--parity-image", action="append", metavar="TIFF", help="a real frame for the export's parity check")
    p.add_argument("--name", default="", help="model name (default: the --out file's stem)")
    add_mask_settings(p)
    p.set_defaults(func=cmd_cellpose_train)
