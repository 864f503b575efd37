"""Read-only queries of the journal's history, for anyone beside the daemon (the dashboard's time
courses, the snapshot endpoint's range requests, a notebook).

The journal's outbox holds every well message the daemon sent; the latest one per (plate, well,
timepoint) is that well's count at that timepoint. A read-only connection never blocks the daemon
(WAL: readers do not block the writer).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


def open_read_only(journal_path: str | Path) -> sqlite3.Connection:
    path = Path(journal_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"journal {path}: no such file")
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)


def well_history(journal: str | Path | sqlite3.Connection, plate: str | None = None, well: str | None = None,
                 timepoints: tuple[int, int] | None = None, up_to_seq: int | None = None,
                 after_seq: int | None = None) -> list[dict]:
    """The latest well message per (plate, well, timepoint), ordered by plate, well, timepoint.

    Optional filters: one plate, one well, an inclusive range of timepoints, messages with
    seq <= `up_to_seq` (a snapshot's consistent cut) and seq > `after_seq` (the states changed
    since a subscriber's last seq). `journal`: a path or an open connection.
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
