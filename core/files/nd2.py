"""Nikon NIS-Elements .nd2 files, finished or still being written, frame by frame.

An ND2 (v3) file is a sequence of chunks, each aligned to 4096 bytes:
    magic 0x0ABECEDA (u32) | name length (u32) | data length (u64) | name ("ImageDataSeq|12!") | data
and, once the file is closed, a chunk map (every chunk's name -> offset, size) whose location sits
in the file's last 40 bytes. The `nd2` package reads finished files through that map.

While a file grows (NIS-Elements acquiring, or a copy in progress) there is no map yet. We walk the
chunks from the start and keep only those whose header AND data lie inside the bytes already on
disk; the walk stops at the first incomplete or invalid header, so nothing past what is complete is
ever read. `nd2` is then handed a view of the file: those complete bytes followed by a chunk map
listing just those chunks. A frame is readable when its image chunk is complete and the metadata
chunks that describe it (attributes, experiment loops, channels) are complete too; a writer that
stores its attributes only at the end (as a plain copy of a finished file does) makes every frame
wait for the end -- slower, never wrong.

A frame's identity is (file, sequence index); the daemon journals it as "name.nd2#index".
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.errors import FrameReadError
from wellwatch.core.layouts.base import PlateLayout
from wellwatch.core.plate import PLATE_FORMATS, normalise_well

CHUNK_MAGIC = 0x0ABECEDA
CHUNK_HEADER = struct.Struct("<IIQ")
ALIGNMENT = 4096
CHUNKMAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
FILEMAP_NAME = b"ND2 FILEMAP SIGNATURE NAME 0001!"
FILE_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
_TRAILER = struct.Struct("<32sQ")
_FRAME_CHUNK = re.compile(rb"^ImageDataSeq\|(\d+)!$")
# without these the frames cannot be decoded (shape, dtype, loops, channels)
REQUIRED_CHUNKS = (b"ImageAttributesLV!", b"ImageMetadataLV!", b"ImageMetadataSeqLV|0!")
_WELL_IN_NAME = re.compile(r"^([A-Za-z]{1,2}\d{1,2})(?:$|[^0-9])")


def frame_key(rel_path: str, index: int) -> str:
    """The journal's path for one frame of an .nd2 file."""
    return f"{rel_path}#{index}"


@dataclass(frozen=True)
class Nd2Frame:
    index: int        # sequence index in the file
    timepoint: int    # from 1, as NIS-Elements numbers them (and names the TIFFs it exports: t001)
    position: int     # XY position index, from 0
    z: int            # from 0
    well: str | None  # from the position's name when it names a well ("B03", "B3-1")
    field: int        # from 1: the position's rank within its well (or the position + 1)


@dataclass(frozen=True)
class Nd2Contents:
    """What an .nd2 file holds, and which of its frames can be read now."""
    path: str
    finished: bool                 # the chunk map is written: the file is closed
    sizes: dict[str, int]          # e.g. {"T": 3, "Z": 10, "C": 2, "Y": 31, "X": 38}
    channels: tuple[str, ...]
    pixel_size_um: float | None
    position_names: tuple[str, ...]
    readable: tuple[Nd2Frame, ...]
    expected_frames: int           # frames the experiment loops promise

    @property
    def readable_indices(self) -> set[int]:
        return {f.index for f in self.readable}


def scan_complete_chunks(handle, size: int) -> tuple[dict[bytes, tuple[int, int]], int]:
    """Chunks whose header and data end within `size` bytes: name -> (offset, data length); and
    the end of the last complete chunk. Stops at the first invalid or incomplete header."""
    chunks: dict[bytes, tuple[int, int]] = {}
    pos = end = 0
    while pos + CHUNK_HEADER.size <= size:
        handle.seek(pos)
        magic, name_len, data_len = CHUNK_HEADER.unpack(handle.read(CHUNK_HEADER.size))
        if magic != CHUNK_MAGIC or name_len > 4096:
            break  # not written yet (zeros), or not an ND2 chunk: read nothing beyond
        chunk_end = pos + CHUNK_HEADER.size + name_len + data_len
        if chunk_end > size:
            break  # its data is still arriving
        name = handle.read(name_len).split(b"\x00", 1)[0]
        if name.startswith(FILEMAP_NAME):
            break  # the chunk map itself: everything before it has been seen
        chunks[name] = (pos, data_len)
        end = chunk_end
        pos = -(-chunk_end // ALIGNMENT) * ALIGNMENT
    return chunks, end


def _has_chunk_map(handle, size: int) -> bool:
    if size < _TRAILER.size + CHUNK_HEADER.size:
        return False
    handle.seek(size - _TRAILER.size)
    signature, location = _TRAILER.unpack(handle.read(_TRAILER.size))
    return signature == CHUNKMAP_SIGNATURE and location + CHUNK_HEADER.size <= size - _TRAILER.size


def chunk_map_bytes(chunks: dict[bytes, tuple[int, int]], at: int) -> bytes:
    """A chunk map chunk (placed at offset `at`) listing `chunks`, plus the file's 40-byte trailer."""
    body = b"".join(name + struct.pack("<QQ", off, length) for name, (off, length) in chunks.items())
    body += CHUNKMAP_SIGNATURE + struct.pack("<Q", at)
    return CHUNK_HEADER.pack(CHUNK_MAGIC, len(FILEMAP_NAME), len(body)) + FILEMAP_NAME + body + \
        _TRAILER.pack(CHUNKMAP_SIGNATURE, at)


class _CompletePrefixView(io.RawIOBase):
    """Read-only file: the first `length` bytes of a file, then a synthetic chunk map."""

    def __init__(self, handle, length: int, tail: bytes):
        self._h, self._len, self._tail, self._pos = handle, length, tail, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        total = self._len + len(self._tail)
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else total + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        n = len(buffer)
        out = bytearray()
        if self._pos < self._len:
            self._h.seek(self._pos)
            out += self._h.read(min(n, self._len - self._pos))
        if len(out) < n and self._pos + len(out) >= self._len:
            start = self._pos + len(out) - self._len
            out += self._tail[start:start + n - len(out)]
        buffer[:len(out)] = out
        self._pos += len(out)
        return len(out)


def _open(path: str):
    """(nd2.ND2File over what is complete or None, finished, handle to close, complete frame indices)."""
    import nd2  # imported here: only a daemon watching .nd2 files needs it

    handle = open(path, "rb")
    try:
        size = os.fstat(handle.fileno()).st_size
        if _has_chunk_map(handle, size):
            handle.close()
            return nd2.ND2File(path), True, None, None
        chunks, end = scan_complete_chunks(handle, size)
        if not chunks or next(iter(chunks)) != FILE_SIGNATURE or not all(k in chunks for k in REQUIRED_CHUNKS):
            handle.close()
            return None, False, None, set()
        frames = {int(m.group(1)) for k in chunks if (m := _FRAME_CHUNK.match(k))}
        at = -(-end // ALIGNMENT) * ALIGNMENT
        view = io.BufferedReader(_CompletePrefixView(handle, at, chunk_map_bytes(chunks, at)))
        try:
            return nd2.ND2File(view), False, handle, frames
        except Exception:  # metadata chunks present but not yet consistent: wait for more
            handle.close()
            return None, False, None, set()
    except BaseException:
        handle.close()
        raise


def nd2_contents(path: str | Path, plate_format: int = 96) -> Nd2Contents | None:
    """The file's metadata and the frames readable now; None when nothing can be decoded yet."""
    path = str(path)
    try:
        f, finished, handle, complete = _open(path)
    except FileNotFoundError:
        return None
    except Exception as e:  # a finished file that nd2 cannot open is damaged
        raise FrameReadError(path, f"not a readable ND2 file ({type(e).__name__}: {e})") from None
    if f is None:
        return None
    try:
        with f:
            return _contents(f, path, finished, plate_format, complete)
    finally:
        if handle is not None:
            handle.close()


def _contents(f, path: str, finished: bool, plate_format: int, complete: set[int] | None) -> Nd2Contents:
    sizes = dict(f.sizes)
    metadata = f.metadata
    channels = tuple(c.channel.name for c in (metadata.channels or [])) or ("",)
    voxel = f.voxel_size()
    names = _position_names(f)
    wells = [_well_of(n, plate_format) for n in names]
    rank: dict[int, int] = {}
    seen: dict[str | None, int] = {}
    for p, w in enumerate(wells):
        seen[w] = seen.get(w, 0) + 1
        rank[p] = seen[w]  # positions without a well name all belong to the default well
    frames = []
    for index, loops in enumerate(f.loop_indices):
        if complete is not None and index not in complete:
            continue
        p = loops.get("P", 0)
        frames.append(Nd2Frame(index, loops.get("T", 0) + 1, p, loops.get("Z", 0),
                               wells[p] if p < len(wells) else None, rank.get(p, p + 1)))
    expected = int(np.prod([v for k, v in sizes.items() if k in ("T", "P", "Z")] or [1]))
    return Nd2Contents(path, finished, sizes, channels, float(voxel.x) if voxel.x else None, tuple(names),
                       tuple(frames), expected)


def _position_names(f) -> list[str]:
    for loop in f.experiment:
        if loop.type == "XYPosLoop":
            return [p.name or "" for p in loop.parameters.points]
    return []


def _well_of(name: str, plate_format: int) -> str | None:
    m = _WELL_IN_NAME.match(name.strip())
    if not m:
        return None
    try:
        return normalise_well(m.group(1), PLATE_FORMATS[plate_format])
    except Exception:
        return None


def read_nd2_frame(path: str | Path, index: int) -> np.ndarray:
    """One frame as (channels, Y, X); only from chunks that are complete on disk."""
    path = str(path)
    try:
        f, finished, handle, complete = _open(path)
    except FileNotFoundError:
        raise FrameReadError(path, "file vanished before it could be read", retryable=False) from None
    except Exception as e:
        raise FrameReadError(path, f"not a readable ND2 file ({type(e).__name__}: {e})") from None
    if f is None:
        raise FrameReadError(path, f"frame {index} is not complete on disk yet")
    try:
        with f:
            if complete is not None and index not in complete:
                raise FrameReadError(path, f"frame {index} is not complete on disk yet")
            frame = np.array(f.read_frame(index))
    except FrameReadError:
        raise
    except Exception as e:
        raise FrameReadError(path, f"frame {index} cannot be decoded ({type(e).__name__}: {e})") from None
    finally:
        if handle is not None:
            handle.close()
    if frame.ndim == 2:
        frame = frame[None]
    if frame.ndim != 3:
        raise FrameReadError(path, f"frame {index} has shape {frame.shape}; expected (channels, Y, X)",
                             retryable=False)
    return frame


def nd2_layout(contents: Nd2Contents, default_well: str, plate: str | None = None) -> PlateLayout:
    """The acquisition an .nd2 file describes: its wells (from position names), fields, T and Z."""
    fields: dict[str, list[int]] = {}
    wells_of = [_well_of(n, 96) for n in contents.position_names] or [None]
    seen: dict[str, int] = {}
    for w in wells_of:
        well = w or default_well
        seen[well] = seen.get(well, 0) + 1
        fields.setdefault(well, []).append(seen[well])  # as _contents numbers them: rank within the well
    return PlateLayout("nd2", contents.path, 8, 12, {w: tuple(f) for w, f in fields.items()},
                       contents.channels, tuple(range(1, contents.sizes.get("T", 1) + 1)),
                       tuple(range(contents.sizes.get("Z", 1))), {c: c for c in contents.channels},
                       contents.pixel_size_um, plate=plate)


class Nd2Tracker:
    """Which frames of which .nd2 files have been handed out; offers each readable frame once.

    `offer(path)` returns the frames of `path` that became readable since the last call and were
    neither handed out before nor listed in `done` (frame keys already journaled, after a restart).
    """

    def __init__(self, done: set[str] | None = None, plate_format: int = 96):
        self.done = set(done or ())
        self.plate_format = plate_format
        self.handed: dict[str, set[int]] = {}
        self.contents: dict[str, Nd2Contents] = {}

    def offer(self, path: str, rel: str) -> list[Nd2Frame]:
        contents = nd2_contents(path, self.plate_format)
        if contents is None:
            return []
        self.contents[path] = contents
        handed = self.handed.setdefault(path, set())
        fresh = [f for f in contents.readable if f.index not in handed]
        handed.update(f.index for f in fresh)
        return [f for f in fresh if frame_key(rel, f.index) not in self.done]

    def finished(self, path: str) -> bool:
        """The file is closed and every one of its frames has been offered (or was done before)."""
        c = self.contents.get(path)
        return bool(c and c.finished and len(self.handed.get(path, ())) == len(c.readable))


def select_channels(frame: np.ndarray, file_channels: tuple[str, ...], wanted: tuple[str, ...],
                    path: str) -> list[np.ndarray]:
    """The model's channels, in its order, from one (C, Y, X) frame; one-channel files give their one."""
    if len(file_channels) == 1 and len(wanted) == 1:
        return [frame[0]]
    missing = [w for w in wanted if w not in file_channels]
    if missing:
        raise FrameReadError(path, f"channel(s) {missing} not in the file; it has {list(file_channels)} "
                                   "(set channels.label_free to these names)", retryable=False)
    return [frame[file_channels.index(w)] for w in wanted]
