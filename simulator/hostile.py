"""Hostile files for fault tests and the fault campaign: decompression bombs and bit flips.

`tiff_bomb` writes a few-kB baseline TIFF whose header declares a huge zlib-compressed image:
a reader that trusts the header allocates width x height x 2 bytes before finding out.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_SHORT, _LONG = 3, 4


def tiff_bomb(path: str | Path, width: int, height: int, pages: int = 1) -> int:
    """Write a little-endian TIFF declaring `pages` uint16 pages of width x height (zlib, one strip
    each, holding only a 64 kB run of zeros). Returns the file's size in bytes."""
    strip = zlib.compress(b"\0" * 65536, 9)
    entries = 9
    ifd_size = 2 + entries * 12 + 4
    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for page in range(pages):
        ifd_at = len(out)
        strip_at = ifd_at + ifd_size
        next_ifd = strip_at + len(strip) if page < pages - 1 else 0
        tags = [(256, _LONG, width), (257, _LONG, height), (258, _SHORT, 16), (259, _SHORT, 8),
                (262, _SHORT, 1), (273, _LONG, strip_at), (277, _SHORT, 1), (278, _LONG, height),
                (279, _LONG, len(strip))]
        out += struct.pack("<H", entries)
        for tag, kind, value in tags:
            out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == _SHORT
                                                        else struct.pack("<I", value))
        out += struct.pack("<I", next_ifd) + strip
    Path(path).write_bytes(bytes(out))
    return len(out)


def flip_bit(path: str | Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of a file in place (offset from the start; negative counts from the end)."""
    p = Path(path)
    data = bytearray(p.read_bytes())
    data[offset] ^= 1 << bit
    p.write_bytes(bytes(data))


def die_in_worker(code: int = 9) -> None:
    """Run in a segmentation pool worker: the worker dies as the OOM killer would kill it."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL if code == 9 else signal.SIGTERM)


def nap(seconds: float, value: object = None) -> object:
    """Run in a pool worker: take a while, then answer `value`."""
    import time

    time.sleep(seconds)
    return value
