"""Per-frame tile calls -> per-well, per-timepoint aggregates. Pure; no I/O.

A well's state at one timepoint is the sum over its fields. Each field image is stored once, keyed
by (plate, well, timepoint, field, z): a field whose file is re-written replaces its earlier result
instead of adding to it, so nothing is counted twice. (A z-stack's planes are separate images: each
is scored and counted.)

How many images a well expects comes from the vendor's plate layout when there is one
(daemon/layout.py: fields x z planes of that well), else from `plate.fields_per_well`. With a
layout the plate itself can complete: every expected well complete at a timepoint, then at every
timepoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .layout import PlateLayout


@dataclass(frozen=True)
class TileCounts:
    """One field's counts: tiles by call; with segmentation, cells and their calls."""
    live: int
    dead: int
    empty: int
    cells: int | None = None  # from segmentation; None when the daemon does not segment
    cell_live: int | None = None  # cells called live/dead from the tiles at their centroids
    cell_dead: int | None = None
    cell_types: dict[str, int] | None = None  # with a cell-type model: class name -> cells


def _sum_optional(values: list) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _sum_types(values: list[dict[str, int] | None]) -> dict[str, int] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    total: dict[str, int] = {}
    for v in present:
        for name, n in v.items():
            total[name] = total.get(name, 0) + n
    return total


def cell_fields(c: TileCounts) -> dict:
    """The per-cell part of a frame or well message (all None when the daemon does not segment)."""
    has_calls = c.cell_live is not None
    return {
        "cells": c.cells,
        "cell_counts": {"live": c.cell_live, "dead": c.cell_dead} if has_calls else None,
        "cell_live_fraction": live_fraction(c.cell_live, c.cell_dead) if has_calls else None,
        "cell_types": c.cell_types,
    }


def count_tiles(dead_probability: np.ndarray, n_empty: int, threshold: float) -> TileCounts:
    """Tiles with P(dead) >= threshold are dead; the rest of the non-empty tiles are live."""
    dead = int(np.count_nonzero(dead_probability >= threshold))
    return TileCounts(live=len(dead_probability) - dead, dead=dead, empty=n_empty)


def live_fraction(live: int, dead: int) -> float | None:
    return live / (live + dead) if live + dead else None


@dataclass
class WellState:
    plate: str
    well: str
    timepoint: int
    fields: dict[tuple[int, int], TileCounts] = field(default_factory=dict)  # (field, z) -> counts

    def totals(self) -> TileCounts:
        f = list(self.fields.values())
        return TileCounts(live=sum(c.live for c in f), dead=sum(c.dead for c in f), empty=sum(c.empty for c in f),
                          cells=_sum_optional([c.cells for c in f]),
                          cell_live=_sum_optional([c.cell_live for c in f]),
                          cell_dead=_sum_optional([c.cell_dead for c in f]),
                          cell_types=_sum_types([c.cell_types for c in f]))


class PlateAggregate:
    """Running state of every (plate, well, timepoint) seen."""

    def __init__(self, fields_expected: int = 0, layout: PlateLayout | None = None):
        self.fields_expected = fields_expected
        self.layout = layout
        self.wells: dict[tuple[str, str, int], WellState] = {}

    def add(self, plate: str, well: str, timepoint: int, field_index: int, counts: TileCounts,
            z: int = 0) -> WellState:
        key = (plate, well, timepoint)
        state = self.wells.get(key)
        if state is None:
            state = self.wells[key] = WellState(plate, well, timepoint)
        state.fields[(field_index, z)] = counts
        return state

    def expected(self, well: str) -> int | None:
        """Images expected for a well at one timepoint; None when unknown."""
        if self.layout is not None:
            return self.layout.fields_expected(well) or None
        return self.fields_expected or None

    def is_complete(self, state: WellState) -> bool:
        expected = self.expected(state.well)
        return bool(expected and len(state.fields) >= expected)

    def plate_progress(self, plate: str, timepoint: int) -> dict | None:
        """With a layout: how many of the plate's wells are complete at `timepoint`, and whether the
        whole acquisition (every well at every timepoint) is. None without a layout."""
        if self.layout is None:
            return None
        wells = self.layout.wells
        done = [w for w in wells if (s := self.wells.get((plate, w, timepoint))) and self.is_complete(s)]
        all_done = all((s := self.wells.get((plate, w, t))) is not None and self.is_complete(s)
                       for w in wells for t in self.layout.timepoints)
        return {"plate": plate, "timepoint": timepoint, "wells_expected": len(wells), "wells_complete": len(done),
                "timepoint_complete": len(done) == len(wells), "plate_complete": all_done,
                "timepoints_expected": len(self.layout.timepoints)}

    def summary(self, state: WellState) -> dict:
        """The well message body (without the envelope fields)."""
        t = state.totals()
        expected = self.expected(state.well)
        return {
            "frames": len(state.fields),
            "fields_expected": expected,
            "complete": self.is_complete(state),
            "counts": {"live": t.live, "dead": t.dead, "empty": t.empty},
            "live_fraction": live_fraction(t.live, t.dead),
            "unit": "tile",
            **cell_fields(t),
        }
