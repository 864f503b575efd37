"""The `wellwatch` command: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from wellwatch.core.config_files import is_endpoint
from wellwatch.core.errors import UsageError, WellwatchError

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
    from wellwatch.core.config import load_config
    from wellwatch.daemon.service import Daemon

    config = load_config(args.config)
    return Daemon(config).run()


def check_endpoint(flag: str, endpoint: str) -> None:
    if not is_endpoint(endpoint):
        raise UsageError(f"wellwatch subscribe: {flag} {endpoint!r}: not a ZeroMQ endpoint; give "
                         f"tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556")


def cmd_subscribe(args: argparse.Namespace) -> int:
    import zmq

    from .client import CurveKeys, default_snapshot_endpoint, follow

    check_endpoint("endpoint", args.endpoint)
    if args.snapshot:
        check_endpoint("--snapshot", args.snapshot)
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
    try:
        return print_stream(args, follow(args.endpoint, args.snapshot, tuple(args.topic or [""]), args.timeout,
                                         curve=curve))
    except zmq.ZMQError as e:  # an endpoint zmq cannot connect to (a bad host or port)
        raise UsageError(f"wellwatch subscribe: {args.endpoint} (snapshot {args.snapshot}): {e}") from None


def print_stream(args: argparse.Namespace, messages) -> int:
    count, gaps = 0, 0
    for kind, message, state in messages:
        if state.gaps > gaps:
            gaps = state.gaps
            print(f"wellwatch subscribe: gap in seq (this subscriber fell behind): {state.missed} messages "
                  f"missed in {gaps} gaps; state refreshed from a new snapshot", file=sys.stderr, flush=True)
        if kind == "snapshot":
            seqs = {"seqs": message["seqs"]} if "seqs" in message else {"source": message.get("source"),
                                                                         "seq": message["seq"]}  # hub / daemon
            # a reply that healed a gap says what it holds: the states changed since a seq, or a range
            held = {k: message[k] for k in ("since", "timepoints") if k in message}
            if "sources" in message and any("since" in v for v in message["sources"].values()):
                held["since"] = {s: v["since"] for s, v in message["sources"].items() if "since" in v}
            print(json.dumps({"type": "snapshot", **seqs, **held, "wells": message["wells"]}), flush=True)
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

    from wellwatch.core.config import load_config
    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.segmenters import load_segmenter
    from wellwatch.core.segmentation.maps import ServeOptions

    config = load_config(args.config) if args.config else load_config(None)
    pixel_size = config.plate.pixel_size_um if args.pixel_size is None else args.pixel_size
    if pixel_size < 0:
        raise SystemExit(f"wellwatch segment: --pixel-size {pixel_size}: must be >= 0 um (0 = unknown)")
    if args.classical:
        segmenter = load_segmenter(None, config.segmentation.classical)
    else:
        options = ServeOptions(pixel_size, args.tta or config.segmentation.tta)
        segmenter = load_segmenter(args.model or config.models.segmentation.path, threads=args.threads,
                                   options=options, package=config.segmentation.package)
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
    """Print the plate layout(s) the daemon would read from a folder's vendor files or .nd2 files:
    one JSON object for one plate, a list for a folder of several plates."""
    from wellwatch.core.layouts import LayoutError

    target = Path(args.path)
    if not target.exists():
        raise LayoutError(target, "no such file or folder")
    layouts = plate_layouts(target)
    if not layouts:
        raise LayoutError(target, "no vendor layout file (.HTD, MeasurementData.mlf, experiment_descriptor.xml, "
                                  "Index.idx.xml, OME-TIFF) and no .nd2 file found; the daemon would count the "
                                  "frames it finds without a layout (plate.fields_per_well, else as they come)")
    summaries = [layout.summary() for layout in layouts]
    print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    return 0


def plate_layouts(target) -> list:
    """A folder's plates: every vendor layout file at the nearest depth, else its .nd2 files."""
    import dataclasses

    from wellwatch.core.layouts import find_layout_files
    from wellwatch.core.files.nd2 import nd2_contents, nd2_layout

    def of_nd2(path):
        contents = nd2_contents(path)
        plate = path.parent.parent.name if path.parent.name == "data" else path.parent.name  # as the daemon names it
        return nd2_layout(contents, "A1", plate) if contents is not None else None

    if target.is_file():
        return [layout] if target.suffix.lower() == ".nd2" and (layout := of_nd2(target)) else []
    layouts = []
    for path, reader in find_layout_files(target):
        layout = reader(path)
        layouts.append(layout if layout.plate else dataclasses.replace(layout, plate=path.parent.name))
    if not layouts:
        nd2_files = sorted(p for p in target.rglob("*") if p.suffix.lower() == ".nd2" and p.is_file())
        layouts = [layout for p in nd2_files if (layout := of_nd2(p)) is not None]
    return layouts


def cmd_keys(args: argparse.Namespace) -> int:
    import os

    import zmq.auth

    try:
        os.makedirs(args.folder, exist_ok=True)
    except OSError as e:  # a file of that name, no permission
        raise UsageError(f"wellwatch keys: {args.folder}: cannot make the key folder ({e.strerror})") from None
    public, secret = zmq.auth.create_certificates(args.folder, args.name)
    os.chmod(secret, 0o600)
    print(f"public key: {public}\nsecret key: {secret} (keep private; mode 600)")
    return 0


# Commands other packages register: name -> (module, its help). A module is imported only when its
# command runs, so `--help` and a Ctrl-C at start need none of numpy, scikit-image, zmq or torch
# (tests/test_cli_edges.py checks these help strings against the modules').
LAZY_COMMANDS = {
    "simulate": ("wellwatch.simulator.cli", "write a simulated plate acquisition (BF + PI by default) with ground truth"),
    "demo": ("wellwatch.demo", "simulate a plate and watch the daemon count it, live"),
    "bench": ("wellwatch.bench.cli", "measure throughput and latency on a simulated plate"),
    "export": ("wellwatch.training.export_cli", "RUN/best.pt -> ONNX with the model contract, parity-checked against PyTorch"),
    "export-raw": ("wellwatch.export.cli", "MODEL.onnx -> MODEL.raw.onnx: the normalisation inside the graph, "
                                           "raw uint16 tiles in"),
    "inspect": ("wellwatch.export.cli", "print a model's contract and verify its sha256"),
    "export-bioimageio": ("wellwatch.export.cli", "an exported MODEL.onnx -> a BioImage.IO model package (validated)"),
    "check-package": ("wellwatch.export.cli", "load a BioImage.IO package as the daemon would: read, run its test "
                                              "tensors"),
    "dataset": ("wellwatch.training.cli", "build a training dataset (live-dead from paired fluorescence, voc from "
                                          "boxes, masks for segmentation, cells from paired marker fluorescence)"),
    "train": ("wellwatch.training.cli", "train a classifier (or, with --task segmentation, a U-Net); writes "
                                        "RUN/best.pt"),
    "finetune": ("wellwatch.training.finetune_cli", "adapt the segmentation U-Net to a lab's cells from a few annotated "
                                                    "frames; scores the other annotated frames before and after; "
                                                    "writes NAME.onnx"),
    "evaluate": ("wellwatch.training.cli", "metrics, plots and a report for a run or an exported ONNX model"),
    "hub": ("wellwatch.scale.cli", "fan many daemons' streams into one, with a merged snapshot (see docs/operating/facility-scale.md)"),
    "reprocess": ("wellwatch.scale.cli", "re-run archived acquisitions with the daemon's stages -> Parquet"),
    "dashboard": ("wellwatch.dashboard.cli", "a web page beside the microscope: plate map, time courses, "
                                             "dose-response"),
    "results": ("wellwatch.results.cli", "tidy per-frame and per-well tables (CSV or Parquet) from a journal"),
    "cellpose": ("wellwatch.cellpose_cli", "Cellpose models: export to ONNX for the daemon, train from labels"),
    "calibrate": ("wellwatch.training.calibrate_cli", "from a stained calibration plate to a served model with "
                                                      "per-well intervals and a verdict (leave-one-experiment-out "
                                                      "training, export, report)"),
}


class _OnlyThese:
    """Subparsers seen through a filter: a module's register() adds only the commands wanted."""

    def __init__(self, sub: argparse._SubParsersAction, wanted: set[str]):
        self.sub, self.wanted = sub, wanted

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name in self.wanted:
            return self.sub.add_parser(name, **kwargs)
        return argparse.ArgumentParser(prog=name, add_help=False)  # another command of the module: unused


class _VersionAction(argparse.Action):
    """--version, read from the installed package's metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("wellwatch")
        except PackageNotFoundError:
            number = "unknown (not installed)"
        print(f"wellwatch {number}")
        parser.exit()


def command_of(argv: list[str]) -> str | None:
    """The subcommand argv names (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported (the rest are names and help).
    None imports every command's module."""
    parser = argparse.ArgumentParser(prog="wellwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
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
    how.add_argument("--model", help="segmentation ONNX model or BioImage.IO package (default: the bundled "
                                      "phase-contrast model)")
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

    registered: set[str] = set()
    for name, (module, help_) in LAZY_COMMANDS.items():
        if command is None or command == name:
            if module not in registered:
                registered.add(module)
                wanted = {n for n, (m, _) in LAZY_COMMANDS.items() if m == module and command in (None, n)}
                importlib.import_module(module).register(_OnlyThese(sub, wanted))
        else:
            sub.add_parser(name, help=help_)
    for p in sub.choices.values():  # `wellwatch run -v` as well as `wellwatch -v run`
        if "-v" not in p._option_string_actions and "--verbose" not in p._option_string_actions:
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script (argv None: this process is the command) and in-process callers (argv given)."""
    interrupted = threading.Event()
    previous = _catch_sigint(interrupted, whole_process=argv is None)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BaseException as e:
        # Ctrl-C at any point, even inside a C extension's import (numpy then raises an ImportError)
        if not (interrupted.is_set() or isinstance(e, KeyboardInterrupt)):
            raise
        if argv is None:  # the whole process: do not wait for worker threads, nor be interrupted again
            _exit_interrupted()
        print("wellwatch: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


_SWALLOWED_INTERRUPT_S = 3.0  # a library that swallowed the KeyboardInterrupt gets this long, then the process ends


def _exit_interrupted() -> None:
    print("wellwatch: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _catch_sigint(interrupted: threading.Event, whole_process: bool):
    """Ctrl-C raises KeyboardInterrupt as always, and is remembered (the handler it replaced is returned)."""
    def on_sigint(signum, frame):
        if whole_process and not interrupted.is_set():
            watchdog = threading.Timer(_SWALLOWED_INTERRUPT_S, _exit_interrupted)
            watchdog.daemon = True
            watchdog.start()
        interrupted.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    return signal.signal(signal.SIGINT, on_sigint)


def _main(argv: list[str]) -> int:
    try:
        args = build_parser(command_of(argv) or "").parse_args(argv)  # "": no module (--help, --version)
    except ModuleNotFoundError as e:  # a command whose optional dependencies are not installed
        print(f"wellwatch: {missing_extra(e)}", file=sys.stderr)
        return 2
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        line = user_error_line(e)
        logging.getLogger("wellwatch").error("%s", line)
        if line != str(e):  # an error that names no file: where it came from, with -v
            logging.getLogger("wellwatch").debug("the traceback of: %s", e, exc_info=e)
        return 2
    except ModuleNotFoundError as e:
        print(f"wellwatch {args.command}: {missing_extra(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):  # `raise SystemExit("what to fix")`: a user's error, one line
            print(e.code, file=sys.stderr)
            return 2
        raise


def user_error_line(error: BaseException) -> str:
    """The one line for a user's error; an OS error that names no file says where it was raised
    (`-v` logs the whole traceback), so "[Errno 2] No such file or directory" alone never reaches a user."""
    if isinstance(error, OSError) and error.filename is None and error.__traceback__ is not None:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return f"{error} (in {Path(frame.filename).name}:{frame.lineno}, {frame.name}; -v for the traceback)"
    return str(error)


# The optional dependencies a command may miss, and the extra that installs them
EXTRAS = {"torch": "train", "torchvision": "train", "onnx": "train", "matplotlib": "train", "sklearn": "train",
          "uvicorn": "dashboard", "starlette": "dashboard", "pyarrow": "results", "ray": "scale"}


def missing_extra(error: ModuleNotFoundError) -> str:
    """"this command needs X: pip install 'wellwatch[extra]'" for a missing optional dependency."""
    name = (error.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        raise error
    return f"this command needs {name} (not installed): pip install 'wellwatch[{extra}]'"


if __name__ == "__main__":
    sys.exit(main())
