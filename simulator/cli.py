"""`wellwatch simulate OUT_DIR`: write a fake microscope acquisition with its ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wellwatch.core.errors import ConfigError

from .cells import CELL_TYPES
from .spec import (NAMINGS, SIM_PLATE_FORMATS, TREATMENTS, TYPE_MIXES, WRITE_MODES, SimulationSpec,
                   parse_wells)
from .writer import write_plate


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate", help="write a simulated plate acquisition (BF + PI by default) with ground truth",
        description="Write fake microscope frames into OUT_DIR/data/ and the ground truth into "
                    "OUT_DIR/ground_truth.json and OUT_DIR/ground_truth_cells.csv.")
    d = SimulationSpec()
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    p.add_argument("--plate-format", type=int, choices=SIM_PLATE_FORMATS, default=d.plate_format)
    p.add_argument("--wells", default=None,
                   help="A1,A2,... | N (the first N wells, row-major) | all  (default: first 12)")
    p.add_argument("--fields", type=int, default=d.fields, help="fields per well")
    p.add_argument("--timepoints", type=int, default=d.timepoints)
    p.add_argument("--interval-s", type=float, default=d.interval_s,
                   help="pause between consecutive fields, seconds")
    p.add_argument("--size", type=int, default=d.size, help="frame edge, px")
    p.add_argument("--cells-per-field", type=float, default=d.cells_per_field,
                   help="mean cells per field (Poisson)")
    p.add_argument("--cell-scale", type=float, default=d.cell_scale,
                   help="cell size factor (1: live radius ~7-11 px)")
    p.add_argument("--channels", default=",".join(d.channels),
                   help="comma list of BF, PH (phase contrast), DIC, PI, CD19 (or MARKER: a "
                        "surface marker, bright on pro-B cells), e.g. BF,PI or PH,DIC,CD19")
    p.add_argument("--cell-types", default="",
                   help=f"comma list of cell types among {', '.join(CELL_TYPES)}, e.g. lmpp,prob "
                        "(default: one cell line, 'A')")
    p.add_argument("--type-mix", choices=TYPE_MIXES, default=d.type_mix,
                   help="none: every well --type-fraction of the first type; series: the first "
                        "type's fraction runs from 0.1 to 0.9 across the wells")
    p.add_argument("--type-fraction", type=float, default=d.type_fraction,
                   help="fraction of the first cell type per well (with --type-mix none)")
    p.add_argument("--naming", choices=NAMINGS, default=d.naming)
    p.add_argument("--write-mode", choices=WRITE_MODES, default=d.write_mode)
    p.add_argument("--chunk-pause-s", type=float, default=d.chunk_pause_s,
                   help="pause between chunks in chunked mode, seconds")
    p.add_argument("--treatment", choices=TREATMENTS, default=d.treatment)
    p.add_argument("--control-columns", type=int, default=d.control_columns,
                   help="with --treatment dose_series: the leftmost N columns get no drug (controls)")
    p.add_argument("--growth-doublings", type=float, default=d.growth_doublings,
                   help="untreated cells double this many times over the run (0: no growth); "
                        "with a dose series, plate_map.csv and dose_truth.json are written too")
    p.add_argument("--plate-name", default=d.plate_name)
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=run_simulate)
    return p


def spec_from_args(args: argparse.Namespace) -> SimulationSpec:
    """Raises ConfigError naming the option's value and what is allowed."""
    wells = parse_wells(args.wells, args.plate_format) if args.wells else ()
    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip())
    cell_types = tuple(c.strip() for c in args.cell_types.split(",") if c.strip())
    return SimulationSpec(
        plate_format=args.plate_format, wells=wells, fields=args.fields,
        timepoints=args.timepoints, interval_s=args.interval_s, size=args.size,
        cells_per_field=args.cells_per_field, channels=channels, naming=args.naming,
        write_mode=args.write_mode, chunk_pause_s=args.chunk_pause_s,
        plate_name=args.plate_name, treatment=args.treatment, seed=args.seed,
        cell_scale=args.cell_scale, cell_types=cell_types, type_mix=args.type_mix,
        type_fraction=args.type_fraction, control_columns=args.control_columns,
        growth_doublings=args.growth_doublings)


class _Printer:
    """Progress lines at most once a second (and for the last frame), so big plates stay quiet."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.last = out_dir, 0.0

    def __call__(self, done: int, total: int, path: Path) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= 1.0:
            self.last = now
            print(f"[{done}/{total}] {path.relative_to(self.out_dir)}", flush=True)


def run_simulate(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except ConfigError as e:
        print(f"wellwatch simulate: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    print(f"simulating {len(spec.wells)} wells x {spec.fields} fields x {spec.timepoints} "
          f"timepoints x {len(spec.channels)} channels ({spec.naming}, {spec.write_mode}) "
          f"into {out / 'data'}", flush=True)
    start = time.monotonic()
    summary = write_plate(spec, out, progress=_Printer(out))
    print(f"wrote {summary.frames} frames to {summary.data_dir} in {time.monotonic() - start:.1f} s; "
          f"ground truth: {summary.ground_truth} and {summary.cells_csv}", flush=True)
    return 0
