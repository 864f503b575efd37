"""Yokogawa CellVoyager CV8000/CV7000: `MeasurementData.mlf` (and `MeasurementDetail.mrf`).

The .mlf holds one record per image the measurement wrote:
    <bts:MeasurementRecord bts:Type="IMG" bts:Row="4" bts:Column="8" bts:TimePoint="1"
        bts:FieldIndex="1" bts:ZIndex="1" bts:Ch="1">..._D08_T0001F001L01A01Z01C01.tif</...>
so the expected wells, fields, z planes, channels and timepoints are exactly those it lists. The
.mrf beside it gives the plate's rows and columns and each channel's pixel size in micrometres.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.plate import well_name

BTS = "{http://www.yokogawa.co.jp/BTS/BTSSchema/1.0}"


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except OSError as e:
        raise LayoutError(path, f"cannot be read ({e.strerror})") from None
    except ET.ParseError as e:
        raise LayoutError(path, f"not well-formed XML ({e})") from None


def _int(record: ET.Element, key: str, path: Path) -> int:
    value = record.get(BTS + key)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LayoutError(path, f"a MeasurementRecord has {key}={value!r}; expected an integer") from None


def read_mlf(path: Path) -> PlateLayout:
    root = _parse(path)
    fields: dict[str, set[int]] = {}
    channels, timepoints, z_planes = set(), set(), set()
    for record in root.iter(BTS + "MeasurementRecord"):
        if record.get(BTS + "Type") != "IMG":
            continue  # error records and the like are not images
        row, col = _int(record, "Row", path), _int(record, "Column", path)
        well = well_name(row - 1, col - 1)
        fields.setdefault(well, set()).add(_int(record, "FieldIndex", path))
        channels.add(str(_int(record, "Ch", path)))
        timepoints.add(_int(record, "TimePoint", path))
        z_planes.add(_int(record, "ZIndex", path))
    if not fields:
        raise LayoutError(path, "lists no image records (bts:MeasurementRecord with bts:Type=\"IMG\")")
    rows, cols, pixel = _plate_and_pixel(path.with_name("MeasurementDetail.mrf"))
    return PlateLayout("cv8000", str(path), rows, cols, {w: tuple(sorted(f)) for w, f in sorted(fields.items())},
                       tuple(sorted(channels, key=int)), tuple(sorted(timepoints)), tuple(sorted(z_planes)),
                       {}, pixel)


def _plate_and_pixel(mrf: Path) -> tuple[int, int, float | None]:
    """Rows, columns and pixel size from the .mrf; a 96-well plate and no pixel size without it."""
    if not mrf.is_file():
        return 8, 12, None
    root = _parse(mrf)
    try:
        rows, cols = int(root.get(BTS + "RowCount", 8)), int(root.get(BTS + "ColumnCount", 12))
    except ValueError:
        raise LayoutError(mrf, "RowCount/ColumnCount are not integers") from None
    sizes = {float(c.get(BTS + "HorizontalPixelDimension"))
             for c in root.iter(BTS + "MeasurementChannel") if c.get(BTS + "HorizontalPixelDimension")}
    return rows, cols, (sizes.pop() if len(sizes) == 1 else None)  # channels that differ: no one size
