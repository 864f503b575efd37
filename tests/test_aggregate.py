"""Tile calls -> per-well, per-timepoint counts."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.core.aggregate import PlateAggregate, TileCounts, count_tiles, live_fraction

pytestmark = pytest.mark.unit


def test_count_tiles_threshold_is_inclusive_for_dead():
    p_dead = np.array([0.0, 0.49, 0.5, 0.51, 1.0])
    assert count_tiles(p_dead, n_empty=3, threshold=0.5) == TileCounts(live=2, dead=3, empty=3)
    assert count_tiles(p_dead, n_empty=0, threshold=1.0) == TileCounts(live=4, dead=1, empty=0)
    assert count_tiles(np.array([]), n_empty=7, threshold=0.5) == TileCounts(0, 0, 7)


def test_rewritten_field_replaces_instead_of_adding():
    agg = PlateAggregate(fields_expected=2)
    agg.add("p", "A1", 0, 1, TileCounts(5, 5, 1))
    state = agg.add("p", "A1", 0, 1, TileCounts(8, 2, 0))  # the same field, re-written
    s = agg.summary(state)
    assert s["frames"] == 1 and s["counts"] == {"live": 8, "dead": 2, "empty": 0}
    assert s["live_fraction"] == 0.8 and not s["complete"]


def test_complete_when_expected_fields_present():
    agg = PlateAggregate(fields_expected=3)
    for f in (1, 2):
        state = agg.add("p", "B2", 4, f, TileCounts(1, 1, 0))
    assert not agg.summary(state)["complete"]
    state = agg.add("p", "B2", 4, 3, TileCounts(2, 0, 1))
    s = agg.summary(state)
    assert s["complete"] and s["frames"] == 3 and s["fields_expected"] == 3
    assert s["counts"] == {"live": 4, "dead": 2, "empty": 1} and s["unit"] == "tile"


def test_wells_and_timepoints_are_separate():
    agg = PlateAggregate()
    agg.add("p", "A1", 0, 1, TileCounts(1, 0, 0))
    agg.add("p", "A1", 1, 1, TileCounts(0, 1, 0))
    agg.add("p", "A2", 0, 1, TileCounts(3, 0, 0))
    agg.add("q", "A1", 0, 1, TileCounts(0, 4, 0))
    assert {k: agg.summary(s)["counts"]["live"] for k, s in agg.wells.items()} == \
        {("p", "A1", 0): 1, ("p", "A1", 1): 0, ("p", "A2", 0): 3, ("q", "A1", 0): 0}


def test_unknown_fields_expected_never_complete():
    agg = PlateAggregate(fields_expected=0)
    s = agg.summary(agg.add("p", "A1", 0, 1, TileCounts(1, 0, 0)))
    assert s["fields_expected"] is None and s["complete"] is False


def test_live_fraction_none_without_tiles():
    assert live_fraction(0, 0) is None
    assert live_fraction(3, 1) == 0.75
    agg = PlateAggregate(fields_expected=1)
    s = agg.summary(agg.add("p", "A1", 0, 1, TileCounts(0, 0, 9)))
    assert s["live_fraction"] is None and s["complete"]
