"""Per-frame tile calls -> per-well, per-timepoint aggregates. Pure; no I/O.

A well's state at one timepoint is the sum over its fields. Each field image is stored once, keyed
by (plate, well, timepoint, field, z): a field whose file is re-written replaces its earlier result
instead of adding to it, so nothing is counted twice. (A z-stack's planes are separate images: each
is scored and counted.) Only each well's latest `keep_timepoints` timepoints stay in memory; a late
frame of an older one brings its fields back from the journal (`history`).

How many images a well expects comes from the vendor's plate layout when there is one
(core/layouts/__init__.py: fields x z planes of that well), else from `plate.fields_per_well`. With a
layout the plate itself can complete: every expected well complete at a timepoint, then at every
timepoint.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    from wellwatch.core.layouts import PlateLayout


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
    # sums of P(dead) over the scored tiles / called cells, for the mean_probability estimator
    # (core/intervals.py), journaled with the counts; None when unknown (rows of older journals).
    # Not part of equality: two fields with the same calls are the same counts.
    dead_p_sum: float | None = field(default=None, compare=False)
    cell_dead_p_sum: float | None = field(default=None, compare=False)


def _sum_optional(values: list) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _sum_all(values: list) -> float | None:
    """The sum when every value is known, else None (a partial sum would bias an estimate)."""
    return None if not values or any(v is None for v in values) else float(sum(values))


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
    return TileCounts(live=len(dead_probability) - dead, dead=dead, empty=n_empty,
                      dead_p_sum=float(np.sum(dead_probability, dtype=np.float64)))


def image_key(field: int | None, z: int | None) -> tuple[int, int]:
    """What a well counts at one timepoint: images, one per (field, z plane). A 10-plane z-stack of
    one field is 10 images, and a well expects fields x z planes (the layout's `fields_expected`).
    A joined channel is no image of its own: it belongs to its field's image. The daemon, the
    results tables and the dashboard's history all count with this and `well_complete`."""
    return (field or 0, z or 0)


def well_complete(images: int, expected: int | None) -> bool:
    """A well is complete at a timepoint once it holds as many images as expected (unknown: never)."""
    return bool(expected and images >= expected)


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
                          cell_types=_sum_types([c.cell_types for c in f]),
                          dead_p_sum=_sum_all([c.dead_p_sum for c in f]),
                          cell_dead_p_sum=_sum_all([c.cell_dead_p_sum for c in f]))


class PlateAggregate:
    """Running state of each well's latest `keep_timepoints` timepoints (older ones leave memory;
    how many wells completed at each timepoint is kept for the plate's progress)."""

    def __init__(self, fields_expected: int = 0, layout: PlateLayout | None = None, keep_timepoints: int = 2):
        self.fields_expected = fields_expected
        self.layout = layout
        self.keep_timepoints = keep_timepoints
        self.wells: dict[tuple[str, str, int], WellState] = {}
        self._timepoints: dict[tuple[str, str], list[int]] = {}  # (plate, well) -> timepoints held, ascending
        self._complete: dict[tuple[str, int], int] = {}  # (plate, timepoint) -> wells complete (evicted too)

    def add(self, plate: str, well: str, timepoint: int, field_index: int, counts: TileCounts,
            z: int = 0, history: Callable[[], Iterable[tuple[int, int, TileCounts]]] | None = None) -> WellState:
        """Count one image; `history` gives an evicted timepoint's earlier (field, z, counts), oldest first."""
        key = (plate, well, timepoint)
        state = self.wells.get(key)
        if state is None:
            state = self.wells[key] = WellState(plate, well, timepoint)
            held = self._timepoints.setdefault((plate, well), [])
            if history is not None and held and timepoint < held[-1]:
                for f, fz, c in history():  # a timepoint that left memory: its other images are in the journal
                    state.fields[image_key(f, fz)] = c
            bisect.insort(held, timepoint)
            while len(held) > self.keep_timepoints:
                del self.wells[(plate, well, held.pop(0))]
        was_complete = self.is_complete(state)
        state.fields[image_key(field_index, z)] = counts
        if not was_complete and self.is_complete(state):  # images only grow: a well completes once
            self._complete[(plate, timepoint)] = self._complete.get((plate, timepoint), 0) + 1
        return state

    def expected(self, well: str) -> int | None:
        """Images expected for a well at one timepoint; None when unknown."""
        if self.layout is not None:
            return self.layout.fields_expected(well) or None
        return self.fields_expected or None

    def is_complete(self, state: WellState) -> bool:
        return well_complete(len(state.fields), self.expected(state.well))

    def plate_progress(self, plate: str, timepoint: int) -> dict | None:
        """With a layout: how many of the plate's wells are complete at `timepoint`, and whether the
        whole acquisition (every well at every timepoint) is. None without a layout."""
        if self.layout is None:
            return None
        wells = self.layout.wells
        done = self._complete.get((plate, timepoint), 0)
        all_done = all(self._complete.get((plate, t), 0) >= len(wells) for t in self.layout.timepoints)
        return {"plate": plate, "timepoint": timepoint, "wells_expected": len(wells), "wells_complete": done,
                "timepoint_complete": done >= len(wells), "plate_complete": all_done,
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
