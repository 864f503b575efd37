"""`wellwatch inspect model.onnx`, `export-raw`, `export-bioimageio` and `check-package` (`wellwatch export
RUN/best.pt`, which reads a training checkpoint, is training/export_cli.py's)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from .bioimageio_export import package_exported_model

    print(package_exported_model(args.model, args.out, args.frame, None).summary())
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
