"""Which file names can be frames: the daemon's watcher and `wellwatch reprocess` filter an acquisition's
files alike. Temp names (".x.part", "~x.tif", "x.tmp") never are; a rename gives the final name."""

from __future__ import annotations

TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".temp", ".lock")


def is_candidate_name(name: str, extensions: tuple[str, ...]) -> bool:
    lower = name.lower()
    if name.startswith((".", "~")) or lower.endswith(TEMP_SUFFIXES):
        return False
    return lower.endswith(tuple(e.lower() for e in extensions))
