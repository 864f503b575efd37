"""`wellwatch results`: a daemon's journal -> tidy per-frame and per-well tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wellwatch.core.plate import PLATE_FORMATS


def register(sub) -> None:
    p = sub.add_parser("results", help="tidy per-frame and per-well tables (CSV or Parquet) from a journal",
                       description="Read a daemon's journal (read-only) and write its frames, and the wells "
                                   "they sum to, as tables joined to a plate map.")
    p.add_argument("--journal", required=True, help="the daemon's journal.sqlite")
    p.add_argument("--out", required=True,
                   help="results.csv or results.parquet: the per-frame table; the per-well table goes "
                        "beside it as <stem>.wells.<ext>")
    p.add_argument("--plate-map", help="plate map CSV to join (compound, concentration, unit, role)")
    p.add_argument("--plate-format", type=int, choices=sorted(PLATE_FORMATS), default=96,
                   help="for the plate map's wells")
    p.set_defaults(func=run_results)


def run_results(args: argparse.Namespace) -> int:
    # imported when the command runs: `wellwatch --help` imports register() only (the core's aggregate
    # pulls in numpy and scipy)
    from wellwatch.core.plate_map import read_plate_map

    from .tables import write_results

    plate_map = read_plate_map(args.plate_map, args.plate_format) if args.plate_map else None
    frames_path, wells_path, n_frames, n_wells = write_results(Path(args.journal), Path(args.out), plate_map)
    print(f"{n_frames} frames -> {frames_path}\n{n_wells} well-timepoints -> {wells_path}", file=sys.stderr)
    return 0
