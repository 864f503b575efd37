"""Snapshot size and daemon memory over a long simulated time-lapse.

A 384-well plate, one small field per well, many timepoints, written timepoint by timepoint (temp
name, then rename) into a daemon running in this process with the bundled demo model. After each
block of timepoints: the plain snapshot's size (the latest timepoint per well: it should stay
flat), the process's resident memory (before any range request), and at the end the size of a
range snapshot over every timepoint (what the unbounded snapshot used to hold).

    python benchmarks/snapshot_soak.py [--timepoints 10] [--wells 384]   (~2 min on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import zmq

from wellwatch.client import request_snapshot
from wellwatch.core.naming import format_scanr
from wellwatch.core.plate import PLATE_FORMATS, all_wells, well_index
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import tiff_bytes, write_frame


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frames_done(journal: str) -> int:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timepoints", type=int, default=10)
    p.add_argument("--wells", type=int, default=384)
    p.add_argument("--every", type=int, default=2, help="measure after this many timepoints")
    p.add_argument("--range-every-time", action="store_true",
                   help="also ask for every timepoint so far at each measurement (else only at the end)")
    args = p.parse_args()
    wells = all_wells(PLATE_FORMATS[384])[:args.wells]
    spec = SimulationSpec(plate_name="soak", plate_format=384, wells=tuple(wells[:8]), fields=1, timepoints=1,
                          size=64, cells_per_field=3, channels=("BF",), seed=4)
    blobs = [tiff_bytes(f.images["BF"]) for f in iter_fields(spec)]  # 8 distinct frames, reused
    work = Path(tempfile.mkdtemp(prefix="wellwatch-soak-"))
    config = local_config(work, spec, **{"plate.fields_per_well": 1, "batching.max_delay_ms": 5.0})
    running = start_daemon(config)
    root, context = Path(config.watch.root), zmq.Context.instance()
    print(f"{'timepoints':>10}{'frames':>8}{'snapshot kB':>13}{'all-timepoint kB':>18}{'RSS MB':>9}", flush=True)
    try:
        time.sleep(1.0)
        written = 0
        for t in range(args.timepoints):
            for i, well in enumerate(wells):
                name = format_scanr(well, well_index(well, PLATE_FORMATS[384]), 1, t, "BF")
                write_frame(root / name, blobs[(i + t) % len(blobs)], "rename")
                written += 1
            if (t + 1) % args.every and t + 1 < args.timepoints:
                continue
            deadline = time.monotonic() + 300
            while frames_done(config.journal.path) < written and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # the last messages published
            rss = rss_mb()  # before the range request below: its reply is transient
            latest = request_snapshot(context, config.publish.snapshot_endpoint, timeout_s=30)
            every = ""
            if t + 1 == args.timepoints or args.range_every_time:
                reply = request_snapshot(context, config.publish.snapshot_endpoint, timeout_s=60, timepoints=(0, t))
                every = f"{len(json.dumps(reply)) / 1e3:.1f}"
            print(f"{t + 1:>10}{frames_done(config.journal.path):>8}{len(json.dumps(latest)) / 1e3:>13.1f}"
                  f"{every:>18}{rss:>9.1f}", flush=True)
    finally:
        code = running.stop()
    print(f"daemon exit code {code}; journal {config.journal.path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
