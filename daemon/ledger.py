"""The frame ledger: which files are done and which are on their way, shared by the stages.

The gate asks it before handing a file out, the readers before decoding (same path, same content:
a duplicate), the commit stage tells it what was journaled. One lock guards all three sets; the
journal is the truth and a restart rebuilds the ledger from it (daemon/recovery.py).
"""

from __future__ import annotations

import threading

Identity = tuple[str, int, int]  # (rel path, size, mtime_ns)


class FrameLedger:
    def __init__(self):
        self._lock = threading.Lock()
        self._known: set[Identity] = set()           # identities already journaled
        self._known_content: set[tuple[str, str]] = set()  # (rel path, sha256) already journaled
        # rel paths handed to a reader and not yet journaled: a scan must not hand them out again
        # (a slow stage, e.g. segmentation on a CPU, would otherwise redo in-flight frames)
        self._on_their_way: set[str] = set()

    def remember(self, rel: str, size: int, mtime_ns: int, sha256: str) -> None:
        """A frame was journaled: its identity and content are done, its path free again."""
        with self._lock:
            self._on_their_way.discard(rel)
            self._known.add((rel, size, mtime_ns))
            self._known_content.add((rel, sha256))

    def needs_look(self, identity: Identity) -> bool:
        """True unless this exact identity is journaled or its path is already being read."""
        with self._lock:
            return identity not in self._known and identity[0] not in self._on_their_way

    def claim(self, rel: str) -> bool:
        """Mark a path as on its way to a reader; False if it already is."""
        with self._lock:
            if rel in self._on_their_way:
                return False
            self._on_their_way.add(rel)
            return True

    def release(self, rel: str) -> None:
        """A path's processing ended without a journal row (a duplicate, or gone): free it."""
        with self._lock:
            self._on_their_way.discard(rel)

    def has_content(self, rel: str, sha256: str) -> bool:
        with self._lock:
            return (rel, sha256) in self._known_content

    def on_their_way(self) -> int:
        with self._lock:
            return len(self._on_their_way)
