"""Per-frame tile calls -> per-well, per-timepoint aggregates. Pure; no I/O.

A well's state at one timepoint is the sum over its fields. Each field is stored once, keyed by
(plate, well, timepoint, field): a field whose file is re-written replaces its earlier result
instead of adding to it, so nothing is counted twice.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np


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
    fields: dict[int, TileCounts] = field(default_factory=dict)

    def totals(self) -> TileCounts:
        f = list(self.fields.values())
        return TileCounts(live=sum(c.live for c in f), dead=sum(c.dead for c in f), empty=sum(c.empty for c in f),
                          cells=_sum_optional([c.cells for c in f]),
                          cell_live=_sum_optional([c.cell_live for c in f]),
                          cell_dead=_sum_optional([c.cell_dead for c in f]),
                          cell_types=_sum_types([c.cell_types for c in f]))


class PlateAggregate:
    """Running state of each well's latest `keep_timepoints` timepoints.

    Older timepoints leave memory (a three-day time-lapse would otherwise keep them all); a late
    frame of one of them brings it back from `history` (the journal's per-field counts).
    """

    def __init__(self, fields_expected: int = 0, keep_timepoints: int = 2):
        self.fields_expected = fields_expected
        self.keep_timepoints = keep_timepoints
        self.wells: dict[tuple[str, str, int], WellState] = {}
        self._timepoints: dict[tuple[str, str], list[int]] = {}  # (plate, well) -> timepoints held, ascending

    def add(self, plate: str, well: str, timepoint: int, field_index: int, counts: TileCounts,
            history: Callable[[], Iterable[tuple[int, TileCounts]]] | None = None) -> WellState:
        """Count one frame; `history` gives an evicted timepoint's earlier (field, counts), oldest first."""
        key = (plate, well, timepoint)
        state = self.wells.get(key)
        if state is None:
            state = self.wells[key] = WellState(plate, well, timepoint)
            held = self._timepoints.setdefault((plate, well), [])
            if history is not None and held and timepoint < held[-1]:
                for f, c in history():  # a timepoint that left memory: its other fields are in the journal
                    state.fields[f] = c
            bisect.insort(held, timepoint)
            while len(held) > self.keep_timepoints:
                del self.wells[(plate, well, held.pop(0))]
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
            **cell_fields(t),
        }
