"""The daemon's journal, read-only: the one place that queries it for anyone beside its writer (the
dashboard, `wellwatch results`, the snapshot endpoint's range requests, a notebook).

Opened with SQLite's read-only URI mode, so nothing here can write to (or lock) the daemon's
journal; a read-only connection never blocks the daemon (WAL: readers do not block the writer).
The tables are the ones daemon/journal.py writes: `frames` (one row per version of a file: a file
re-written with new content has a higher version, and only its latest counts) and `outbox` (every
message the daemon published, by seq; the latest well message per (plate, well, timepoint) is that
well's state at that timepoint).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from wellwatch.core.errors import WellwatchError

from .summaries import fold_joined_channels, well_summaries

FRAME_COLUMNS = ("path", "version", "state", "reason", "plate", "well", "field", "timepoint", "z", "channel",
                 "live", "dead", "empty", "cells", "cell_live", "cell_dead", "cell_types", "t_file", "t_done",
                 "seq", "sha256")

# whether a frames row is its file's latest version: a re-written file replaces its earlier result
IS_LATEST = "f.version = (SELECT MAX(g.version) FROM frames g WHERE g.path = f.path)"


class JournalReadError(WellwatchError, OSError):
    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"journal {path}: {reason}")


def open_read_only(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise JournalReadError(str(path), "no such file (is journal.path right, and has the daemon started?)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        db.execute("SELECT 1 FROM frames LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise JournalReadError(str(path), f"not a wellwatch journal ({e})") from None
    return db


def well_history(journal: str | Path | sqlite3.Connection, plate: str | None = None, well: str | None = None,
                 timepoints: tuple[int, int] | None = None, up_to_seq: int | None = None,
                 after_seq: int | None = None) -> list[dict]:
    """The latest well message per (plate, well, timepoint), ordered by plate, well, timepoint.

    Optional filters: one plate, one well, an inclusive range of timepoints, messages with
    seq <= `up_to_seq` (a snapshot's consistent cut) and seq > `after_seq` (the states changed
    since a subscriber's last seq). `journal`: a path or an open connection (the daemon's own).
    """
    db = journal if isinstance(journal, sqlite3.Connection) else open_read_only(journal)
    try:
        sql = ["SELECT payload FROM outbox WHERE topic >= ? AND topic < ?"]
        prefix = "well/" if plate is None else f"well/{plate}/" if well is None else f"well/{plate}/{well}"
        args: list = [prefix, prefix + "\uffff"]
        if timepoints is not None:
            sql.append("AND json_extract(payload, '$.timepoint') BETWEEN ? AND ?")
            args += list(timepoints)
        if up_to_seq is not None:
            sql.append("AND seq <= ?")
            args.append(up_to_seq)
        if after_seq is not None:
            sql.append("AND seq > ?")
            args.append(after_seq)
        latest: dict[tuple, dict] = {}
        for (payload,) in db.execute(" ".join(sql) + " ORDER BY seq", args):
            m = json.loads(payload)
            if well is None or m["well"] == well:
                latest[(m["plate"], m["well"], m["timepoint"])] = m
        return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1], k[2] if k[2] is not None else -1))]
    finally:
        if db is not journal:
            db.close()


def _frame(row: tuple) -> dict:
    frame = dict(zip(FRAME_COLUMNS, row))
    frame["cell_types"] = json.loads(frame["cell_types"]) if frame["cell_types"] else None
    return frame


@dataclass(frozen=True)
class JournalView:
    """One journal file; each call opens it read-only and closes it again."""
    path: Path

    def _query(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        db = open_read_only(self.path)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def frames(self, plate: str | None = None, well: str | None = None) -> list[dict]:
        """Latest version of every frame (done and quarantined), in journal order, joined channels
        folded onto their field's row (summaries.fold_joined_channels)."""
        sql, args = f"SELECT {', '.join(FRAME_COLUMNS)} FROM frames f WHERE {IS_LATEST}", []
        for column, value in (("plate", plate), ("well", well)):
            if value is not None:
                sql += f" AND f.{column} = ?"
                args.append(value)
        return fold_joined_channels([_frame(row) for row in self._query(sql + " ORDER BY f.id", args)])

    def frame_versions(self) -> list[dict]:
        """Every version of every frame, in journal order, joined channels folded: each with `latest`
        (the version that counts) and `message`, the outbox message its row links (for a counted frame
        the well message that announced it, with the models that counted it), or None."""
        rows = self._query(f"SELECT {', '.join('f.' + c for c in FRAME_COLUMNS)}, o.payload, {IS_LATEST} "
                           "FROM frames f LEFT JOIN outbox o ON o.seq = f.seq ORDER BY f.id")
        return fold_joined_channels([dict(_frame(row[:-2]), message=json.loads(row[-2]) if row[-2] else None,
                                          latest=bool(row[-1])) for row in rows])

    def well_messages(self) -> list[dict]:
        """The latest well message per (plate, well, timepoint) (`well_history`)."""
        try:
            return well_history(self.path)
        except sqlite3.DatabaseError as e:
            raise JournalReadError(str(self.path), f"cannot read its well messages ({e})") from None

    def expected_images(self) -> dict[tuple, int | None]:
        """(plate, well, timepoint) -> images the daemon expected there (its plate layout, else
        plate.fields_per_well), from its latest well message; absent for a journal without them."""
        return {(m["plate"], m["well"], m["timepoint"]): m.get("fields_expected") for m in self.well_messages()}

    def dose_messages(self) -> list[dict]:
        """The dose fits the daemon published (its outbox), oldest first."""
        rows = self._query("SELECT payload FROM outbox WHERE topic >= 'dose/' AND topic < 'dose0' ORDER BY seq")
        return [json.loads(payload) for (payload,) in rows]

    def latest_status(self, kind: str) -> dict | None:
        """The daemon's last `status/<kind>` message (its outbox), or None."""
        rows = self._query("SELECT payload FROM outbox WHERE topic = ? ORDER BY seq DESC LIMIT 1",
                           (f"status/{kind}",))
        return json.loads(rows[0][0]) if rows else None

    def wells(self, fields_expected: int = 0) -> list[dict]:
        """Per (plate, well, timepoint): the sums a well message carries, from the done frames."""
        return well_summaries(self.frames(), fields_expected, self.expected_images())
