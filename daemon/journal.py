"""The SQLite journal: every frame's identity and outcome, its results, and the outbox.

A frame's results and the messages announcing them are written in one transaction, so after a
crash either both exist or neither does: a frame is counted once, ever. WAL + synchronous=FULL,
on a local disk only (SQLite's locking is not safe on network filesystems).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from wellwatch.core.errors import StartupError
from wellwatch.core.aggregate import TileCounts

FRAMES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('done', 'quarantined')),
    reason TEXT,
    plate TEXT, well TEXT, field INTEGER, timepoint INTEGER, z INTEGER, channel TEXT,
    live INTEGER, dead INTEGER, empty INTEGER,
    t_file REAL, t_done REAL,
    seq INTEGER,  -- the outbox message announcing this outcome
    cells INTEGER,  -- cells found by segmentation; NULL when the daemon did not segment
    cell_live INTEGER, cell_dead INTEGER,  -- cells called live/dead from the tiles at their centroids
    cell_types TEXT,  -- JSON {class name: cells} from a cell-type model; NULL without one
    dead_p_sum REAL, cell_dead_p_sum REAL,  -- sums of P(dead) over the scored tiles / called cells; NULL: unknown
    UNIQUE (path, version)  -- a path's content may return to earlier bytes: a new version
);
"""

SCHEMA = FRAMES_TABLE.replace("{name}", "frames") + """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent) WHERE sent = 0;
-- Files on their way in: seen (waiting at the completeness gate) or read (handed to a reader).
-- Nothing is counted for them yet; after a crash the start-up scan finds them again.
CREATE TABLE IF NOT EXISTS inflight (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('seen', 'read')),
    t REAL NOT NULL  -- epoch seconds of the last change
);
-- Files that were being read when the daemon died (kill -9, OOM, a crash in native code):
-- `deaths` counts deaths while it was read as usual, `alone` deaths while it was read alone as a
-- suspect (after a restart suspects are read one at a time); each is read first in an isolated child process (daemon/suspect_read.py).
CREATE TABLE IF NOT EXISTS suspects (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    deaths INTEGER NOT NULL DEFAULT 0,
    alone INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (path, size, mtime_ns)
);
-- Every frame's state: seen, read, inferred (results committed, announcement not yet sent),
-- published, or quarantined.
CREATE VIEW IF NOT EXISTS frame_status AS
SELECT f.path, f.version, f.sha256,
       CASE WHEN f.state = 'quarantined' THEN 'quarantined'
            WHEN o.sent = 1 THEN 'published'
            ELSE 'inferred' END AS status,
       f.reason
FROM frames f LEFT JOIN outbox o ON o.seq = f.seq
UNION ALL
SELECT i.path, NULL, NULL, i.state, NULL FROM inflight i
WHERE NOT EXISTS (SELECT 1 FROM frames f WHERE f.path = i.path AND f.size = i.size AND f.mtime_ns = i.mtime_ns);
"""

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "glusterfs",
                       "ceph", "fuse.glusterfs", "lustre", "davfs", "fuse.davfs2"}


@dataclass(frozen=True)
class FrameRecord:
    path: str
    size: int
    mtime_ns: int
    sha256: str
    version: int
    state: str
    reason: str | None
    plate: str | None
    well: str | None
    field: int | None
    timepoint: int | None
    z: int | None
    channel: str | None
    live: int | None
    dead: int | None
    empty: int | None
    t_file: float | None
    t_done: float | None
    seq: int | None = None
    cells: int | None = None
    cell_live: int | None = None
    cell_dead: int | None = None
    cell_types: str | None = None  # JSON
    # the mean_probability estimator's inputs (core/intervals.py): journaled so that a restart or an
    # evicted timepoint's refill publishes what an uninterrupted run does; NULL in older journals
    dead_p_sum: float | None = None
    cell_dead_p_sum: float | None = None

    def counts(self):
        return TileCounts(self.live, self.dead, self.empty, self.cells, self.cell_live, self.cell_dead,
                          json.loads(self.cell_types) if self.cell_types else None,
                          dead_p_sum=self.dead_p_sum, cell_dead_p_sum=self.cell_dead_p_sum)


@dataclass(frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: dict


def filesystem_type(path: Path) -> str:
    """The mount type holding `path`, from /proc/mounts (longest matching mount point)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target, best, kind = str(path.resolve()), "", "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, parts[2]
    return kind


class _Probe(Exception):
    """Rolls back the start-up write probe."""


class Journal:
    """One connection per thread: open a Journal in the thread that uses it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        folder = self.path.parent
        if not folder.is_dir():
            raise StartupError(f"journal.path {self.path}: folder {folder} does not exist")
        fs = filesystem_type(folder)
        if fs in NETWORK_FILESYSTEMS:
            raise StartupError(f"journal.path {self.path} is on a {fs} network filesystem; "
                               "put the journal on a local disk")
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StartupError(f"journal.path {self.path}: cannot open as SQLite ({e})") from None
        self._check_writable()

    def _check_writable(self) -> None:
        """Fail at start, naming the file, rather than at the first frame: write a row, roll it back."""
        try:
            with self._transaction() as cur:
                cur.execute("INSERT INTO inflight (path, size, mtime_ns, state, t) VALUES ('', 0, 0, 'seen', 0)")
                raise _Probe
        except _Probe:
            pass
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise StartupError(f"journal.path {self.path}: cannot write to it ({e}); check the file's and its "
                               "folder's permissions and free space") from None

    def _migrate(self) -> None:
        """Bring journals of earlier releases up to date: per-cell columns, P(dead) sums (NULL in old
        rows: their estimates stay null), one row per version."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(frames)")}
        for name, kind in (("cells", "INTEGER"), ("cell_live", "INTEGER"), ("cell_dead", "INTEGER"),
                           ("cell_types", "TEXT"), ("dead_p_sum", "REAL"), ("cell_dead_p_sum", "REAL")):
            if name not in columns:
                self.db.execute(f"ALTER TABLE frames ADD COLUMN {name} {kind}")
        table_sql = self.db.execute("SELECT sql FROM sqlite_master WHERE name = 'frames'").fetchone()[0]
        if "UNIQUE (path, version)" not in " ".join(table_sql.split()):
            # UNIQUE (path, sha256) refused a file restored to earlier pixels: rebuild with (path, version)
            cols = ", ".join(FrameRecord.__dataclass_fields__)
            with self._transaction() as cur:
                cur.execute("DROP VIEW IF EXISTS frame_status")
                cur.execute(FRAMES_TABLE.replace("{name}", "frames_new"))
                cur.execute(f"INSERT INTO frames_new (id, {cols}) SELECT id, {cols} FROM frames")
                cur.execute("DROP TABLE frames")
                cur.execute("ALTER TABLE frames_new RENAME TO frames")
            self.db.executescript(SCHEMA)  # the view again

    def close(self) -> None:
        self.db.close()

    # --- reads -------------------------------------------------------------------------------

    def records(self) -> Iterator[FrameRecord]:
        cols = ", ".join(FrameRecord.__dataclass_fields__)
        for row in self.db.execute(f"SELECT {cols} FROM frames ORDER BY id"):
            yield FrameRecord(*row)

    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]

    def last_sent_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE sent = 1").fetchone()[0]

    def sent_payloads(self, topic_prefix: str) -> Iterator[dict]:
        """Sent messages under a topic prefix, oldest first (to rebuild the snapshot state)."""
        rows = self.db.execute("SELECT payload FROM outbox WHERE sent = 1 AND topic >= ? AND topic < ? "
                               "ORDER BY seq", (topic_prefix, topic_prefix + "\uffff"))
        for (payload,) in rows:
            yield json.loads(payload)

    def unsent(self) -> list[OutboxMessage]:
        rows = self.db.execute("SELECT seq, topic, payload FROM outbox WHERE sent = 0 ORDER BY seq")
        return [OutboxMessage(seq, topic, json.loads(payload)) for seq, topic, payload in rows]

    def latest_version(self, path: str) -> int:
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM frames WHERE path = ?",
                               (path,)).fetchone()[0]

    def field_counts(self, plate: str, well: str, timepoint: int) -> list[tuple[int, int, object]]:
        """(field, z, TileCounts) of every done frame of one well at one timepoint, oldest first; a
        joined channel's file (no counts: they are its field's scored file's) is none of them."""
        cols = ", ".join(FrameRecord.__dataclass_fields__)
        rows = self.db.execute(f"SELECT {cols} FROM frames WHERE plate = ? AND well = ? AND timepoint = ? "
                               "AND state = 'done' AND channel IS NOT NULL AND live IS NOT NULL ORDER BY id",
                               (plate, well, timepoint))
        return [(r.field, r.z or 0, r.counts()) for r in (FrameRecord(*row) for row in rows)]

    def latest_sha256(self, path: str) -> str | None:
        """The content of a path's latest version (None: never journaled)."""
        row = self.db.execute("SELECT sha256 FROM frames WHERE path = ? ORDER BY version DESC LIMIT 1",
                              (path,)).fetchone()
        return row[0] if row else None

    def has(self, path: str, sha256: str) -> bool:
        return self.db.execute("SELECT 1 FROM frames WHERE path = ? AND sha256 = ?",
                               (path, sha256)).fetchone() is not None

    # --- writes ------------------------------------------------------------------------------

    def commit(self, records: Iterable[FrameRecord], messages: Iterable[OutboxMessage]) -> None:
        """Write frame records and their messages in one transaction (a group commit: one fsync).

        A record already present (same path and version) violates the UNIQUE constraint and
        rolls the whole group back: the caller numbers versions from `latest_version()`, as the only writer.
        """
        cols = list(FrameRecord.__dataclass_fields__)
        with self._transaction() as cur:
            cur.executemany(f"INSERT INTO frames ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            [[getattr(r, c) for c in cols] for r in records])
            cur.executemany("INSERT INTO outbox (seq, topic, payload) VALUES (?, ?, ?)",
                            [(m.seq, m.topic, json.dumps(m.payload, sort_keys=True)) for m in messages])
            cur.executemany("DELETE FROM inflight WHERE path = ?", [(r.path,) for r in records])
            cur.executemany("DELETE FROM suspects WHERE path = ?", [(r.path,) for r in records])

    def mark_inflight(self, rows: Iterable[tuple[str, int, int, str]], forget: Iterable[str] = ()) -> None:
        """(path, size, mtime_ns, 'seen' | 'read') for files on their way in, after forgetting the
        paths in `forget` (read but not journaled: duplicates, vanished); one transaction."""
        with self._transaction() as cur:
            cur.executemany("DELETE FROM inflight WHERE path = ?", [(p,) for p in forget])
            cur.executemany("INSERT OR REPLACE INTO inflight (path, size, mtime_ns, state, t) "
                            "VALUES (?, ?, ?, ?, (julianday('now') - 2440587.5) * 86400.0)", rows)

    def clear_inflight(self) -> int:
        """At start-up: forget the previous run's in-flight files (the scan finds them again); those
        that were being read count one more death in `suspects`."""
        with self._transaction() as cur:
            reading = cur.execute("SELECT path, size, mtime_ns FROM inflight WHERE state = 'read'").fetchall()
            # alone: a suspect being read by itself (the gate reads suspects so); any other death
            # (several files in the readers, or one file that was not a suspect) makes suspects
            was_suspect = len(reading) == 1 and cur.execute(
                "SELECT 1 FROM suspects WHERE path = ? AND size = ? AND mtime_ns = ?", reading[0]).fetchone()
            column = "alone" if was_suspect else "deaths"
            cur.execute(f"INSERT INTO suspects (path, size, mtime_ns, {column}) "
                        "SELECT path, size, mtime_ns, 1 FROM inflight WHERE state = 'read' AND true "
                        f"ON CONFLICT (path, size, mtime_ns) DO UPDATE SET {column} = {column} + 1")
            return cur.execute("DELETE FROM inflight").rowcount

    def suspects(self) -> dict[tuple[str, int, int], tuple[int, int]]:
        """(path, size, mtime_ns) -> (daemon deaths while it was being read with others, alone)."""
        rows = self.db.execute("SELECT path, size, mtime_ns, deaths, alone FROM suspects")
        return {(p, s, m): (d, a) for p, s, m, d, a in rows}

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def mark_sent(self, up_to_seq: int) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE outbox SET sent = 1 WHERE sent = 0 AND seq <= ?", (up_to_seq,))

