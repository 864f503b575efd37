"""Joining a field's channel files into the model's channels; fields short of a channel are reported."""

from __future__ import annotations

import pytest

from wellwatch.core.aggregate import PlateAggregate, TileCounts
from wellwatch.daemon.channel_join import ChannelJoin
from wellwatch.core.layouts import PlateLayout

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_field_is_ready_when_all_model_channels_are_in_model_order():
    join = ChannelJoin(("DIC", "PH"), missing_after_s=5)
    key = ("p", "A1", 0, 1, 0)
    assert join.add(key, "PH", "ph-image") is None  # written first, but the model's 2nd channel
    assert join.waiting() == 1
    assert join.add(key, "DIC", "dic-image") == ["dic-image", "ph-image"]
    assert join.waiting() == 0 and join.overdue() == []
    with pytest.raises(ValueError, match="'PI' is not one of the model's"):
        join.add(key, "PI", "x")


def test_missing_channel_is_reported_once_and_the_field_still_completes_later():
    clock = Clock()
    join = ChannelJoin(("BF", "GFP"), missing_after_s=10, clock=clock)
    join.add(("p", "B2", 3, 1, 0), "BF", 1)
    join.add(("p", "B2", 3, 2, 0), "BF", 2)
    assert join.add(("p", "B2", 3, 2, 0), "GFP", 22) == [2, 22]
    clock.t = 9.9
    assert join.overdue() == []
    clock.t = 10.5
    (late,) = join.overdue()
    assert late.key == ("p", "B2", 3, 1, 0) and late.present == ("BF",) and late.missing == ("GFP",)
    assert late.waited_s == pytest.approx(10.5)
    assert join.overdue() == []  # reported once
    assert join.add(("p", "B2", 3, 1, 0), "GFP", 11) == [1, 11]


def test_layout_sets_fields_expected_per_well_and_plate_completion():
    layout = PlateLayout("test", "x.HTD", 8, 12, {"B2": (1, 2), "B3": (1,)}, ("1",), (1, 2), (0,))
    agg = PlateAggregate(fields_expected=99, layout=layout)  # the layout wins over plate.fields_per_well
    c = TileCounts(live=3, dead=1, empty=0)
    s = agg.add("p", "B2", 1, 1, c)
    assert agg.summary(s)["fields_expected"] == 2 and not agg.summary(s)["complete"]
    s = agg.add("p", "B2", 1, 2, c)
    assert agg.summary(s)["complete"] and agg.summary(s)["counts"]["live"] == 6
    assert agg.plate_progress("p", 1)["wells_complete"] == 1
    agg.add("p", "B3", 1, 1, c)
    progress = agg.plate_progress("p", 1)
    assert progress["timepoint_complete"] and not progress["plate_complete"]  # timepoint 2 to come
    agg.add("p", "B2", 2, 1, c), agg.add("p", "B2", 2, 2, c), agg.add("p", "B3", 2, 1, c)
    assert agg.plate_progress("p", 2)["plate_complete"]
    assert agg.summary(agg.add("p", "H12", 1, 1, c))["fields_expected"] is None  # not in the layout


def test_z_planes_are_separate_images():
    layout = PlateLayout("test", "x", 8, 12, {"A1": (1,)}, ("1",), (1,), (0, 1, 2))
    agg = PlateAggregate(layout=layout)
    c = TileCounts(live=1, dead=0, empty=0)
    for z in (0, 1):
        s = agg.add("p", "A1", 1, 1, c, z=z)
    assert agg.summary(s)["frames"] == 2 and not agg.summary(s)["complete"]
    s = agg.add("p", "A1", 1, 1, c, z=2)
    assert agg.summary(s)["complete"] and agg.summary(s)["fields_expected"] == 3
