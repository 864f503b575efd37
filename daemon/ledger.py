"""The frame ledger: which files are done and which are on their way, shared by the stages.

The gate asks it before handing a file out, the readers before decoding (same path, same content
as its latest version: a duplicate), the commit stage tells it what was journaled. Only a path's
latest version counts: a file restored to earlier pixels differs from its latest version, so it
is read and becomes a new version. With joined channels it also knows each field's journaled
channel files: a re-written one's reader fetches the others. One lock guards the maps; the
journal is the truth and a restart rebuilds the ledger from it (daemon/recovery.py).
"""

from __future__ import annotations

import threading

Identity = tuple[str, int, int]  # (rel path, size, mtime_ns)


class FrameLedger:
    def __init__(self, joins_channels: bool = False):
        self.joins_channels = joins_channels  # fields joined from channel files: keep their files
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, int, str]] = {}  # rel path -> (size, mtime_ns, sha256) journaled last
        # rel paths handed to a reader and not yet journaled: a scan must not hand them out again
        # (a slow stage, e.g. segmentation on a CPU, would otherwise redo in-flight frames)
        self._on_their_way: set[str] = set()
        self._released: list[str] = []  # freed without a journal row: their `inflight` rows must go
        # joined fields journaled done: (plate, well, timepoint, field, z) -> {channel: rel path}. A
        # re-written channel file needs its partners, which the gate does not offer again (unchanged)
        self._field_files: dict[tuple, dict[str, str]] = {}

    def remember(self, rel: str, size: int, mtime_ns: int, sha256: str) -> None:
        """A path's new latest version was journaled; the path is free again."""
        with self._lock:
            self._on_their_way.discard(rel)
            self._latest[rel] = (size, mtime_ns, sha256)

    def remember_field_file(self, record) -> None:
        """A journaled frame record (daemon/journal.py): a done channel file becomes its field's file
        of that channel."""
        if self.joins_channels and record.state == "done" and record.channel:
            key = (record.plate, record.well, record.timepoint, record.field, record.z)
            with self._lock:
                self._field_files.setdefault(key, {})[record.channel] = record.path

    def field_files(self, key: tuple) -> dict[str, str]:
        """{channel: rel path} of a field's channel files journaled done; empty if none were."""
        with self._lock:
            return dict(self._field_files.get(key, {}))

    def needs_look(self, identity: Identity) -> bool:
        """True unless this identity is the path's latest journaled one, or the path is being read."""
        rel, size, mtime_ns = identity
        with self._lock:
            latest = self._latest.get(rel)
            return (latest is None or latest[:2] != (size, mtime_ns)) and rel not in self._on_their_way

    def claim(self, rel: str) -> bool:
        """Mark a path as on its way to a reader; False if it already is."""
        with self._lock:
            if rel in self._on_their_way:
                return False
            self._on_their_way.add(rel)
            return True

    def unchanged(self, rel: str, size: int, mtime_ns: int) -> None:
        """Read again and found to hold its latest version's content (touched, copied back): remember
        its new size and mtime so that scans do not read it again; the path is free again."""
        with self._lock:
            self._on_their_way.discard(rel)
            self._released.append(rel)
            if rel in self._latest:
                self._latest[rel] = (size, mtime_ns, self._latest[rel][2])

    def release(self, rel: str) -> None:
        """A path's processing ended without a journal row (a duplicate, or gone): free it."""
        with self._lock:
            self._on_their_way.discard(rel)
            self._released.append(rel)

    def take_released(self) -> list[str]:
        """Paths freed without a journal row since the last call (the gate clears their `inflight` rows)."""
        with self._lock:
            released, self._released = self._released, []
        return released

    def is_latest_content(self, rel: str, sha256: str) -> bool:
        """True if `sha256` is the content of the path's latest journaled version."""
        with self._lock:
            latest = self._latest.get(rel)
            return latest is not None and latest[2] == sha256

    def is_on_its_way(self, rel: str) -> bool:
        with self._lock:
            return rel in self._on_their_way

    def on_their_way(self) -> int:
        with self._lock:
            return len(self._on_their_way)
