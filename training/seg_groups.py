"""Which annotated frames come from the same acquisition, so that scores can leave whole groups out.

Frames of one well or dish share cells, density, confluence and illumination; a random split puts
near-copies on both sides and flatters the model. The Usiigaci sets are NIS-Elements TIFFs whose
private tag 65331 holds the picture metadata (SLxPictureMetadata): stage position (dXPos, dYPos,
um), acquisition time (dTimeAbsolute, Julian day) and pixel size (dCalibration, um/px). All 30
sets were taken in one multipoint pass of about two minutes (2018-01-01, 10x Plan Fluor Ph1,
Hamamatsu C11440-22CU with 2x2 binning, 0.8708 um/px); their stage positions fall into three
clusters millimetres apart (single linkage, `gap_um`): three wells of the plate, whose cells
differ (A: sets 1-12, 17, 18, 21-29, ~3,700 px per cell; B: 13-16, 30 and C: 19, 20, ~1,300 px).
Those wells are the groups.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NIS_PICTURE_METADATA_TAG = 65331
NIS_DOUBLE = 6
DEFAULT_GAP_UM = 3000.0  # fields of one well lie ~1 mm apart; wells of a plate >= 9 mm


@dataclass(frozen=True)
class FrameMetadata:
    name: str
    x_um: float
    y_um: float
    time_jd: float
    pixel_size_um: float


def nis_doubles(blob: bytes, names: tuple[str, ...]) -> dict[str, float]:
    """Values of the named double entries of an NIS-Elements SLxPictureMetadata blob.

    Each entry is: type (1 byte), name length in UTF-16 characters with its terminating NUL
    (1 byte), the name (UTF-16LE), then the value (type 6 = little-endian float64).
    """
    out = {}
    for name in names:
        key = name.encode("utf-16-le") + b"\x00\x00"
        at = blob.find(bytes([NIS_DOUBLE, len(name) + 1]) + key)
        if at >= 0:
            start = at + 2 + len(key)
            out[name] = struct.unpack("<d", blob[start:start + 8])[0]
    return out


def read_nis_metadata(path: str | Path, name: str = "") -> FrameMetadata:
    """Stage position, time and pixel size of an NIS-Elements TIFF; ValueError when it has none."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(NIS_PICTURE_METADATA_TAG)
        if tag is None:
            raise ValueError(f"{path}: no NIS-Elements picture metadata (TIFF tag {NIS_PICTURE_METADATA_TAG})")
        values = nis_doubles(bytes(tag.value), ("dXPos", "dYPos", "dTimeAbsolute", "dCalibration"))
    missing = {"dXPos", "dYPos", "dTimeAbsolute", "dCalibration"} - set(values)
    if missing:
        raise ValueError(f"{path}: NIS-Elements metadata lacks {sorted(missing)}")
    return FrameMetadata(name or Path(path).parent.name, values["dXPos"], values["dYPos"],
                         values["dTimeAbsolute"], values["dCalibration"])


def stage_groups(frames: list[FrameMetadata], gap_um: float = DEFAULT_GAP_UM) -> dict[str, str]:
    """Frame name -> group letter: single-linkage clusters of stage positions closer than `gap_um`.

    Groups are lettered A, B, ... by decreasing size (ties: first frame's order).
    """
    n = len(frames)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    xy = np.array([(f.x_um, f.y_um) for f in frames], np.float64).reshape(n, 2)
    for i in range(n):
        close = np.flatnonzero(np.hypot(*(xy[i + 1:] - xy[i]).T) < gap_um) + i + 1
        for j in close:
            parent[root(int(j))] = root(i)
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(root(i), []).append(i)
    ordered = sorted(clusters.values(), key=lambda members: (-len(members), members[0]))
    if len(ordered) > 26:
        raise ValueError(f"{len(ordered)} stage clusters at gap {gap_um} um; give a larger gap")
    return {frames[i].name: chr(ord("A") + k) for k, members in enumerate(ordered) for i in members}


def usiigaci_groups(root: str | Path, gap_um: float = DEFAULT_GAP_UM) -> tuple[dict[str, str], list[FrameMetadata]]:
    """Group of every setN/raw.tif under `root` (the usiigaci-phase folder), and their metadata."""
    root = Path(root)
    sets = sorted((p for p in root.iterdir() if p.is_dir() and (p / "raw.tif").is_file()),
                  key=lambda p: int("".join(c for c in p.name if c.isdigit()) or 0))
    if not sets:
        raise FileNotFoundError(f"{root}: no setN/raw.tif")
    frames = [read_nis_metadata(p / "raw.tif", p.name) for p in sets]
    return stage_groups(frames, gap_um), frames


def members(groups: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, group in groups.items():
        out.setdefault(group, []).append(name)
    return dict(sorted(out.items()))
