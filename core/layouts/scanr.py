"""Olympus/Evident scanR: `experiment_descriptor.xml` beside the acquisition's data/ folder.

The file is LabVIEW-flattened XML: clusters and arrays of typed elements, each a <Name> then a
<Val>. It is read the way Bio-Formats' ScanrReader reads it: the last <Name> seen is the key of
each <Val>, and
    "well selection table + cDNA"  alternating values: a well's 1-based row-major index, then its label
    "rows/well", "columns/well"    the field grid per well (or a "subposition list" of Dimsize positions)
    "# slices"                     z planes;  "timeloop real" (or "timeloop count" + 1): timepoints
    "name" / "idle" in a channel   channel names; a channel with idle != 0 (or "Autofocus") is not acquired
    "format typedef" Rows/Columns  the plate format
    "conversion factor um/pixel"   the pixel size
File names number fields P00001.. from 1, timepoints T00000.. and z Z00000.. from 0.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from wellwatch.core.errors import NamingError
from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.plate import PLATE_FORMATS, PlateFormat, normalise_well, well_from_index


class _Descriptor:
    """The values ScanrReader's SAX handler collects, gathered the same way."""

    def __init__(self) -> None:
        self.key = ""
        self.valid_channel = False
        self.found_positions = False
        self.found_plate_layout = False
        self.positions: int | None = None
        self.plate_rows = self.plate_cols = 0
        self.field_rows = self.field_cols = 0
        self.slices = 0
        self.timepoints = 0
        self.channels: list[str] = []
        self.well_numbers: list[int] = []
        self.well_labels: dict[int, str] = {}
        self.pixel_size: float | None = None

    def end(self, tag: str, text: str) -> None:
        v = text.strip()
        if v:
            if tag == "Name":
                self.key = v
                if v == "subposition list":
                    self.found_positions = True
                elif v == "format typedef":
                    self.found_plate_layout = True
            elif tag == "Dimsize" and self.found_positions and self.positions is None:
                self.positions = int(v)
            elif self.key == "Rows" and self.found_plate_layout:
                self.plate_rows = int(v)
            elif self.key == "Columns" and self.found_plate_layout:
                self.plate_cols = int(v)
                self.found_plate_layout = False
            elif tag == "Val":
                self._value(v)
        if tag in ("Array", "Cluster"):
            self.valid_channel = False

    def _value(self, v: str) -> None:
        k = self.key
        if k == "columns/well":
            self.field_cols = int(v)
        elif k == "rows/well":
            self.field_rows = int(v)
        elif k == "# slices":
            self.slices = int(v)
        elif k == "timeloop real":
            self.timepoints = int(v)
        elif k == "timeloop count":
            self.timepoints = int(v) + 1
        elif k == "name" and self.valid_channel:
            if v not in self.channels:
                self.channels.append(v)
        elif k == "idle" and self.valid_channel and self.channels:
            if v != "0" or self.channels[-1] == "Autofocus":
                self.channels.pop()  # a channel that is not acquired
        elif k == "well selection table + cDNA":
            if v[0].isdigit():
                self.well_numbers.append(int(v))
            elif self.well_numbers:
                self.well_labels[self.well_numbers[-1]] = v
        elif k == "conversion factor um/pixel":
            self.pixel_size = float(v)


def read_experiment_descriptor(path: Path) -> PlateLayout:
    d = _Descriptor()
    try:
        for event, elem in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if elem.tag in ("Array", "Cluster"):
                    d.valid_channel = True
            else:
                d.end(elem.tag, elem.text or "")
    except OSError as e:
        raise LayoutError(path, f"cannot be read ({e.strerror})") from None
    except ET.ParseError as e:
        raise LayoutError(path, f"not well-formed XML ({e})") from None
    except ValueError as e:
        raise LayoutError(path, f"value of {d.key!r} is not a number ({e})") from None
    if not d.well_numbers:
        raise LayoutError(path, "no wells: the \"well selection table + cDNA\" array is missing or empty")
    fmt = _plate_format(d, path)
    wells = []
    for index in d.well_numbers:
        try:
            label = d.well_labels.get(index)
            wells.append(normalise_well(label, fmt) if label else well_from_index(index, fmt))
        except NamingError as e:
            raise LayoutError(path, f"well {index}: {e.reason}") from None
    n_fields = d.positions if d.found_positions and d.positions else max(d.field_rows * d.field_cols, 1)
    fields = tuple(range(1, n_fields + 1))
    return PlateLayout("scanr", str(path), fmt.rows, fmt.cols, {w: fields for w in wells},
                       tuple(d.channels), tuple(range(max(d.timepoints, 1))), tuple(range(max(d.slices, 1))),
                       {c: c for c in d.channels}, d.pixel_size)


def _plate_format(d: _Descriptor, path: Path) -> PlateFormat:
    if d.plate_rows and d.plate_cols:
        return PlateFormat(d.plate_rows, d.plate_cols)
    # no format in the file: the smallest standard plate that holds the highest well index
    for wells in sorted(PLATE_FORMATS):
        if max(d.well_numbers) <= wells:
            return PLATE_FORMATS[wells]
    raise LayoutError(path, f"well index {max(d.well_numbers)} is beyond a 1536-well plate")
