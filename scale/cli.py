"""`wellwatch hub` and `wellwatch reprocess`."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def cmd_hub(args: argparse.Namespace) -> int:
    from .hub import Hub
    from .hub_config import load_hub_config

    hub = Hub(load_hub_config(args.config))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    hub.start()
    while not stop.wait(0.5):
        pass
    hub.stop()
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from wellwatch.core.config import load_config

    from .reprocess import reprocess, wells_path, write_parquet
    from .stages import FrameScorer

    config = load_config(args.config)
    try:
        result = reprocess(args.roots, config, args.engine, args.address, args.workers, args.threads,
                           args.batch_frames)
    except (FileNotFoundError, ValueError) as e:  # a bad folder or an unsupported setting: one line
        log.error("%s", e)
        return 2
    models = FrameScorer(config, intra_op_threads=1).models
    out = Path(args.out)
    write_parquet(result, out, models)
    bad = sum(r["state"] != "done" for r in result.frames)
    for s in result.skipped[:5]:
        log.warning("skipped %s", s)
    print(f"{len(result.frames)} frames ({bad} unreadable) in {result.seconds:.1f} s "
          f"({len(result.frames) / result.seconds:.1f} frames/s, engine {args.engine}) -> {out}; "
          f"{len(result.wells)} well-timepoints -> {wells_path(out)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("hub", help="fan many daemons' streams into one, with a merged snapshot (see docs/operating/facility-scale.md)")
    p.add_argument("--config", required=True, help="hub.toml: [hub] endpoints and one [[daemons]] table per daemon")
    p.set_defaults(func=cmd_hub)

    p = sub.add_parser("reprocess", help="re-run archived acquisitions with the daemon's stages -> Parquet")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="acquisition folders (what watch.root would be)")
    p.add_argument("--config", required=True, help="the daemon's config.toml (naming, channels, models, ...)")
    p.add_argument("--out", required=True, help="per-frame Parquet; per-well rows go to OUT.wells.parquet")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--workers", type=int, default=0, help="scoring actors (default: one per GPU, else per CPU)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per actor")
    p.add_argument("--batch-frames", type=int, default=16, help="frames per actor batch (their patches pooled)")
    p.set_defaults(func=cmd_reprocess)
