"""`wellwatch bench` and `wellwatch bench segment`: their arguments (e2e.py and segment.py do the work)."""

from __future__ import annotations

import os

from .e2e import run_bench
from .segment import add_arguments, run as run_segment_bench


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency on a simulated plate")
    p.add_argument("--wells", default="24", help="well list, a count, or 'all' (default 24)")
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--timepoints", type=int, default=2)
    p.add_argument("--size", type=int, default=1024, help="frame edge in px (default 1024)")
    p.add_argument("--model", default="",
                   help="live/dead model: an ONNX path, 'demo' (the bundled demo model, the default) or 'resnet18' "
                        "(ResNet-18 on 224 px tiles, random weights, built and exported by the project's own tools "
                        "into ~/.cache/wellwatch/bench-models the first time; needs the train extra then)")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-delay-ms", type=float, default=20.0)
    p.add_argument("--read-workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--prepare-workers", type=int, default=0,
                   help="pipeline.prepare_workers: preparation processes (0 = in the read threads, the default)")
    p.add_argument("--naive-frames", type=int, default=8, help="frames for the naive loop")
    p.add_argument("--segmentation", default="none", choices=["none", "classical", "model"],
                   help="also segment every frame (per-cell counts) with this method; the end-to-end figures "
                        "then include it (model: the bundled phase-contrast model)")
    p.add_argument("--segmentation-workers", type=int, default=0, help="segmentation processes (0 = one per core)")
    p.add_argument("--steady-rate", type=float, default=0.0,
                   help="frames/s of the latency phase (default 0: half the burst rate)")
    p.add_argument("--stage-outside", action="store_true",
                   help="write each file outside the watched folder, then rename it in (inotify then reports a "
                        "creation, not a rename: the completeness gate decides)")
    p.add_argument("--settle-s", type=float, default=0.1, help="watch.settle_s (the daemon's default is 0.3)")
    p.add_argument("--completeness", default="structure", choices=["structure", "settle"],
                   help="watch.completeness: prove TIFFs complete by structure, or always wait settle_s")
    p.add_argument("--prepare-only", action="store_true",
                   help="only time preparation (decode, normalise, tile, empty filter) in ms per megapixel")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run_bench)
    targets = p.add_subparsers(dest="bench_target", metavar="{segment}")
    seg = targets.add_parser("segment", help="segmentation quality (F1, AP at IoU 0.5/0.75, count error) and "
                                            "frames/s per method on images with masks")
    add_arguments(seg)
    seg.set_defaults(func=run_segment_bench)
