"""What flows between the pipeline's stages: a frame to read, a frame that failed, a status event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wellwatch.core.naming import FrameMeta

if TYPE_CHECKING:
    from wellwatch.core.layouts import PlateLayout


@dataclass(frozen=True)
class FrameJob:
    """A complete file the gate hands to a reader: its path, name fields and identity when seen."""
    path: str
    rel: str  # relative to watch.root: the journal's key
    meta: FrameMeta
    size: int
    mtime_ns: int
    attempt: int = 0
    nd2_index: int | None = None  # a frame of an .nd2 file (rel is then "file.nd2#index")


@dataclass(frozen=True)
class FailedFrame:
    job: FrameJob
    sha256: str  # "" when the file could not be read at all
    reason: str


@dataclass(frozen=True)
class LayoutEvent:
    """The plate layout is known (at start, or from the first .nd2 file): set it and announce it."""
    layout: PlateLayout


@dataclass(frozen=True)
class StatusEvent:
    """A `status/<kind>` message for the stream (daemon started, root gone, ...)."""
    kind: str
    body: dict
