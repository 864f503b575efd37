"""The daemon's journal, read-only: per-frame rows and per-well, per-timepoint sums.

Opened with SQLite's read-only URI mode, so nothing here can write to (or lock) the daemon's
journal. A file re-written with new content has a higher version; only its latest counts.
A joined channel's file (a LIVE or PI file scored with its field's BF file) is journaled beside
the scored one without counts; here it belongs to its field's row (`channels`, `channel_files`).
A well's images and completeness are counted as the daemon counts them (core/aggregate.py).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from wellwatch.core.aggregate import image_key, well_complete
from wellwatch.core.errors import WellwatchError
from wellwatch.daemon.history import well_history

FRAME_COLUMNS = ("path", "version", "state", "reason", "plate", "well", "field", "timepoint", "z", "channel",
                 "live", "dead", "empty", "cells", "cell_live", "cell_dead", "cell_types", "t_file", "t_done",
                 "seq", "sha256")

# The latest version of each file: a re-written file replaces its earlier result.
LATEST_FRAMES = (f"SELECT {', '.join(FRAME_COLUMNS)} FROM frames f "
                 "WHERE f.version = (SELECT MAX(g.version) FROM frames g WHERE g.path = f.path)")


class JournalReadError(WellwatchError, OSError):
    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"journal {path}: {reason}")


def open_readonly(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise JournalReadError(str(path), "no such file (is journal.path right, and has the daemon started?)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        db.execute("SELECT 1 FROM frames LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise JournalReadError(str(path), f"not a wellwatch journal ({e})") from None
    return db


@dataclass(frozen=True)
class JournalView:
    path: Path

    def frames(self, plate: str | None = None, well: str | None = None) -> list[dict]:
        """Latest version of every frame (done and quarantined), in journal order."""
        sql, args = LATEST_FRAMES, []
        for column, value in (("plate", plate), ("well", well)):
            if value is not None:
                sql += f" AND f.{column} = ?"
                args.append(value)
        db = open_readonly(self.path)
        try:
            rows = db.execute(sql + " ORDER BY f.id", args).fetchall()
        finally:
            db.close()
        frames = []
        for row in rows:
            frame = dict(zip(FRAME_COLUMNS, row))
            frame["cell_types"] = json.loads(frame["cell_types"]) if frame["cell_types"] else None
            frames.append(frame)
        return fold_joined_channels(frames)

    def expected_images(self) -> dict[tuple, int | None]:
        """(plate, well, timepoint) -> images the daemon expected there (its plate layout, else
        plate.fields_per_well), from its latest well message; absent for a journal without them."""
        try:
            return {(m["plate"], m["well"], m["timepoint"]): m.get("fields_expected")
                    for m in well_history(self.path)}
        except (FileNotFoundError, sqlite3.DatabaseError) as e:
            raise JournalReadError(str(self.path), f"cannot read its well messages ({e})") from None

    def dose_messages(self) -> list[dict]:
        """The dose fits the daemon published (its outbox), oldest first."""
        db = open_readonly(self.path)
        try:
            rows = db.execute("SELECT payload FROM outbox WHERE topic >= 'dose/' AND topic < 'dose0' "
                              "ORDER BY seq").fetchall()
        finally:
            db.close()
        return [json.loads(payload) for (payload,) in rows]

    def latest_status(self, kind: str) -> dict | None:
        """The daemon's last `status/<kind>` message (its outbox), or None."""
        db = open_readonly(self.path)
        try:
            row = db.execute("SELECT payload FROM outbox WHERE topic = ? ORDER BY seq DESC LIMIT 1",
                             (f"status/{kind}",)).fetchone()
        finally:
            db.close()
        return json.loads(row[0]) if row else None

    def wells(self, fields_expected: int = 0) -> list[dict]:
        """Per (plate, well, timepoint): the sums a well message carries, from the done frames."""
        return well_summaries(self.frames(), fields_expected, self.expected_images())


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
