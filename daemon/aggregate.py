"""Per-frame tile calls -> per-well, per-timepoint aggregates. Pure; no I/O.

A well's state at one timepoint is the sum over its fields. Each field is stored once, keyed by
(plate, well, timepoint, field): a field whose file is re-written replaces its earlier result
instead of adding to it, so nothing is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TileCounts:
    live: int
    dead: int
    empty: int
    cells: int | None = None  # from segmentation; None when the daemon does not segment


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
    fields: dict[int, TileCounts] = field(default_factory=dict)

    def totals(self) -> TileCounts:
        cells = [c.cells for c in self.fields.values() if c.cells is not None]
        return TileCounts(live=sum(c.live for c in self.fields.values()),
                          dead=sum(c.dead for c in self.fields.values()),
                          empty=sum(c.empty for c in self.fields.values()),
                          cells=sum(cells) if cells else None)


class PlateAggregate:
    """Running state of every (plate, well, timepoint) seen."""

    def __init__(self, fields_expected: int = 0):
        self.fields_expected = fields_expected
        self.wells: dict[tuple[str, str, int], WellState] = {}

    def add(self, plate: str, well: str, timepoint: int, field_index: int, counts: TileCounts) -> WellState:
        key = (plate, well, timepoint)
        state = self.wells.get(key)
        if state is None:
            state = self.wells[key] = WellState(plate, well, timepoint)
        state.fields[field_index] = counts
        return state

    def summary(self, state: WellState) -> dict:
        """The well message body (without the envelope fields)."""
        t = state.totals()
        expected = self.fields_expected or None
        return {
            "frames": len(state.fields),
            "fields_expected": expected,
            "complete": bool(expected and len(state.fields) >= expected),
            "counts": {"live": t.live, "dead": t.dead, "empty": t.empty},
            "live_fraction": live_fraction(t.live, t.dead),
            "unit": "tile",
            "cells": t.cells,
        }
