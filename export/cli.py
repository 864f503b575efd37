"""`wellwatch export RUN/best.pt --out model.onnx` and `wellwatch inspect model.onnx`."""

from __future__ import annotations

import argparse
import json
import sys

from .metadata import OPSET
from .parity import Tolerances


def cmd_export(args: argparse.Namespace) -> int:
    from .from_checkpoint import export_checkpoint

    images = None if args.parity_image is None else list(args.parity_image)
    if args.no_real_images:
        images = []
    tol = Tolerances(args.atol, args.rtol, args.fp16_atol, args.fp16_rtol, args.decision_margin)
    result = export_checkpoint(args.checkpoint, args.out, fp16=args.fp16, parity_images=images, tolerances=tol,
                               opset=args.opset)
    print(result.summary())
    if args.bioimageio:
        print(_write_bioimageio(args.out, args.bioimageio, args.bioimageio_frame, images).summary())
    return 0


def _write_bioimageio(model: str, out: str, frame: str | None, parity_images):
    from wellwatch.core.errors import UsageError

    from .bioimageio_export import write_package
    from .parity_inputs import default_real_images

    frame = frame or next(iter(parity_images or default_real_images()), None)
    if frame is None:
        raise UsageError("--bioimageio: give --bioimageio-frame PATH, a real frame (TIFF) of the kind the model "
                         "serves, for the package's test tensors and cover")
    return write_package(model, out, frame)


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    print(_write_bioimageio(args.model, args.out, args.frame, None).summary())
    return 0


def cmd_check_package(args: argparse.Namespace) -> int:
    from wellwatch.core.config import InferenceConfig
    from wellwatch.core.packages.loading import open_package

    backend = open_package(args.package, args.task, InferenceConfig(device=args.device, warmup=False))
    print(backend.describe() if hasattr(backend, "describe") else backend.package_identity)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_model import format_info, inspect_model

    info = inspect_model(args.model, args.sha256)
    print(json.dumps(info.as_dict(), indent=2) if args.json else format_info(info))
    if info.hash_check == "mismatch":
        print(f"error: {args.model}: {info.hash_problem}", file=sys.stderr)
        return 1
    return 0


def cmd_export_raw(args: argparse.Namespace) -> int:
    from .in_graph import export_in_graph

    out, parity = export_in_graph(args.model, args.out, args.parity_image, args.atol)
    print(f"wrote {out}: raw uint16 tiles in, the normalisation in the graph; {parity['tiles']} real tiles from "
          f"{len(parity['frames'])} frames, largest difference {parity['max_abs_diff']:.3g} (atol {args.atol:g})")
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

    p = subparsers.add_parser(
        "export-bioimageio", help="an exported MODEL.onnx -> a BioImage.IO model package (validated)",
        description="Write a BioImage.IO model package (format 0.5) for an exported wellwatch model (tile, crop or "
                    "segmentation): the ONNX weights with their contract, test tensors the model makes from inputs "
                    "cut from --frame by the daemon's own code, a cover of that frame, documentation, licence and "
                    "citations. Validated by bioimageio.spec after writing; exits 2 when it does not validate.")
    p.add_argument("model", help="an exported .onnx with a wellwatch contract (e.g. a bundled model)")
    p.add_argument("--out", required=True, help="the package folder to write")
    p.add_argument("--frame", required=True, help="a real frame (TIFF) of the kind the model serves")
    p.set_defaults(func=cmd_export_bioimageio)

    p = subparsers.add_parser(
        "check-package", help="load a BioImage.IO package as the daemon would: read, run its test tensors",
        description="Read a BioImage.IO model package with bioimageio.spec, refuse what the daemon cannot serve "
                    "(by name), and run its test input through the ONNX Runtime session the daemon gets; exits 2 "
                    "with one line naming the package and the worst deviation when its test output is not reproduced.")
    p.add_argument("package", help="a package folder, its bioimageio.yaml, or a .zip")
    p.add_argument("--task", default="segmentation", choices=["segmentation", "live_dead", "cell_type"],
                   help="the model slot it is for (default segmentation)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_check_package)

    p = subparsers.add_parser(
        "export-raw", help="MODEL.onnx -> MODEL.raw.onnx: the normalisation inside the graph, raw uint16 tiles in",
        description="Prepend the contract's normalisation (Cast uint16 -> float32, (x - offset) * scale with each "
                    "tile's per-frame offset and scale as a second input) to an exported tile live_dead model, so "
                    "the daemon cuts uint16 tiles and each crosses to the GPU once at half the bytes. Checked "
                    "against the model on the daemon's own normalised tiles of real frames; writes its manifest.")
    p.add_argument("model", help="an exported tile live_dead model (robust_zscore, percentile or fixed normalisation)")
    p.add_argument("--out", help="default: MODEL.raw.onnx beside it")
    p.add_argument("--parity-image", action="append", metavar="PATH",
                   help="a real frame (TIFF) for the parity check (repeatable; default: the shared real images)")
    p.add_argument("--atol", type=float, default=1e-5, help="largest output difference allowed (default 1e-5)")
    p.set_defaults(func=cmd_export_raw)

    p = subparsers.add_parser(
        "inspect", help="print a model's contract and verify its sha256",
        description="Load an ONNX model as the daemon would (contract and graph checks), print its contract, and "
                    "verify its sha256 against MODEL.manifest.json (or --sha256). Exits 1 on a hash mismatch, "
                    "2 when the daemon would refuse the model.")
    p.add_argument("model", help="an exported .onnx file")
    p.add_argument("--sha256", help="the expected sha256 (when the manifest did not travel with the file)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
