"""The `wellwatch` command: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .daemon.errors import UsageError, WellwatchError

# Errors a user fixes (a missing file, a daemon not running): one line and exit 2, no traceback.
USER_ERRORS = (WellwatchError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               TimeoutError)


def zmq_auth_load(path: str) -> None:
    import zmq.auth

    zmq.auth.load_certificate(path)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon.config import load_config
    from .daemon.service import Daemon

    config = load_config(args.config)
    return Daemon(config).run()


def cmd_subscribe(args: argparse.Namespace) -> int:
    from .client import CurveKeys, follow

    from .client import default_snapshot_endpoint

    curve = None
    if args.curve_server_key or args.curve_client_key:
        if not (args.curve_server_key and args.curve_client_key):
            raise UsageError("wellwatch subscribe: give both --curve-server-key and --curve-client-key")
        for flag, path in (("--curve-server-key", args.curve_server_key), ("--curve-client-key", args.curve_client_key)):
            try:
                zmq_auth_load(path)
            except (OSError, ValueError) as e:
                raise UsageError(f"wellwatch subscribe: {flag} {path}: not a CurveZMQ key file ({e})") from None
        curve = CurveKeys(args.curve_server_key, args.curve_client_key)
    if not args.snapshot:
        try:
            args.snapshot = default_snapshot_endpoint(args.endpoint)
        except ValueError as e:
            raise UsageError(f"wellwatch subscribe: {e}") from None
    count, gaps = 0, 0
    for kind, message, state in follow(args.endpoint, args.snapshot, tuple(args.topic or [""]), args.timeout,
                                       curve=curve):
        if state.gaps > gaps:
            gaps = state.gaps
            print(f"wellwatch subscribe: gap in seq (this subscriber fell behind): {state.missed} messages "
                  f"missed in {gaps} gaps; state refreshed from a new snapshot", file=sys.stderr, flush=True)
        if kind == "snapshot":
            seqs = {"seqs": message["seqs"]} if "seqs" in message else {"source": message.get("source"),
                                                                         "seq": message["seq"]}  # hub / daemon
            print(json.dumps({"type": "snapshot", **seqs, "wells": message["wells"]}), flush=True)
        else:
            print(json.dumps(message), flush=True)
            count += 1
            if args.count and count >= args.count:
                break
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """One frame -> a label image, with exactly the daemon's segmentation code."""
    import time

    import numpy as np
    import tifffile

    from .daemon.config import load_config
    from .daemon.reader import read_frame
    from .daemon.segment import load_segmenter
    from .daemon.segment_maps import ServeOptions

    config = load_config(args.config) if args.config else load_config(None)
    pixel_size = config.plate.pixel_size_um if args.pixel_size is None else args.pixel_size
    if pixel_size < 0:
        raise SystemExit(f"wellwatch segment: --pixel-size {pixel_size}: must be >= 0 um (0 = unknown)")
    if args.classical:
        segmenter = load_segmenter(None, config.segmentation.classical)
    else:
        options = ServeOptions(pixel_size, args.tta or config.segmentation.tta)
        segmenter = load_segmenter(args.model or config.models.segmentation.path, threads=args.threads,
                                   options=options)
    frame = read_frame(args.image)
    t0 = time.perf_counter()
    labels = segmenter.segment(frame)
    seconds = time.perf_counter() - t0
    n = int(labels.max())
    tifffile.imwrite(args.out, labels.astype(np.uint16 if n <= 65535 else np.int32), compression="zlib")
    if args.overlay:
        from .overlay import overlay_png

        overlay_png(frame, labels, args.overlay)
    print(json.dumps({"image": args.image, "out": args.out, "method": segmenter.name, "cells": n,
                      "seconds": round(seconds, 3)}))
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    """Print the plate layout the daemon would read from a folder's vendor files (or an .nd2 file)."""
    from pathlib import Path

    from .daemon.layout import LayoutError, detect_layout
    from .daemon.nd2_reader import nd2_contents, nd2_layout

    target = Path(args.path)
    if not target.exists():
        raise LayoutError(target, "no such file or folder")
    if target.suffix.lower() == ".nd2":
        contents = nd2_contents(target)
        layout = nd2_layout(contents, "A1") if contents is not None else None
    else:
        layout = detect_layout(target)
    if layout is None:
        print(f"{target}: no vendor layout file (.HTD, MeasurementData.mlf, experiment_descriptor.xml, "
              "Index.idx.xml, OME-TIFF) found", file=sys.stderr)
        return 1
    print(json.dumps(layout.summary(), indent=2))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import os

    import zmq.auth

    os.makedirs(args.folder, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.folder, args.name)
    os.chmod(secret, 0o600)
    print(f"public key: {public}\nsecret key: {secret} (keep private; mode 600)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .simulator.cli import register as register_simulate
    from .demo import register as register_demo
    from .bench import register as register_bench
    from .export.cli import register as register_export
    from .training.cli import register as register_training
    from .scale.cli import register as register_scale
    from .dashboard.cli import register as register_dashboard
    from .cellpose_cli import register as register_cellpose

    parser = argparse.ArgumentParser(prog="wellwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon on an acquisition folder")
    p.add_argument("--config", required=True, help="config.toml (see the documented default in the repo)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("subscribe", help="print the stream as JSON lines, snapshot first")
    p.add_argument("endpoint", help="the daemon's PUB endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--snapshot", help="snapshot endpoint (default: the PUB port + 1)")
    p.add_argument("--topic", action="append", help="topic prefix, e.g. well/ (repeatable; default all)")
    p.add_argument("--count", type=int, default=0, help="exit after this many updates (0 = never)")
    p.add_argument("--timeout", type=float, default=None, help="exit after this many seconds without a message")
    p.add_argument("--curve-server-key", help="CurveZMQ: the daemon's public .key file")
    p.add_argument("--curve-client-key", help="CurveZMQ: this client's .key_secret file")
    p.set_defaults(func=cmd_subscribe)

    p = sub.add_parser("layout", help="show the plate layout read from a folder's vendor files or an .nd2 file")
    p.add_argument("path", help="the acquisition folder (or an .nd2 file)")
    p.set_defaults(func=cmd_layout)

    p = sub.add_parser("keys", help="make a CurveZMQ key pair (NAME.key public, NAME.key_secret private)")
    p.add_argument("folder")
    p.add_argument("name", help="e.g. server, or a client's name")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("segment", help="segment one frame into a label image (0 = background, one id per cell)")
    p.add_argument("image", help="a TIFF frame")
    p.add_argument("--out", required=True, help="label image to write (TIFF, uint16; int32 above 65535 cells)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--model", help="segmentation ONNX model (default: the bundled phase-contrast model)")
    how.add_argument("--classical", action="store_true",
                     help="the classical pipeline with [segmentation.classical] of --config (or its defaults)")
    p.add_argument("--config", help="config.toml whose [segmentation] / [models.segmentation] to use")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    p.add_argument("--overlay", metavar="PNG", help="also write the frame with the cells' outlines drawn on it")
    p.add_argument("--pixel-size", type=float, metavar="UM",
                   help="um per pixel of the frame (default: [plate] pixel_size_um of --config; 0 = unknown); a "
                        "model that records its training pixel size segments the frame resampled to it")
    p.add_argument("--tta", action="store_true", help="model: test-time augmentation (flips; ~4x the network's time)")
    p.set_defaults(func=cmd_segment)

    register_simulate(sub)
    register_demo(sub)
    register_bench(sub)
    register_export(sub)
    register_training(sub)
    register_scale(sub)
    register_dashboard(sub)
    register_cellpose(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        logging.getLogger("wellwatch").error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
