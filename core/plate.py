"""Plate formats: well names and the row-major well index scanR uses."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from wellwatch.core.errors import NamingError

_WELL_RE = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,2})$")


@dataclass(frozen=True)
class PlateFormat:
    rows: int
    cols: int

    @property
    def wells(self) -> int:
        return self.rows * self.cols


PLATE_FORMATS = {6: PlateFormat(2, 3), 12: PlateFormat(3, 4), 24: PlateFormat(4, 6),
                 48: PlateFormat(6, 8), 96: PlateFormat(8, 12), 384: PlateFormat(16, 24),
                 1536: PlateFormat(32, 48)}


def row_letters(row: int) -> str:
    """0 -> 'A', 25 -> 'Z', 26 -> 'AA' (1536-well plates have 32 rows)."""
    letters = string.ascii_uppercase
    return letters[row] if row < 26 else letters[row // 26 - 1] + letters[row % 26]


def _row_index(letters: str) -> int:
    letters = letters.upper()
    if len(letters) == 1:
        return ord(letters) - ord("A")
    return (ord(letters[0]) - ord("A") + 1) * 26 + ord(letters[1]) - ord("A")


def well_name(row: int, col: int) -> str:
    """Canonical well name, no zero padding: (0, 0) -> 'A1'."""
    return f"{row_letters(row)}{col + 1}"


def well_from_index(index: int, plate: PlateFormat) -> str:
    """scanR's W block: 1-based, row-major over the plate."""
    if not 1 <= index <= plate.wells:
        raise NamingError(f"W{index:05d}", f"well index {index} outside a {plate.wells}-well plate")
    row, col = divmod(index - 1, plate.cols)
    return well_name(row, col)


def well_index(name: str, plate: PlateFormat) -> int:
    """Inverse of well_from_index."""
    row, col = parse_well(name, plate)
    return row * plate.cols + col + 1


def parse_well(name: str, plate: PlateFormat) -> tuple[int, int]:
    """'A01', 'a1', 'P24' -> (row, col), checked against the plate."""
    m = _WELL_RE.match(name)
    if not m:
        raise NamingError(name, "not a well name like 'A1' or 'B07'")
    row, col = _row_index(m.group(1)), int(m.group(2)) - 1
    if not (0 <= row < plate.rows and 0 <= col < plate.cols):
        raise NamingError(name, f"well outside a {plate.wells}-well plate")
    return row, col


def normalise_well(name: str, plate: PlateFormat) -> str:
    return well_name(*parse_well(name, plate))


def all_wells(plate: PlateFormat) -> list[str]:
    return [well_name(r, c) for r in range(plate.rows) for c in range(plate.cols)]
