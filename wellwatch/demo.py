"""`wellwatch demo`: a simulated plate through the daemon, with a live per-well table.

Everything is real but the microscope: the simulator writes TIFF files the way a scanR does,
the daemon watches the folder, infers with the bundled DEMO model (trained on simulated frames
only), journals to SQLite and publishes over ZeroMQ on loopback; this command is a subscriber.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .client import follow
from .harness import local_config, start_daemon, start_writer
from .simulator.spec import SimulationSpec, parse_wells


def register(sub) -> None:
    p = sub.add_parser("demo", help="simulate a plate and watch the daemon count it, live")
    p.add_argument("--wells", default="12", help="well list, a count, or 'all' (default 12)")
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--timepoints", type=int, default=3)
    p.add_argument("--interval-s", type=float, default=0.05, help="pause between fields written")
    p.add_argument("--model", default="", help="ONNX model (default: the bundled demo model)")
    p.add_argument("--workdir", help="keep the acquisition, journal and ground truth here (default: a temp dir)")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=run_demo)


def truth_by_well(ground_truth: Path) -> dict[tuple[str, int], float]:
    doc = json.loads(ground_truth.read_text())
    return {(w["well"], w["timepoint"]): w["live_fraction"] for w in doc["wells"]}


def render_table(wells: dict, truth: dict, timepoint: int) -> str:
    lines = [f"timepoint {timepoint}   well  fields  live  dead  empty  live_fraction  truth(cells)",
             "-" * 78]
    for (plate, well, t), m in sorted(wells.items(), key=lambda kv: (kv[0][2], len(kv[0][1]), kv[0][1])):
        if t != timepoint:
            continue
        c, lf = m["counts"], m["live_fraction"]
        tr = truth.get((well, t))
        lines.append(f"{'':12}{well:>5}  {m['frames']:>3}/{m['fields_expected'] or '?':<2} {c['live']:>5} "
                     f"{c['dead']:>5} {c['empty']:>6}  {'-' if lf is None else f'{lf:.3f}':>13}  "
                     f"{'-' if tr is None else f'{tr:.3f}':>12}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    spec = SimulationSpec(wells=parse_wells(args.wells, 96), fields=args.fields, timepoints=args.timepoints,
                          interval_s=args.interval_s, write_mode="rename", treatment="dose_series",
                          channels=("BF", "PI"), seed=args.seed, plate_name="demo-plate")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wellwatch-demo-"))
    config = local_config(workdir, spec, args.model)
    print(f"wellwatch demo: a SIMULATED 96-well plate ({len(spec.wells)} wells x {spec.fields} fields x "
          f"{spec.timepoints} timepoints, dose series) in {workdir}\n"
          f"model: {args.model or 'the bundled DEMO model (trained on simulated frames only)'}", flush=True)
    running = start_daemon(config)
    writer = start_writer(spec, workdir / "acquisition")
    expected = len(spec.wells) * spec.fields * spec.timepoints
    tty = sys.stdout.isatty()
    frames, truth, last_draw = 0, {}, 0.0
    state = None
    try:
        time.sleep(0.5)
        for kind, message, state in follow(config.publish.endpoint, config.publish.snapshot_endpoint,
                                           timeout_s=60):
            frames = sum(m["frames"] for m in state.wells.values())  # the snapshot counts too
            if not truth and (workdir / "acquisition" / "ground_truth.json").exists():
                truth = truth_by_well(workdir / "acquisition" / "ground_truth.json")
            now = time.monotonic()
            if tty and now - last_draw > 0.25 and state.wells:
                t_now = max(k[2] for k in state.wells)
                sys.stdout.write("\x1b[H\x1b[2J" + render_table(state.wells, truth, t_now) +
                                 f"\n\nframes counted: {frames}/{expected}\n")
                sys.stdout.flush()
                last_draw = now
            if frames >= expected:
                break
    finally:
        writer.join(timeout=5)
        code = running.stop()
    if state is None:
        print("no stream received", file=sys.stderr)
        return 1
    truth = truth_by_well(workdir / "acquisition" / "ground_truth.json")
    for t in range(spec.timepoints):
        print("\n" + render_table(state.wells, truth, t))
    errors = [abs(m["live_fraction"] - truth[(k[1], k[2])]) for k, m in state.wells.items()
              if m["live_fraction"] is not None and (k[1], k[2]) in truth]
    if errors:
        print(f"\n{frames}/{expected} frames counted; live_fraction vs simulated truth: mean absolute error "
              f"{sum(errors) / len(errors):.3f}, max {max(errors):.3f} over {len(errors)} well-timepoints "
              "(counts are per tile, truth per cell)")
    print(f"journal: {config.journal.path}")
    return code
