"""Completeness by structure: real TIFF files, cut short or written the way instruments write them."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wellwatch.daemon.settle_gate import CompletenessGate
from wellwatch.core.files.tiff_complete import tiff_is_complete, tiff_being_filled

IMAGE = (np.arange(3 * 64 * 80) % 60000).astype(np.uint16).reshape(3, 64, 80)


def tiff_file(tmp_path: Path, **kwargs) -> bytes:
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, IMAGE, **({"photometric": "minisblack"} | kwargs))
    return path.read_bytes()


def ifd_last_tiff(image: np.ndarray) -> bytes:
    """One uncompressed strip, then the IFD at the very end, as some writers do."""
    length, width = image.shape
    pixels = image.astype("<u2").tobytes()
    ifd_at = 8 + len(pixels)
    entries = [(256, 3, 1, width), (257, 3, 1, length), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, length), (279, 4, 1, len(pixels))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, n) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        for tag, typ, n, value in entries) + struct.pack("<I", 0)
    return b"II" + struct.pack("<HI", 42, ifd_at) + pixels + ifd


@pytest.mark.integration
@pytest.mark.parametrize("kwargs", [{}, {"tile": (32, 32)}, {"compression": "zlib"}, {"bigtiff": True},
                                    {"rowsperstrip": 7}, {"photometric": "rgb", "planarconfig": "separate"}])
def test_complete_files_prove_themselves_and_no_cut_short_of_the_pixels_does(tmp_path, kwargs):
    data = tiff_file(tmp_path, **kwargs)
    path = tmp_path / "cut.tif"
    path.write_bytes(data)
    assert tiff_is_complete(str(path))
    proven = []
    for cut in range(0, len(data), 7):  # every 7th length, the header and IFDs included
        path.write_bytes(data[:cut])
        if tiff_is_complete(str(path)):
            proven.append(cut)
            # only trailing bytes nothing refers to may be missing (tifffile leaves some after its last IFD)
            np.testing.assert_array_equal(tifffile.imread(path), IMAGE)
    with tifffile.TiffFile(tmp_path / "full.tif") as tif:
        pixels_end = max(o + n for page in tif.pages for o, n in zip(page.dataoffsets, page.databytecounts))
    assert all(cut >= pixels_end for cut in proven), f"{kwargs}: cuts {proven} proven, pixels end at {pixels_end}"


@pytest.mark.unit
def test_ifd_written_last_proves_only_once_it_lands(tmp_path):
    data = ifd_last_tiff(IMAGE[0])
    path = tmp_path / "a.tif"
    path.write_bytes(data)
    assert tiff_is_complete(str(path))
    np.testing.assert_array_equal(tifffile.imread(path), IMAGE[0])  # a TIFF every reader accepts
    for cut in range(0, len(data)):
        path.write_bytes(data[:cut])
        assert not tiff_is_complete(str(path))


@pytest.mark.unit
@pytest.mark.parametrize("data", [b"", b"not a tiff at all", b"II*\x00\x08\x00\x00\x00" + b"\x00" * 100,
                                  b"II*\x00\x08\x00\x00\x00\x01\x00" + b"\xff" * 20])
def test_garbage_and_loops_are_not_provable(tmp_path, data):
    path = tmp_path / "g.tif"
    path.write_bytes(data)
    assert not tiff_is_complete(str(path))


@pytest.mark.unit
def test_an_ifd_chain_that_loops_is_not_provable(tmp_path):
    data = bytearray(ifd_last_tiff(IMAGE[0]))
    ifd_at = struct.unpack("<I", data[4:8])[0]
    data[-4:] = struct.pack("<I", ifd_at)  # next IFD = itself
    path = tmp_path / "loop.tif"
    path.write_bytes(bytes(data))
    assert not tiff_is_complete(str(path))


# --- the gate with the proof: never early, and at once when it can be ---------------------------

def structure_gate(settle_polls: int = 50) -> CompletenessGate:
    return CompletenessGate(settle_polls, prove=tiff_is_complete)


@pytest.mark.unit
def test_file_moved_in_complete_is_released_at_first_look(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(tiff_file(tmp_path))
    gate = structure_gate()
    gate.offer(str(path))  # inotify reports a move from another folder as a creation
    (ready,) = gate.poll()
    assert ready.size == path.stat().st_size


@pytest.mark.unit
@pytest.mark.parametrize("writer", ["ifd_first", "ifd_last"])
def test_appending_writer_is_released_when_its_last_byte_lands_never_before(tmp_path, writer):
    data = tiff_file(tmp_path, rowsperstrip=8) if writer == "ifd_first" else ifd_last_tiff(IMAGE[0])
    path = tmp_path / "a.tif"
    gate = structure_gate()
    step = len(data) // 9 + 1
    with open(path, "wb") as f:
        gate.offer(str(path))
        for i in range(0, len(data), step):
            assert gate.poll() == [], f"released at {i} of {len(data)} bytes"
            f.write(data[i:i + step])
            f.flush()
            os.utime(path, ns=(0, 10**9 * (i + 1)))  # a distinct mtime per write, whatever the clock's grain
    (ready,) = gate.poll()  # at once after the last write: no settle polls
    assert ready.size == len(data) and path.read_bytes() == data


@pytest.mark.unit
def test_preallocated_file_filled_in_place_waits_for_the_settle_time(tmp_path):
    data = tiff_file(tmp_path)
    path = tmp_path / "a.tif"
    path.write_bytes(b"\x00" * len(data))  # pre-allocated: final size, still all zeros
    gate = structure_gate(settle_polls=3)
    gate.offer(str(path))
    assert gate.poll() == []  # zeros: no header, nothing proven
    step = len(data) // 5 + 1
    with open(path, "r+b") as f:
        for n, i in enumerate(range(0, len(data), step)):
            f.seek(i)
            f.write(data[i:i + step])  # header and IFD first: the structure is valid from here on
            f.flush()
            os.utime(path, ns=(0, 10**9 * (n + 1)))
            assert gate.poll() == [], f"released while filling, at {i} of {len(data)} bytes"
    assert gate.poll() == [] and gate.poll() == []  # stable 1, 2
    (ready,) = gate.poll()  # stable 3: the settle time, as for any file that cannot prove itself
    assert path.read_bytes() == data and ready.size == len(data)


@pytest.mark.unit
def test_preallocated_file_first_seen_full_with_its_header_written_is_not_proven(tmp_path):
    """The race the settle rule alone misses: the gate's first look at full size comes after the
    zeros and the header both landed (it saw the file empty before: "grown")."""
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, IMAGE[0], photometric="minisblack")  # one page: header, IFD, then the pixels
    data = path.read_bytes()
    path.write_bytes(b"")
    gate = structure_gate(settle_polls=50)
    gate.offer(str(path))
    assert gate.poll() == []  # empty: a writer that has only opened it
    head = 2 * len(data) // 3
    path.write_bytes(data[:head] + b"\x00" * (len(data) - head))  # zeros to full size; header, IFD, 2/3 of the pixels
    os.utime(path, ns=(0, 10**9))
    assert tiff_is_complete(str(path)) is False and gate.poll() == []
    path.write_bytes(data)  # the last pixels land (an appending writer's file would look like this)
    assert tiff_is_complete(str(path)) is True


@pytest.mark.unit
def test_a_finished_image_ending_in_zeros_is_left_to_the_settle_time(tmp_path):
    image = IMAGE.copy()
    image[-1, -1, -8:] = 0  # the last 8 pixels of the last page are black
    path = tmp_path / "dark.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    assert tiff_is_complete(str(path)) is False  # not early, only later: the settle time decides


@pytest.mark.unit
def test_a_file_offered_as_unprovable_waits_for_the_settle_time(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(tiff_file(tmp_path))  # complete, but it may be a stack still gaining pages
    gate = structure_gate(settle_polls=2)
    gate.offer(str(path), provable=False)
    assert gate.poll() == [] and gate.poll() == []
    assert len(gate.poll()) == 1


@pytest.mark.unit
def test_without_a_proof_the_gate_settles_as_before(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(tiff_file(tmp_path))
    gate = CompletenessGate(settle_polls=2)
    gate.offer(str(path))
    assert gate.poll() == [] and gate.poll() == []
    assert len(gate.poll()) == 1


def half_filled(tmp_path: Path) -> tuple[Path, bytes]:
    """A pre-allocated file whose writer stalled half-way: header, IFD and half the pixels; zeros after."""
    path = tmp_path / "stalled.tif"
    tifffile.imwrite(path, IMAGE[0], photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] + b"\x00" * (len(data) - len(data) // 2))
    return path, data


@pytest.mark.unit
def test_a_settled_file_whose_last_strip_is_zero_waits_up_to_the_ceiling(tmp_path, caplog):
    path, data = half_filled(tmp_path)
    assert tiff_being_filled(str(path)) and not tiff_being_filled(str(tmp_path / "full.tif"))
    now = [0.0]
    gate = CompletenessGate(2, prove=tiff_is_complete, zero_tail=tiff_being_filled, zero_tail_max_wait_s=60,
                            clock=lambda: now[0])
    gate.offer(str(path))
    for t in range(0, 70, 5):  # settled at the third look (10 s), but the last pixels have not landed
        now[0] = float(t)
        assert gate.poll() == [], f"released half-zero after {t} s"
    now[0] = 70.0  # 60 s after it settled
    with caplog.at_level("WARNING", logger="wellwatch.daemon.settle_gate"):
        (ready,) = gate.poll()  # the ceiling: a dark corner, released and said so
    assert ready.path == str(path) and "still all zero after 60 s" in caplog.text


@pytest.mark.unit
def test_a_stalled_file_is_released_once_its_last_pixels_land(tmp_path):
    path, data = half_filled(tmp_path)
    gate = CompletenessGate(2, prove=tiff_is_complete, zero_tail=tiff_being_filled, zero_tail_max_wait_s=60)
    gate.offer(str(path))
    assert [gate.poll() for _ in range(5)] == [[]] * 5
    with open(path, "r+b") as f:
        f.seek(len(data) // 2)
        f.write(data[len(data) // 2:])
    os.utime(path, ns=(0, 10**9))
    assert gate.poll() == [] and gate.poll() == []  # changed: the settle time again
    (ready,) = gate.poll()
    assert path.read_bytes() == data and ready.size == len(data)


@pytest.mark.unit
def test_an_image_all_zero_is_not_held_for_its_last_pixels(tmp_path):
    """Nothing filled yet, or a black frame: no writer under way to wait for; the settle time decides."""
    path = tmp_path / "black.tif"
    tifffile.imwrite(path, np.zeros((64, 80), np.uint16), photometric="minisblack")
    assert not tiff_being_filled(str(path))
    gate = CompletenessGate(2, prove=tiff_is_complete, zero_tail=tiff_being_filled, zero_tail_max_wait_s=60)
    gate.offer(str(path))
    assert gate.poll() == [] and gate.poll() == []
    assert len(gate.poll()) == 1
