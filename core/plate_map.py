"""The plate map: what is in each well (compound, concentration, role), read from a CSV file.

Columns (a header row, any order, more columns ignored): well, compound, concentration, unit,
role. role is `control` (vehicle: the 100 % viability and growth reference), `treated` or
`blank` (no cells; left out of every fit). Wells not in the map are left out of dose-response.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from wellwatch.core.errors import NamingError, WellwatchError
from wellwatch.core.plate import PLATE_FORMATS, normalise_well

COLUMNS = ("well", "compound", "concentration", "unit", "role")
ROLES = ("control", "treated", "blank")


class PlateMapError(WellwatchError, ValueError):
    """A plate map file cannot be used; the message names the file, the line and the column."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"plate map {path}: {reason}")


@dataclass(frozen=True)
class WellContent:
    well: str
    compound: str
    concentration: float | None  # None for a control or blank without one
    unit: str
    role: str


@dataclass(frozen=True)
class PlateMap:
    path: str
    wells: dict[str, WellContent]

    def compounds(self) -> list[str]:
        return sorted({w.compound for w in self.wells.values() if w.role == "treated"})

    def treated(self, compound: str) -> list[WellContent]:
        return [w for w in self.wells.values() if w.role == "treated" and w.compound == compound]

    def controls(self) -> list[WellContent]:
        return [w for w in self.wells.values() if w.role == "control"]

    def unit(self, compound: str) -> str:
        units = {w.unit for w in self.treated(compound)}
        return units.pop() if len(units) == 1 else ""


def read_plate_map(path: str | Path, plate_format: int = 96) -> PlateMap:
    path = str(path)
    fmt = PLATE_FORMATS[plate_format]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except FileNotFoundError:
        raise PlateMapError(path, "the file does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PlateMapError(path, f"cannot be read as a CSV file ({e})") from None
    if not rows:
        raise PlateMapError(path, f"no rows; expected a header {','.join(COLUMNS)} and one row per well")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PlateMapError(path, f"column {missing[0]!r} missing; columns needed: {', '.join(COLUMNS)}")
    wells: dict[str, WellContent] = {}
    for line, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"line {line}"
        try:
            well = normalise_well(row["well"], fmt)
        except NamingError as e:
            raise PlateMapError(path, f"{where}, column 'well': {e}") from None
        if well in wells:
            raise PlateMapError(path, f"{where}: well {well} appears twice")
        role = row["role"].lower()
        if role not in ROLES:
            raise PlateMapError(path, f"{where}, column 'role': got {row['role']!r}; allowed: {', '.join(ROLES)}")
        concentration = _concentration(path, where, row["concentration"], role)
        if role == "treated" and not row["compound"]:
            raise PlateMapError(path, f"{where}, column 'compound': empty for a treated well")
        wells[well] = WellContent(well, row["compound"], concentration, row["unit"], role)
    return PlateMap(path, wells)


def _concentration(path: str, where: str, text: str, role: str) -> float | None:
    if not text:
        if role == "treated":
            raise PlateMapError(path, f"{where}, column 'concentration': empty for a treated well")
        return None
    try:
        value = float(text)
    except ValueError:
        raise PlateMapError(path, f"{where}, column 'concentration': got {text!r}; expected a number") from None
    if not math.isfinite(value) or value < 0 or (role == "treated" and value == 0):
        raise PlateMapError(path, f"{where}, column 'concentration': got {text!r}; "
                                  "expected a number > 0 for a treated well (>= 0 otherwise)")
    return value
