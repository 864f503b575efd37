"""Write a simulated plate to disk the way microscopes do, plus its ground truth.

Three write modes exercise the daemon's file gate: 'direct' (one write), 'chunked' (the final
name grows in pieces, so a reader can catch a partial TIFF) and 'rename' (a hidden temp name,
then an atomic rename into place).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tifffile

from wellwatch.core.naming import format_nis, format_scanr
from wellwatch.core.plate import parse_well, row_letters, well_index

from .plate import PlatePlan, count_types, iter_fields, plan_plate
from .render import LABEL_FREE_KINDS, channel_kind
from .response import dose_truth
from .spec import SimulationSpec

DATA_DIR = "data"
GROUND_TRUTH = "ground_truth.json"
CELLS_CSV = "ground_truth_cells.csv"
PLATE_MAP = "plate_map.csv"      # 'dose_series' only: what is in each well
DOSE_TRUTH = "dose_truth.json"   # 'dose_series' only: the true IC50 / GR50 per timepoint
COMPOUND, UNIT = "simdrug", "uM"
CSV_COLUMNS = ("file", "plate", "well", "field", "timepoint", "cell_id", "x", "y", "radius",
               "state", "type")
MARKER_COLUMN = "marker"  # appended when a marker channel is simulated: the cell's marker counts
CHUNKS = 8

Progress = Callable[[int, int, Path], None]  # (frames written, frames in total, file just written)


@dataclass(frozen=True)
class WriteSummary:
    frames: int
    data_dir: Path
    ground_truth: Path
    cells_csv: Path


def nis_well(well: str, spec: SimulationSpec) -> str:
    """NIS pads the column to two digits ('A01'); the daemon's NIS parser expects that."""
    row, col = parse_well(well, spec.plate)
    return f"{row_letters(row)}{col + 1:02d}"


def frame_name(spec: SimulationSpec, well: str, field: int, timepoint: int, channel: str) -> str:
    """File name of one channel of one field; NIS numbers t, xy and c from 1."""
    if spec.naming == "scanr":
        return format_scanr(well, well_index(well, spec.plate), field, timepoint, channel)
    return format_nis(spec.plate_name, nis_well(well, spec), field, timepoint + 1,
                      spec.channels.index(channel) + 1)


def write_order(channels: tuple[str, ...]) -> list[str]:
    """Label-free channels first: the fluorescence file completes a field, as on the scope."""
    return sorted(channels, key=lambda ch: channel_kind(ch) not in LABEL_FREE_KINDS)


def has_marker(spec: SimulationSpec) -> bool:
    return any(channel_kind(ch) == "marker" for ch in spec.channels)


def tiff_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, image)
    return buf.getvalue()


def write_frame(path: Path, data: bytes, mode: str, chunk_pause_s: float = 0.0) -> None:
    if mode == "direct":
        path.write_bytes(data)
    elif mode == "chunked":
        step = -(-len(data) // CHUNKS)
        with open(path, "wb") as f:
            for i in range(0, len(data), step):
                if i:
                    time.sleep(chunk_pause_s)
                f.write(data[i: i + step])
                f.flush()  # make the partial file visible to a polling reader
    elif mode == "preallocate":  # final size in zeros first, then filled in place, header and IFD first
        step = -(-len(data) // CHUNKS)
        with open(path, "wb") as f:
            f.write(b"\0" * len(data))
            f.flush()
            for i in range(0, len(data), step):
                time.sleep(chunk_pause_s)
                f.seek(i)
                f.write(data[i: i + step])
                f.flush()
    elif mode == "rename":
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        raise ValueError(f"write mode {mode!r}: allowed direct, chunked, rename, preallocate")


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, then rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def ground_truth(spec: SimulationSpec, plan: PlatePlan) -> tuple[dict[str, Any], str]:
    """(ground_truth.json document, ground_truth_cells.csv text) for the whole plate.

    A plate with cell_types adds, to every frame and well entry, `types` {type: cells (live and
    dead)}, and to every well entry `type_mix` {type: expected fraction}. A plate with a marker
    channel adds a `marker` column (the cell's marker counts above background) to the CSV.
    Without them, both files are exactly what earlier versions wrote."""
    wells, frames = [], []
    csv_buf = io.StringIO()
    rows = csv.writer(csv_buf, lineterminator="\n")
    marker = has_marker(spec)
    rows.writerow(CSV_COLUMNS + ((MARKER_COLUMN,) if marker else ()))
    cell_file_channel = write_order(spec.channels)[0]
    for t in range(spec.timepoints):
        for well in spec.wells:
            live_w = dead_w = 0
            types_w = count_types([], spec.cell_types)
            for f in range(1, spec.fields + 1):
                cells = plan.cells(well, f, t)
                dead = sum(c.dead for c in cells)
                live = len(cells) - dead
                live_w, dead_w = live_w + live, dead_w + dead
                types = count_types(cells, spec.cell_types)
                for k, v in types.items():
                    types_w[k] = types_w.get(k, 0) + v
                for ch in spec.channels:
                    entry = {"file": frame_name(spec, well, f, t, ch), "plate": spec.plate_name,
                             "well": well, "field": f, "timepoint": t, "channel": ch,
                             "live": live, "dead": dead}
                    if spec.typed:
                        entry["types"] = dict(types)
                    frames.append(entry)
                cell_file = frame_name(spec, well, f, t, cell_file_channel)
                for c in cells:
                    row = (cell_file, spec.plate_name, well, f, t, c.cell_id,
                           f"{c.x:.2f}", f"{c.y:.2f}", f"{c.radius:.2f}", c.state, c.type)
                    rows.writerow(row + ((f"{c.shape.marker_amp:.2f}",) if marker else ()))
            total = live_w + dead_w
            entry = {"plate": spec.plate_name, "well": well, "timepoint": t,
                     "dose": plan.doses[well], "live": live_w, "dead": dead_w,
                     "live_fraction": live_w / total if total else None,
                     "fields": spec.fields}
            if spec.typed:
                entry["types"] = types_w
                entry["type_mix"] = dict(plan.type_mix[well])
            wells.append(entry)
    return {"spec": spec.to_json(), "wells": wells, "frames": frames}, csv_buf.getvalue()


def plate_map_csv(plan: PlatePlan) -> str:
    """The plate map a user would write for this plate (see core/plate_map.py)."""
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(("well", "compound", "concentration", "unit", "role"))
    for well in plan.spec.wells:
        dose = plan.doses[well]
        rows.writerow((well, COMPOUND, f"{dose:.6g}", UNIT, "treated") if dose > 0
                      else (well, "vehicle", "0", UNIT, "control"))
    return buf.getvalue()


def write_plate(spec: SimulationSpec, out_dir: str | os.PathLike,
                progress: Progress | None = None) -> WriteSummary:
    """Write ground truth first (atomically, for the whole plate), then every frame in
    acquisition order, pausing spec.interval_s between fields."""
    out = Path(out_dir)
    data = out / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    plan = plan_plate(spec)
    doc, cells_csv = ground_truth(spec, plan)
    write_atomic(out / GROUND_TRUTH, json.dumps(doc, indent=1))
    write_atomic(out / CELLS_CSV, cells_csv)
    if spec.treatment == "dose_series":
        write_atomic(out / PLATE_MAP, plate_map_csv(plan))
        truth = dose_truth(spec.timepoints, spec.growth_doublings, COMPOUND, UNIT)
        write_atomic(out / DOSE_TRUTH, json.dumps(truth, indent=1))

    total = len(spec.wells) * spec.fields * spec.timepoints * len(spec.channels)
    done = 0
    order = write_order(spec.channels)
    for i, frame in enumerate(iter_fields(spec, plan)):
        if i and spec.interval_s:
            time.sleep(spec.interval_s)
        for ch in order:
            path = data / frame_name(spec, frame.well, frame.field, frame.timepoint, ch)
            write_frame(path, tiff_bytes(frame.images[ch]), spec.write_mode, spec.chunk_pause_s)
            done += 1
            if progress:
                progress(done, total, path)
    return WriteSummary(done, data, out / GROUND_TRUTH, out / CELLS_CSV)
