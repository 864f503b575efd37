"""Is this TIFF provably complete? Its structure says so without decoding a pixel.

Complete means: a valid header (classic or BigTIFF), an IFD chain that ends (offset 0) with every
IFD and every out-of-line tag value inside the file, and in every IFD the strips or tiles the
dimensions call for, each offset + byte count inside the file (uncompressed: at least the bytes
the dimensions need). A file still being written fails one of these: the header or an IFD is not
there yet (IFD written last), or a strip points past the end (IFD written first, data growing).

What structure cannot prove: that bytes inside the file are final. A pre-allocated file (zeros to
its full size, then filled in place) whose header and IFDs are already written looks complete;
the gate therefore trusts this proof only for a file that is new or growing, never for one whose
mtime moves at a constant size (see gate.CompletenessGate). The gate can first see such a file
just after the zeros and the header landed (empty, then full size: "grown"), so the proof also
asks that the last bytes of the strip placed last in the file are not all zero: a writer filling
in order writes them last (tiled files are not checked: edge tiles end in padding). A finished
image whose last strip ends in zeros then waits while it stays so, up to
watch.zero_tail_max_wait_s when its first pixels are not zero (`tiff_being_filled`;
gate.CompletenessGate). Nor can it tell a multi-page
stack appended page by page from a finished shorter one: after each page the file is a valid TIFF
(docs/operating/completeness.md: use rename or watch.completeness = "settle" for such writers).
"""

from __future__ import annotations

import math
import os
import struct

MAX_IFDS = 100_000  # a longer chain is a loop or garbage: not provable, the settle time decides
TAIL_BYTES = 16  # the last strip's last bytes must not all be zero (8 uint16 pixels; smaller catches more)
HEAD_BYTES = 4096  # the first strip's first bytes: not all zero once a writer filling in place has begun

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_INT_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
WIDTH, LENGTH, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES = 256, 257, 258, 259, 273, 277
ROWS_PER_STRIP, STRIP_BYTES, PLANAR = 278, 279, 284
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTES = 322, 323, 324, 325
_NEEDED = {WIDTH, LENGTH, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_BYTES, PLANAR,
           TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTES}


class _Incomplete(Exception):
    """The structure does not (yet) prove the file complete."""


class _ZeroTail(_Incomplete):
    """Complete but for the last strip's last bytes, which are all zero; `filled`: the first
    strip's first bytes are not (a writer filling a pre-allocated file in place is under way)."""

    def __init__(self, filled: bool):
        super().__init__()
        self.filled = filled


def tiff_is_complete(path: str) -> bool:
    """True when the file's TIFF structure proves every byte it describes is present.
    False for anything else: still being written, not a TIFF, unreadable (the settle time decides)."""
    try:
        with open(path, "rb") as f:
            return _check(f.fileno(), os.fstat(f.fileno()).st_size)
    except (OSError, _Incomplete, struct.error, ValueError, OverflowError):
        return False


def tiff_being_filled(path: str) -> bool:
    """True when the structure is all there and the first pixels are written, but the last strip
    still ends in zeros: a pre-allocated file being filled in place (or a truly dark last row); the
    gate keeps such a file waiting. An image all zero (nothing filled, or black) is not held."""
    try:
        with open(path, "rb") as f:
            _check(f.fileno(), os.fstat(f.fileno()).st_size)
    except _ZeroTail as e:
        return e.filled
    except (OSError, _Incomplete, struct.error, ValueError, OverflowError):
        return False
    return False


def _read(fd: int, offset: int, n: int, size: int) -> bytes:
    if offset < 0 or n < 0 or offset + n > size:
        raise _Incomplete
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise _Incomplete  # shrank under us
    return data


def _check(fd: int, size: int) -> bool:
    head = _read(fd, 0, 16 if size >= 16 else 8, size)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        return False
    version = struct.unpack(order + "H", head[2:4])[0]
    if version == 42:
        big, ifd = False, struct.unpack(order + "I", head[4:8])[0]
    elif version == 43 and len(head) == 16:
        big, ifd = True, struct.unpack(order + "Q", head[8:16])[0]
    else:
        return False
    seen: set[int] = set()
    last_block = (0, 0)  # (offset, byte count) of the image data placed last in the file
    first_block = (size, 0)  # ... and first
    while ifd:
        if ifd in seen or len(seen) >= MAX_IFDS:
            return False
        seen.add(ifd)
        tags, ifd = _read_ifd(fd, ifd, size, order, big)
        first, last = _check_image_data(tags, size)
        last_block, first_block = max(last_block, last), min(first_block, first)
    offset, count = last_block
    tail = min(count, TAIL_BYTES)
    if tail and not any(_read(fd, offset + count - tail, tail, size)):
        start, n = first_block
        filled = any(_read(fd, start, min(n, HEAD_BYTES), size)) if n else False
        raise _ZeroTail(filled)  # zeros where the last pixels go: pre-allocated and not filled yet (or dark)
    return bool(seen)


def _read_ifd(fd: int, at: int, size: int, order: str, big: bool) -> tuple[dict[int, tuple[int, ...]], int]:
    count_fmt, entry_size, value_size, next_fmt = ("Q", 20, 8, "Q") if big else ("H", 12, 4, "I")
    n_fmt = "Q" if big else "I"
    count_bytes = 8 if big else 2
    (count,) = struct.unpack(order + count_fmt, _read(fd, at, count_bytes, size))
    body = _read(fd, at + count_bytes, count * entry_size + value_size, size)
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        entry = body[i * entry_size:(i + 1) * entry_size]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        (n,) = struct.unpack(order + n_fmt, entry[4:4 + value_size])
        raw = entry[4 + value_size:]
        nbytes = n * _TYPE_SIZES.get(typ, 1)
        if nbytes > value_size:  # the value lives elsewhere: it must be inside the file
            (where,) = struct.unpack(order + next_fmt, raw)
            if tag not in _NEEDED:
                if where + nbytes > size:
                    raise _Incomplete
                continue
            raw = _read(fd, where, nbytes, size)
        if tag in _NEEDED:
            fmt = _INT_FORMATS.get(typ)
            if fmt is None:
                raise _Incomplete  # a layout tag that is not an integer: not a TIFF we can prove
            tags[tag] = struct.unpack(f"{order}{n}{fmt}", raw[:nbytes])
    (next_ifd,) = struct.unpack(order + next_fmt, body[count * entry_size:])
    return tags, next_ifd


def _check_image_data(tags: dict[int, tuple[int, ...]], size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Raises _Incomplete unless every block is inside the file; -> (offset, count) of the first
    and of the last block."""
    def one(tag: int, default: int | None = None) -> int:
        if tags.get(tag):
            return tags[tag][0]
        if default is None:
            raise _Incomplete
        return default

    width, length = one(WIDTH), one(LENGTH)
    samples, planar = one(SAMPLES, 1), one(PLANAR, 1)
    if TILE_OFFSETS in tags:
        tile_w, tile_l = one(TILE_WIDTH), one(TILE_LENGTH)
        offsets, counts = tags[TILE_OFFSETS], tags.get(TILE_BYTES, ())
        expected = math.ceil(width / tile_w) * math.ceil(length / tile_l)
        pixels = expected * tile_w * tile_l  # tiles are stored whole, padded at the edges
    else:
        rows = min(one(ROWS_PER_STRIP, length), length) or length
        offsets, counts = tags.get(STRIP_OFFSETS, ()), tags.get(STRIP_BYTES, ())
        expected = math.ceil(length / rows)
        pixels = width * length
    if planar == 2:
        expected *= samples
    if not expected or len(offsets) != expected or len(counts) != expected:
        raise _Incomplete
    if any(offset + count > size for offset, count in zip(offsets, counts)):
        raise _Incomplete
    if one(COMPRESSION, 1) == 1:  # uncompressed: the byte counts must hold every pixel the dimensions call for
        bits_per_pixel = sum(tags.get(BITS, (1,))[:samples]) if len(tags.get(BITS, ())) > 1 else one(BITS, 1) * samples
        if sum(counts) * 8 < pixels * bits_per_pixel:
            raise _Incomplete
    if TILE_OFFSETS in tags:
        return (size, 0), (0, 0)  # edge tiles end in padding zeros: their tail says nothing about the writer
    blocks = list(zip(offsets, counts))
    return min(blocks), max(blocks)
