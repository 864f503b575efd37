"""`wellwatch results`: the journal as tidy tables, one row per frame and one per well-timepoint,
joined to a plate map. CSV with the standard library; Parquet with pyarrow (the `results` extra).

The frame table has one row per scored image in the journal's `frames` table (every version of a
file re-written with new content; `latest` marks the one that counts); a joined channel's file
(LIVE, PI beside BF) is named on its field's row (`channels`, `channel_files`), not a row of its
own. The well table sums the latest done frames per (plate, well, timepoint), and counts images
(field x z plane) and completeness exactly as the daemon's well messages do.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from wellwatch.core.plate_map import PlateMap

from .journal_reader import JournalView
from .summaries import well_summaries

MAP_COLUMNS = ("compound", "concentration", "unit", "role")
FRAME_TABLE = ("plate", "well", "timepoint", "field", "z", "channel", "channels", "channel_files", "state", "reason",
               "live", "dead", "empty",
               "live_fraction", "cells", "cell_live", "cell_dead", "cell_live_fraction", "cell_types",
               "model_names", "model_sha256", "file", "version", "latest", "sha256", "t_file", "t_done", "seq",
               *MAP_COLUMNS)
WELL_TABLE = ("plate", "well", "timepoint", "fields", "images", "images_expected", "complete", "live", "dead", "empty",
              "live_fraction", "cells",
              "cell_live", "cell_dead", "cell_live_fraction", "cell_types", "model_names", "model_sha256",
              *MAP_COLUMNS)
# a calibrated model's (`wellwatch calibrate`) per-well estimate and interval, from the latest well message
INTERVAL_COLUMNS = ("live_fraction_estimate", "live_fraction_low", "live_fraction_high", "interval_level",
                    "estimator", "calls_usable", "cell_live_fraction_estimate", "cell_live_fraction_low",
                    "cell_live_fraction_high")
WELL_TABLE = (*WELL_TABLE, *INTERVAL_COLUMNS)


def _fraction(a, b):
    return a / (a + b) if a is not None and b is not None and a + b else None


def _models(models: dict | None) -> tuple[str | None, str | None]:
    if not models:
        return None, None
    names = sorted(models)
    return ";".join(names), ";".join(models[n] for n in names)


def _map_columns(plate_map: PlateMap | None, well: str | None) -> dict:
    content = plate_map.wells.get(well) if plate_map and well else None
    return {c: getattr(content, c) if content else None for c in MAP_COLUMNS}


def frame_rows(journal: Path, plate_map: PlateMap | None = None) -> list[dict]:
    out = []
    for f in JournalView(journal).frame_versions():
        names, shas = _models((f["message"] or {}).get("models"))
        types = f["cell_types"]
        out.append({
            **{k: f[k] for k in ("plate", "well", "timepoint", "field", "z", "channel")},
            "channels": ";".join(c for c in f["channels"] if c is not None),
            "channel_files": ";".join(f["channel_files"]),
            **{k: f[k] for k in ("state", "reason", "live", "dead", "empty", "cells", "cell_live", "cell_dead")},
            "live_fraction": _fraction(f["live"], f["dead"]),
            "cell_live_fraction": _fraction(f["cell_live"], f["cell_dead"]),
            "cell_types": json.dumps(types, sort_keys=True) if types else None,
            "model_names": names, "model_sha256": shas, "file": f["path"], "version": f["version"],
            "latest": f["latest"], "sha256": f["sha256"], "t_file": f["t_file"], "t_done": f["t_done"],
            "seq": f["seq"], **_map_columns(plate_map, f["well"])})
    return out


def well_rows(frames: list[dict], plate_map: PlateMap | None = None,
              expected: dict[tuple, int | None] | None = None) -> list[dict]:
    """`expected`: (plate, well, timepoint) -> images the daemon expected (its well messages)."""
    latest = [dict(f, path=f["file"], cell_types=json.loads(f["cell_types"]) if f["cell_types"] else None)
              for f in frames if f["latest"]]
    models: dict[tuple, tuple] = {}
    for f in latest:
        if f["model_names"]:
            models[(f["plate"], f["well"], f["timepoint"])] = (f["model_names"], f["model_sha256"])
    out = []
    for w in well_summaries(latest, expected=expected):
        key = (w["plate"], w["well"], w["timepoint"])
        calls = w["cell_counts"] or {}
        names, shas = models.get(key, (None, None))
        out.append({"plate": w["plate"], "well": w["well"], "timepoint": w["timepoint"], "fields": w["fields"],
                    "images": w["frames"], "images_expected": w["fields_expected"], "complete": w["complete"],
                    **w["counts"], "live_fraction": w["live_fraction"], "cells": w["cells"],
                    "cell_live": calls.get("live"), "cell_dead": calls.get("dead"),
                    "cell_live_fraction": w["cell_live_fraction"],
                    "cell_types": json.dumps(w["cell_types"], sort_keys=True) if w["cell_types"] else None,
                    "model_names": names, "model_sha256": shas, **_map_columns(plate_map, w["well"])})
    return out


def well_intervals(messages: list[dict]) -> dict[tuple, dict]:
    """(plate, well, timepoint) -> INTERVAL_COLUMNS of its latest well message (`messages`: the
    journal's, JournalView.well_messages); all None when the model was not calibrated."""
    out = {}
    for m in messages:
        bounds, cell = m.get("live_fraction_interval") or (None, None), m.get("cell_live_fraction_interval") or (None, None)
        out[(m.get("plate"), m.get("well"), m.get("timepoint"))] = {
            "live_fraction_estimate": m.get("live_fraction_estimate"), "live_fraction_low": bounds[0],
            "live_fraction_high": bounds[1], "interval_level": m.get("interval_level"), "estimator": m.get("estimator"),
            "calls_usable": m.get("calls_usable"), "cell_live_fraction_estimate": m.get("cell_live_fraction_estimate"),
            "cell_live_fraction_low": cell[0], "cell_live_fraction_high": cell[1]}
    return out


def wells_path_for(out: Path) -> Path:
    """results.csv -> results.wells.csv (beside it)."""
    return out.with_name(f"{out.stem}.wells{out.suffix}")


def write_table(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit(f"wellwatch results: {path}: Parquet needs pyarrow "
                             "(pip install 'wellwatch[results]'), or write .csv") from None
        pq.write_table(pa.Table.from_pylist(rows, schema=_arrow_schema(pa, columns, rows)), path)
    else:
        raise SystemExit(f"wellwatch results: --out {path}: expected a .csv or .parquet file name")


def _arrow_schema(pa, columns, rows):
    """Explicit types, so an all-null column (no segmentation) still gets a useful one."""
    ints = {"timepoint", "field", "z", "live", "dead", "empty", "cells", "cell_live", "cell_dead", "version",
            "seq", "fields", "images", "images_expected"}
    floats = {"live_fraction", "cell_live_fraction", "t_file", "t_done", "concentration",
              *(c for c in INTERVAL_COLUMNS if c not in ("estimator", "calls_usable"))}
    kind = {c: pa.int64() if c in ints else pa.float64() if c in floats
            else pa.bool_() if c in ("latest", "complete", "calls_usable") else pa.string() for c in columns}
    return pa.schema([(c, kind[c]) for c in columns])


def write_results(journal: Path, out: Path, plate_map: PlateMap | None = None) -> tuple[Path, Path, int, int]:
    if out.suffix not in (".csv", ".parquet"):
        raise SystemExit(f"wellwatch results: --out {out}: expected a .csv or .parquet file name")
    frames = frame_rows(journal, plate_map)
    messages = JournalView(journal).well_messages()
    wells = well_rows(frames, plate_map, {(m["plate"], m["well"], m["timepoint"]): m.get("fields_expected")
                                          for m in messages})
    intervals = well_intervals(messages)
    for w in wells:
        w.update(intervals.get((w["plate"], w["well"], w["timepoint"])) or dict.fromkeys(INTERVAL_COLUMNS))
    wells_out = wells_path_for(out)
    write_table(frames, FRAME_TABLE, out)
    write_table(wells, WELL_TABLE, wells_out)
    return out, wells_out, len(frames), len(wells)
