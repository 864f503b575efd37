"""What flows between the daemon's stages, in the order a frame meets them. All frozen: a stage
makes a new message instead of writing into one another thread holds.

    FrameFile    gate -> read      a complete file (or .nd2 frame): its identity and parsed name
    ReadFrame    read -> infer     the frame read, hashed and prepared as the models' inputs
    ScoredFrame  infer -> commit   every network's outputs for the frame
    FailedFrame  any -> commit     a frame quarantined, with the reason
    StatusEvent, LayoutEvent       -> commit: a `status/` message, the plate layout becoming known
    STOP                           at shutdown, after the last message: finish what came before, then end
"""

from __future__ import annotations

from dataclasses import dataclass

from wellwatch.core.layouts import PlateLayout
from wellwatch.core.model_inputs import PreparedFrame
from wellwatch.core.naming import FrameMeta
from wellwatch.core.scoring import FrameOutputs

STOP = object()  # the pipeline puts it on the readers' queue (one per worker) and the inference queue;
                 # the inference stage passes it on to the commit stage once drained


@dataclass(frozen=True)
class FrameFile:
    """A complete file the gate hands to a reader: its path, name fields (parsed once, at the gate)
    and identity when seen."""
    path: str
    rel: str  # relative to watch.root: the journal's key
    meta: FrameMeta
    size: int
    mtime_ns: int
    attempt: int = 0
    nd2_index: int | None = None  # a frame of an .nd2 file (rel is then "file.nd2#index")
    pixel_size_um: float | None = None  # from the vendor's metadata (.nd2 file, plate layout); None: unknown


@dataclass(frozen=True, eq=False)
class ReadFrame:
    """A frame read and prepared: its content hash, its models' inputs, the channel files joined into it."""
    file: FrameFile
    sha256: str
    prepared: PreparedFrame
    t_read: float  # time.monotonic() when it was handed on: the batchers' max_delay counts from here
    members: tuple = ()   # (FrameFile, sha256) of the field's other channel files, journaled with this one
    channels: tuple = ()  # the file channels the model read, in its order


@dataclass(frozen=True, eq=False)
class ScoredFrame:
    """A frame every network it needs has scored: ready to count, journal and announce."""
    file: FrameFile
    sha256: str
    outputs: FrameOutputs
    members: tuple = ()
    channels: tuple = ()


@dataclass(frozen=True)
class FailedFrame:
    file: FrameFile
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
