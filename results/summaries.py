"""A journal's frames summed as the daemon sums them: one row per field (a joined channel's file
named on the row of the file it was scored with) and per-well, per-timepoint sums whose images and
completeness are counted as the daemon counts them (core/aggregate.py). Pure functions of rows that
journal_reader.py read.
"""

from __future__ import annotations

from wellwatch.core.aggregate import image_key, well_complete


def is_joined_channel(frame: dict) -> bool:
    """A channel file scored as part of another file's field: done, no counts of its own."""
    return frame["state"] == "done" and frame["live"] is None


def fold_joined_channels(frames: list[dict]) -> list[dict]:
    """One row per field: joined channel files leave the list and are named on the row of the file
    they were scored with (same seq), as `channels` and `channel_files` (that file's own first)."""
    members: dict[int, list[dict]] = {}
    for f in frames:
        if is_joined_channel(f) and f["seq"] is not None:
            members.setdefault(f["seq"], []).append(f)
    out = []
    for f in frames:
        if is_joined_channel(f) and f["seq"] is not None:
            continue
        joined = members.get(f["seq"], []) if f["state"] == "done" else []
        out.append(dict(f, channels=[f["channel"], *(m["channel"] for m in joined)],
                        channel_files=[f["path"], *(m["path"] for m in joined)]))
    return out


def _sum(values) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def well_summaries(frames: list[dict], fields_expected: int = 0,
                   expected: dict[tuple, int | None] | None = None) -> list[dict]:
    """`frames`: the latest version of each file. A well's `frames` counts its images (field x z
    plane, as the daemon's well messages do), `fields` its fields; complete against `expected`
    ((plate, well, timepoint) -> images, the daemon's own figure), else `fields_expected`."""
    groups: dict[tuple, list[dict]] = {}
    for f in frames:
        if f["state"] == "done" and f["well"] is not None and not is_joined_channel(f):
            groups.setdefault((f["plate"], f["well"], f["timepoint"]), []).append(f)
    out = []
    for (plate, well, timepoint), fs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        live, dead = sum(f["live"] or 0 for f in fs), sum(f["dead"] or 0 for f in fs)
        cell_live, cell_dead = _sum(f["cell_live"] for f in fs), _sum(f["cell_dead"] for f in fs)
        types: dict[str, int] | None = None
        for f in fs:
            for name, n in (f["cell_types"] or {}).items():
                types = types or {}
                types[name] = types.get(name, 0) + n
        images = len({image_key(f["field"], f["z"]) for f in fs})
        wanted = (expected or {}).get((plate, well, timepoint)) or fields_expected or None
        out.append({
            "type": "well", "plate": plate, "well": well, "timepoint": timepoint, "frames": images,
            "fields": len({f["field"] for f in fs}), "fields_expected": wanted,
            "complete": well_complete(images, wanted),
            "counts": {"live": live, "dead": dead, "empty": sum(f["empty"] or 0 for f in fs)},
            "live_fraction": live / (live + dead) if live + dead else None, "unit": "tile",
            "cells": _sum(f["cells"] for f in fs),
            "cell_counts": {"live": cell_live, "dead": cell_dead} if cell_live is not None else None,
            "cell_live_fraction": (cell_live / (cell_live + cell_dead)
                                   if cell_live is not None and cell_live + cell_dead else None),
            "cell_types": types, "source": "journal"})
    return out
