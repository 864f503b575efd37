"""File name -> FrameMeta, by a vendor naming preset or a user regex with named groups.

Recognised group names: plate, well, well_index (1-based, row-major: scanR's W block),
row and col (1-based: Operetta), field, timepoint, z, channel. Missing groups take defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from wellwatch.core.errors import ConfigError, NamingError
from wellwatch.core.plate import PlateFormat, normalise_well, well_from_index, well_name

KNOWN_GROUPS = {"plate", "well", "well_index", "row", "col", "field", "timepoint", "z", "channel"}


@dataclass(frozen=True, order=True)
class FrameMeta:
    plate: str
    well: str
    field: int
    timepoint: int
    z: int
    channel: str

    @property
    def field_key(self) -> tuple[str, str, int, int]:
        """What identifies one field image of one well at one timepoint (channel aside)."""
        return (self.plate, self.well, self.timepoint, self.field)


_TIF = r"\.tiff?$"

PRESET_PATTERNS: dict[str, str] = {
    # A1--W00001--P00001--Z00000--T00000--BF.tif ; older scanR omits the leading well name.
    "scanr": r"^(?:(?P<well>[A-Za-z]{1,2}\d{1,2}))?--W(?P<well_index>\d+)--P(?P<field>\d+)"
             r"--Z(?P<z>\d+)--T(?P<timepoint>\d+)--(?P<channel>[^/\\]+?)" + _TIF,
    # 101210OranePlt1_C16_w1_[9AA4...].tif, A01_s1_w1.tif
    "metaxpress": r"^(?:(?P<plate>.*?)_)?(?P<well>[A-Za-z]{1,2}\d{2})(?:_s(?P<field>\d+))?"
                  r"_w(?P<channel>\d+)(?:_\[[0-9A-Fa-f-]+\])?" + _TIF,
    # r01c01f01p01-ch1sk1fk1fl1.tiff
    "operetta": r"^r(?P<row>\d+)c(?P<col>\d+)f(?P<field>\d+)p(?P<z>\d+)-ch(?P<channel>\d+)"
                r"sk(?P<timepoint>\d+)fk\d+fl\d+" + _TIF,
    # A1-1-Ph.tif
    "incucyte": r"^(?:(?P<plate>.+)_)?(?P<well>[A-Za-z]{1,2}\d{1,2})-(?P<field>\d+)-(?P<channel>[A-Za-z0-9]+)" + _TIF,
    # Thermo Cellomics ArrayScan: AS_09125_050116030001_D03f00d0.tif
    "cellomics": r"^(?P<plate>.+)_(?P<well>[A-Za-z]{1,2}\d{2})f(?P<field>\d+)d(?P<channel>\d+)" + _TIF,
    # Yokogawa CV8000/CV7000: MEAS_D08_T0001F001L01A01Z01C01.tif (timeline L and action A are not used)
    "cv8000": r"^(?P<plate>.+)_(?P<well>[A-Za-z]{1,2}\d{2})_T0*(?P<timepoint>\d+)F0*(?P<field>\d+)L\d+A\d+"
              r"Z0*(?P<z>\d+)C0*(?P<channel>\d+)" + _TIF,
}

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# ImageXpress plate folders, matched on the path below the watched folder:
# [TimePoint_N/][ZStep_M/]PLATE_B02[_s1][_w1][GUID].tif. A name without _s is the well's one site
# (field 0), without _w its one wavelength (channel ""), outside TimePoint_N timepoint 1;
# thumbnails (PLATE_B02_s1_thumbGUID.tif) do not match.
PATH_PRESET_PATTERNS: dict[str, str] = {
    "imagexpress": r"(?:^|/)(?:TimePoint_(?P<timepoint>\d+)/)?(?:ZStep_(?P<z>\d+)/)?"
                   r"(?P<plate>[^/]+?)_(?P<well>[A-Za-z]{1,2}\d{2})(?:_s(?P<field>\d+))?(?:_w(?P<channel>\d+))?"
                   r"(?:_?\[?" + _GUID + r"\]?)?" + _TIF,
}
PRESET_DEFAULTS: dict[str, dict[str, str]] = {"imagexpress": {"timepoint": "1"}}

# NIS-Elements TIFF sequence: prefix, optional well name, then the ticked dimensions in the
# user's order (t, xy, z, c), e.g. seq0000xy01c1.tif, 20180101ef002xy01t01.tif, P1_B03_t001xy02c1.tif.
# NIS numbers xy, t and c from 1.
_NIS_DIM = re.compile(r"(t|xy|z|c)(\d+)$")
_NIS_WELL = re.compile(r"(?:^|[_-])(?P<well>[A-Za-z]{1,2}\d{2})[_-]?$")
_NIS_DIM_GROUP = {"t": "timepoint", "xy": "field", "z": "z", "c": "channel"}


def _parse_nis(name: str) -> dict[str, str] | None:
    m = re.search(_TIF, name, re.IGNORECASE)
    if not m:
        return None
    stem = name[: m.start()]
    groups: dict[str, str] = {}
    while True:
        d = _NIS_DIM.search(stem)
        if not d or _NIS_DIM_GROUP[d.group(1)] in groups:
            break
        groups[_NIS_DIM_GROUP[d.group(1)]] = d.group(2)
        stem = stem[: d.start()]
    if not groups:
        return None
    w = _NIS_WELL.search(stem)
    if w:
        groups["well"] = w.group("well")
    # The prefix is free text (often an experiment name): the plate comes from the config.
    return groups


class NamingScheme:
    """Parses file names into FrameMeta for one plate format."""

    def __init__(self, preset: str, plate_format: PlateFormat, default_plate: str,
                 pattern: str = "", default_well: str = "A1"):
        self.preset = preset
        self.plate_format = plate_format
        self.default_plate = default_plate
        self.default_well = normalise_well(default_well, plate_format)
        self._match: Callable[[str], dict[str, str] | None]
        if preset == "regex":
            regex = compile_user_pattern(pattern)
            self._match = lambda name: (m.groupdict() if (m := regex.match(_basename(name))) else None)
        elif preset == "nis":
            self._match = lambda name: _parse_nis(_basename(name))
        elif preset in PRESET_PATTERNS:
            regex = re.compile(PRESET_PATTERNS[preset], re.IGNORECASE)
            self._match = lambda name: (m.groupdict() if (m := regex.match(_basename(name))) else None)
        elif preset in PATH_PRESET_PATTERNS:  # folders carry part of the layout: match the relative path
            regex = re.compile(PATH_PRESET_PATTERNS[preset], re.IGNORECASE)
            self._match = lambda name: (m.groupdict() if (m := regex.search(name.replace("\\", "/"))) else None)
        else:
            raise ConfigError("watch.naming", preset, f"allowed: {', '.join(PRESETS)}")

    def parse(self, name: str) -> FrameMeta:
        """Parse a file name, or its path below the watched folder (folder-aware presets).

        Raise NamingError when it does not match or names no valid well.
        """
        groups = self._match(name)
        if groups is None:
            raise NamingError(name, f"does not match the {self.preset!r} naming")
        g = {**PRESET_DEFAULTS.get(self.preset, {}), **{k: v for k, v in groups.items() if v is not None}}
        return FrameMeta(
            plate=g.get("plate") or self.default_plate,
            well=self._well(name, g),
            field=_int(name, g, "field"),
            timepoint=_int(name, g, "timepoint"),
            z=_int(name, g, "z"),
            channel=g.get("channel", ""),
        )

    def _well(self, name: str, g: dict[str, str]) -> str:
        if "well" in g:
            well = normalise_well(g["well"], self.plate_format)
            if "well_index" in g and well_from_index(int(g["well_index"]), self.plate_format) != well:
                raise NamingError(name, f"well {g['well']} disagrees with index W{g['well_index']}")
            return well
        if "well_index" in g:
            return well_from_index(int(g["well_index"]), self.plate_format)
        if "row" in g and "col" in g:
            row, col = int(g["row"]) - 1, int(g["col"]) - 1
            if not (0 <= row < self.plate_format.rows and 0 <= col < self.plate_format.cols):
                raise NamingError(name, f"row {row + 1} col {col + 1} outside the plate")
            return well_name(row, col)
        return self.default_well


PRESETS = (*PRESET_PATTERNS, *PATH_PRESET_PATTERNS, "nis", "regex")


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _int(name: str, g: dict[str, str], key: str) -> int:
    try:
        return int(g.get(key, 0))
    except ValueError:
        raise NamingError(name, f"group {key!r} is not an integer: {g[key]!r}") from None


def compile_user_pattern(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError("watch.pattern", pattern, f"not a valid regular expression ({e})") from None
    unknown = set(regex.groupindex) - KNOWN_GROUPS
    if unknown:
        raise ConfigError("watch.pattern", pattern,
                          f"unknown named groups {sorted(unknown)}; allowed: {sorted(KNOWN_GROUPS)}")
    return regex


def format_scanr(well: str, well_index: int, field: int, timepoint: int, channel: str, z: int = 0) -> str:
    """The scanR file name the simulator writes (the inverse of the 'scanr' preset)."""
    return f"{well}--W{well_index:05d}--P{field:05d}--Z{z:05d}--T{timepoint:05d}--{channel}.tif"


def format_nis(plate: str, well: str, field: int, timepoint: int, channel_index: int) -> str:
    """An NIS-Elements well-plate sequence name: plate_well_tNNNxyNNcN.tif."""
    return f"{plate}_{well}_t{timepoint:03d}xy{field:02d}c{channel_index}.tif"
