"""The dashboard draws the configured plate format, readable labels, counts per field, a sensible axis
for one timepoint, the daemon's "nothing counted" state, and the backlog apart from live latency.
A real daemon on simulated plates, a real dashboard server, Debian's chromium through Playwright."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from wellwatch.dashboard.live import LiveState, Source
from wellwatch.harness import free_port, start_writer
from wellwatch.simulator.spec import SimulationSpec

from .dashboard_helpers import Dashboard, browser, dashboards, launch_chromium  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_24_well_plate_with_readable_labels_counts_per_field_and_one_timepoint(run_daemon, dashboards, browser,
                                                                                tmp_path):
    # row A is W00001..W00006 in a 24-well plate as in a 96-well one: the simulator's scanR names fit both
    spec = SimulationSpec(wells=("A1", "A2", "A3"), fields=2, timepoints=1, size=128, cells_per_field=8,
                          channels=("BF",), plate_name="p24")
    config, _ = run_daemon(spec, **{"plate.format": 24, "segmentation.method": "classical"})
    dash = dashboards(config)
    start_writer(spec, tmp_path / "acquisition").join()
    one_field = SimulationSpec(wells=("A4",), fields=1, timepoints=1, size=128, cells_per_field=8, channels=("BF",),
                               plate_name="p24", seed=3)
    start_writer(one_field, tmp_path / "acquisition").join()
    def frames_in_state() -> int:
        return sum(w["frames"] for w in httpx.get(f"{dash.url}/api/state").json()["wells"])
    # every field in (2 + 2 + 2 + 1): a well caught between its two fields would be compared with a later page
    wait_until(lambda: frames_in_state() == 7, what="all 7 fields in the state")
    state = httpx.get(f"{dash.url}/api/state").json()
    assert state["plate_format"] == 24
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dash.url)
    page.wait_for_selector("#well-D6")
    assert page.locator(".plate .well").count() == 24 and page.locator("#well-E1").count() == 0
    page.select_option("#metric", "cells")
    page.wait_for_function("document.getElementById('well-A4').dataset.value !== ''")
    for m in state["wells"]:  # colour by cells per field: a 1-field well compares with 2-field ones
        value = float(page.locator(f"#well-{m['well']}").get_attribute("data-value"))
        assert value == pytest.approx(m["cells"] / m["frames"])
    # every coloured well's label contrasts with its background (white on the dark end of viridis)
    for well in ("A1", "A2", "A3", "A4"):
        bg, fg = page.evaluate(f"(() => {{ const s = getComputedStyle(document.getElementById('well-{well}'));"
                               "return [s.backgroundColor, s.color]; })()")
        luminance = sum(w * int(c) for w, c in zip((0.2126, 0.7152, 0.0722), bg[4:-1].split(",")))
        assert fg == ("rgb(255, 255, 255)" if luminance < 140 else "rgb(0, 0, 0)"), (well, bg, fg)
    page.click("#well-A1")
    page.wait_for_selector("#well-panel:not([hidden]) .chart canvas")
    x_min, x_max = page.evaluate("[S.charts[0].scales.x.min, S.charts[0].scales.x.max]")
    assert (x_min, x_max) == (-1, 1)  # timepoint 0 alone: an axis around it, not 0..100
    assert errors == []


def test_the_page_says_why_nothing_is_counted_also_when_opened_later(run_daemon, dashboards, browser, tmp_path):
    spec = SimulationSpec(wells=("A1",), fields=2, timepoints=1, size=128, cells_per_field=5, channels=("BF", "PI"))
    config, _ = run_daemon(spec, **{"channels.label_free": "Brightfield", "report.nothing_counted_s": 0.5})
    early = dashboards(config)
    start_writer(spec, tmp_path / "acquisition").join()
    page = browser.new_page()
    page.goto(early.url)
    page.wait_for_selector("#nothing-counted:not([hidden])", timeout=20000)
    text = page.locator("#nothing-counted").inner_text()
    assert "Nothing counted" in text and "BF, PI" in text and "Brightfield" in text
    late = dashboards(config)  # opened after the message went by: the journal's outbox has it
    page.goto(late.url)
    page.wait_for_selector("#nothing-counted:not([hidden])", timeout=10000)
    assert "BF, PI" in page.locator("#nothing-counted").inner_text()


def test_backlog_frames_are_counted_apart_from_live_latency():
    state = LiveState(Source(f"tcp://127.0.0.1:{free_port()}"))
    started = time.time() - 5
    state._apply("update", {"type": "status", "kind": "daemon", "event": "started", "t_created": started},
                 _Stream(1))
    state._apply("update", {"type": "frame", "t_file": started - 786, "latency_s": 786.3}, _Stream(2))
    assert state.health["backlog_frames"] == 1 and state.health["backlog_age_s"] == 786.3
    assert state.health["last_latency_s"] is None  # a file written before the start is not latency
    state._apply("update", {"type": "frame", "t_file": started + 4, "latency_s": 0.04}, _Stream(3))
    assert state.health["last_latency_s"] == 0.04 and state.health["backlog_frames"] == 1


class _Stream:
    """What the reference client's follow() hands along with each message (its seq bookkeeping)."""

    def __init__(self, seq: int):
        self.seq, self.gaps, self.missed = seq, 0, 0
