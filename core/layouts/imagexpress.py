"""Molecular Devices ImageXpress / MetaXpress: the plate's `.HTD` file.

The HTD is a list of quoted keys and comma-separated values:
    "XWells", 12 / "YWells", 8 / "WellsSelection2", FALSE, TRUE, ... (row 2 = B; one flag per column)
    "Sites", TRUE / "XSites", 2 / "YSites", 1 / "SiteSelection1", TRUE, TRUE (site grid, row by row)
    "Waves", TRUE / "NWavelengths", 4 / "WaveName1", "DAPI" / "WaveCollect1", 1
    "TimePoints", 6 / "ZSeries", TRUE / "ZSteps", 3
Images live in PLATE/[TimePoint_N/][ZStep_M/]PLATE_B02_s1_w1[GUID].tif: sites are numbered 1.. over
the selected sites, wavelengths 1.. over the collected ones; without sites (or wavelengths) the
name has no _s (or _w) block. Exported plates number their ZStep folders from 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.plate import well_name


def parse_htd(text: str, path: str | Path = "<htd>") -> dict[str, list[str]]:
    """Key -> list of values (strings, quotes removed)."""
    entries: dict[str, list[str]] = {}
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row or not row[0].strip():
            continue
        key = row[0].strip()
        if key == "EndFile":
            break
        entries[key] = [v.strip() for v in row[1:]]
    if "HTSInfoFile" not in entries:
        raise LayoutError(path, "not an HTD file (no \"HTSInfoFile\" line)")
    return entries


def _flag(value: str) -> bool:
    return value.strip().upper() == "TRUE"


def _int(entries: dict[str, list[str]], key: str, path: str | Path, default: int | None = None) -> int:
    values = entries.get(key)
    if not values:
        if default is not None:
            return default
        raise LayoutError(path, f"key {key!r} is missing")
    try:
        return int(values[0])
    except ValueError:
        raise LayoutError(path, f"key {key!r} is not an integer: {values[0]!r}") from None


def read_htd(path: Path) -> PlateLayout:
    try:
        text = path.read_bytes().decode("latin-1")  # the description field holds raw bytes
    except OSError as e:
        raise LayoutError(path, f"cannot be read ({e.strerror})") from None
    e = parse_htd(text, path)
    cols, rows = _int(e, "XWells", path), _int(e, "YWells", path)
    wells = [well_name(r, c) for r in range(rows)
             for c, flag in enumerate(e.get(f"WellsSelection{r + 1}", [])) if _flag(flag)]
    if not wells:
        raise LayoutError(path, "no well is selected (no TRUE in any WellsSelection line)")
    if _flag(e.get("Sites", ["FALSE"])[0]):
        sites = [flag for r in range(_int(e, "YSites", path, 1)) for flag in e.get(f"SiteSelection{r + 1}", [])]
        fields = tuple(i + 1 for i in range(sum(_flag(f) for f in sites)))
        if not fields:
            raise LayoutError(path, "\"Sites\" is TRUE but no SiteSelection line selects a site")
    else:
        fields = (0,)  # one site per well: names carry no _s block
    names: dict[str, str] = {}
    if _flag(e.get("Waves", ["FALSE"])[0]):
        collected = [w for w in range(1, _int(e, "NWavelengths", path) + 1)
                     if e.get(f"WaveCollect{w}", ["1"])[0].strip().upper() not in ("0", "FALSE")]
        channels = tuple(str(w) for w in collected)
        names = {str(w): e.get(f"WaveName{w}", [""])[0] for w in collected}
    else:
        channels = ("",)  # one wavelength: names carry no _w block
        names = {"": e.get("WaveName1", [""])[0]}
    timepoints = tuple(range(1, _int(e, "TimePoints", path, 1) + 1))
    z_series = _flag(e.get("ZSeries", ["FALSE"])[0])
    z_planes = tuple(range(_int(e, "ZSteps", path, 1))) if z_series else (0,)
    return PlateLayout("imagexpress", str(path), rows, cols, {w: fields for w in wells}, channels, timepoints,
                       z_planes or (0,), names, None, plate=path.stem)  # images are named PLATE_B02_s1_w1
