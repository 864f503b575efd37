"""`wellwatch export RUN/best.pt --out model.onnx`: a training run's checkpoint -> a checked ONNX model
(training/checkpoint_export.py does the work; imported only when the command runs)."""

from __future__ import annotations

import argparse

from wellwatch.export.metadata import OPSET
from wellwatch.export.parity import Tolerances


def cmd_export(args: argparse.Namespace) -> int:
    from wellwatch.export.bioimageio_export import package_exported_model

    from .checkpoint_export import export_checkpoint

    images = None if args.parity_image is None else list(args.parity_image)
    if args.no_real_images:
        images = []
    tol = Tolerances(args.atol, args.rtol, args.fp16_atol, args.fp16_rtol, args.decision_margin)
    result = export_checkpoint(args.checkpoint, args.out, fp16=args.fp16, parity_images=images, tolerances=tol,
                               opset=args.opset)
    print(result.summary())
    if args.bioimageio:
        print(package_exported_model(args.out, args.bioimageio, args.bioimageio_frame, images).summary())
    return 0


def register(subparsers) -> None:
    d = Tolerances()
    p = subparsers.add_parser(
        "export", help="RUN/best.pt -> ONNX with the model contract, parity-checked against PyTorch",
        description="Export a training checkpoint to ONNX (dynamic batch axis, contract in the metadata) and "
                    "prove it equal to the PyTorch model on random and real inputs; writes MODEL.manifest.json "
                    "beside it. Exits 2 with a ParityError report when they differ beyond tolerance.")
    p.add_argument("checkpoint", help="a training run's best.pt")
    p.add_argument("--out", required=True, help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--fp16", action="store_true",
                   help="also write MODEL.fp16.onnx (float16 weights, float32 input/output) for GPUs, checked "
                        "for NaN/inf, values and decisions against the PyTorch model")
    p.add_argument("--parity-image", action="append", metavar="PATH",
                   help="a real frame (TIFF) to cut parity patches from with the daemon's preprocessing "
                        "(repeatable; default: ../shared/data/usiigaci-phase/set1/raw.tif when present)")
    p.add_argument("--no-real-images", action="store_true", help="random parity inputs only")
    p.add_argument("--atol", type=float, default=d.atol, help=f"float32 absolute tolerance (default {d.atol:g})")
    p.add_argument("--rtol", type=float, default=d.rtol, help=f"float32 relative tolerance (default {d.rtol:g})")
    p.add_argument("--fp16-atol", type=float, default=d.fp16_atol, help=f"default {d.fp16_atol:g}")
    p.add_argument("--fp16-rtol", type=float, default=d.fp16_rtol, help=f"default {d.fp16_rtol:g}")
    p.add_argument("--decision-margin", type=float, default=d.decision_margin,
                   help="float16 may call a sample differently only when the float32 score is this close to the "
                        f"decision boundary (default {d.decision_margin:g})")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--bioimageio", metavar="FOLDER",
                   help="also write a BioImage.IO model package (format 0.5) of the exported model into FOLDER, "
                        "validated by bioimageio.spec (needs the bioimageio extra)")
    p.add_argument("--bioimageio-frame", metavar="PATH",
                   help="the real frame the package's test tensors and cover are cut from (default: the first "
                        "--parity-image, else the shared real image)")
    p.set_defaults(func=cmd_export)
