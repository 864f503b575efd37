"""The daemon's journal, read-only: per-frame rows and per-well, per-timepoint sums.

Opened with SQLite's read-only URI mode, so nothing here can write to (or lock) the daemon's
journal. A file re-written with new content has a higher version; only its latest counts.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from wellwatch.daemon.errors import WellwatchError

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
        out = []
        for row in rows:
            frame = dict(zip(FRAME_COLUMNS, row))
            frame["cell_types"] = json.loads(frame["cell_types"]) if frame["cell_types"] else None
            out.append(frame)
        return out

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
        return well_summaries(self.frames(), fields_expected)


def _sum(values) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def well_summaries(frames: list[dict], fields_expected: int = 0) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for f in frames:
        if f["state"] == "done" and f["well"] is not None:
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
        fields = len({f["field"] for f in fs})
        out.append({
            "type": "well", "plate": plate, "well": well, "timepoint": timepoint, "frames": fields,
            "fields_expected": fields_expected or None, "complete": bool(fields_expected and fields >= fields_expected),
            "counts": {"live": live, "dead": dead, "empty": sum(f["empty"] or 0 for f in fs)},
            "live_fraction": live / (live + dead) if live + dead else None, "unit": "tile",
            "cells": _sum(f["cells"] for f in fs),
            "cell_counts": {"live": cell_live, "dead": cell_dead} if cell_live is not None else None,
            "cell_live_fraction": (cell_live / (cell_live + cell_dead)
                                   if cell_live is not None and cell_live + cell_dead else None),
            "cell_types": types, "source": "journal"})
    return out
