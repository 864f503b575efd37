"""Write a real .nd2 file the way a live acquisition does: chunk by chunk, frames as they are taken.

It re-lays out an existing ND2 file's own chunks (never invents pixel data): the file signature,
then the metadata chunks that describe frames, then each ImageDataSeq chunk, then everything else
and the chunk map once the "acquisition" ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from wellwatch.core.files.nd2 import (ALIGNMENT, CHUNK_HEADER, REQUIRED_CHUNKS, chunk_map_bytes,
                                         scan_complete_chunks)


def _raw_chunks(src: Path) -> dict[bytes, bytes]:
    data = src.read_bytes()
    with src.open("rb") as h:
        chunks, _ = scan_complete_chunks(h, len(data))
    out = {}
    for name, (off, length) in chunks.items():
        _, name_len, _ = CHUNK_HEADER.unpack(data[off:off + CHUNK_HEADER.size])
        out[name] = data[off:off + CHUNK_HEADER.size + name_len + length]
    return out


def write_live(src: Path, dst: Path) -> Iterator[int]:
    """Write `src`'s chunks to `dst` in acquisition order; yield each frame index once it is on disk."""
    chunks = _raw_chunks(src)
    names = list(chunks)
    frames = [n for n in names if n.startswith(b"ImageDataSeq|")]
    first = [names[0], *REQUIRED_CHUNKS]
    rest = [n for n in names if n not in first and n not in frames]
    offsets: dict[bytes, tuple[int, int]] = {}
    with dst.open("wb") as out:
        def put(name: bytes) -> None:
            pos = out.seek(0, 2)
            pos = -(-pos // ALIGNMENT) * ALIGNMENT
            out.seek(pos)
            raw = chunks[name]
            _, name_len, length = CHUNK_HEADER.unpack(raw[:CHUNK_HEADER.size])
            out.write(raw)
            out.flush()
            offsets[name] = (pos, length)

        for name in first:
            put(name)
        for name in frames:
            put(name)
            yield int(name[len(b"ImageDataSeq|"):-1])
        for name in rest:
            put(name)
        end = out.seek(0, 2)
        at = -(-end // ALIGNMENT) * ALIGNMENT
        out.write(b"\0" * (at - end))
        out.write(chunk_map_bytes(offsets, at))
        out.flush()


def copy_in_chunks(src: Path, dst: Path, chunk: int) -> Iterator[int]:
    """Copy `src` to `dst` `chunk` bytes at a time (a plain file copy); yield the bytes written so far."""
    data = src.read_bytes()
    with dst.open("wb") as out:
        for pos in range(0, len(data), chunk):
            out.write(data[pos:pos + chunk])
            out.flush()
            yield min(pos + chunk, len(data))


