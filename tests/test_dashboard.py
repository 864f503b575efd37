"""The dashboard against a real daemon: JSON API, server-sent events, journal history, and a real
browser (Debian's chromium through Playwright) watching a simulated plate stream in."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from wellwatch.core.plate_map import PlateMapError
from wellwatch.dashboard.cli import build_source
from wellwatch.harness import start_writer
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import PLATE_MAP, write_plate

from .dashboard_helpers import Dashboard, browser, dashboards, launch_chromium  # noqa: F401 (fixtures)

SMALL = SimulationSpec(wells=("A1", "A2", "A3", "B1", "B2", "B3"), fields=2, timepoints=2, size=128,
                       cells_per_field=6, channels=("BF",), treatment="dose_series", control_columns=1,
                       plate_name="dash-plate", seed=4)


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def last_well_messages(recorder) -> dict:
    out = {}
    for m in recorder.of_type("well"):
        out[(m["well"], m["timepoint"])] = m
    return out


@pytest.mark.integration
def test_api_and_events_agree_with_the_stream(run_daemon, recorder_for, dashboards, tmp_path):
    config, _ = run_daemon(SMALL, **{"watch.settle_s": 0.05})
    rec = recorder_for(config)
    dash = dashboards(config, fields_expected=SMALL.fields)
    write_plate(SMALL, tmp_path / "acquisition")
    n_frames = len(SMALL.wells) * SMALL.fields * SMALL.timepoints
    rec.wait_frames(n_frames)
    wait_until(lambda: sum(m["frames"] for m in dash.state.wells.values()) == n_frames, what="the dashboard's wells")
    state = httpx.get(f"{dash.url}/api/state").json()
    expected = last_well_messages(rec)
    got = {(m["well"], m["timepoint"]): m for m in state["wells"]}
    assert set(got) == set(expected)
    for k, m in expected.items():
        assert (got[k]["counts"], got[k]["live_fraction"], got[k]["frames"]) == (m["counts"], m["live_fraction"], m["frames"])
    assert state["models"] == rec.of_type("frame")[0]["models"]
    assert state["health"]["connected"] and state["health"]["gaps"] == 0
    well = httpx.get(f"{dash.url}/api/well/dash-plate/A2").json()
    assert [m["timepoint"] for m in well["totals"]] == [0, 1]
    assert len(well["frames"]) == SMALL.fields * SMALL.timepoints
    assert sum(f["live"] for f in well["frames"] if f["timepoint"] == 1) == expected[("A2", 1)]["counts"]["live"]
    with httpx.stream("GET", f"{dash.url}/api/events?since=0", timeout=10) as events:
        lines = events.iter_lines()
        event = next(line for line in lines if line.startswith("event:"))
        data = json.loads(next(lines)[len("data: "):])
    assert event == "event: changes" and len(data["wells"]) == len(expected)


@pytest.mark.integration
def test_history_comes_from_the_journal_for_a_late_dashboard(run_daemon, recorder_for, dashboards, tmp_path):
    config, _ = run_daemon(SMALL, **{"watch.settle_s": 0.05})
    rec = recorder_for(config)
    write_plate(SMALL, tmp_path / "acquisition")
    rec.wait_frames(len(SMALL.wells) * SMALL.fields * SMALL.timepoints)
    dash = dashboards(config, plate_map=tmp_path / "acquisition" / PLATE_MAP, fields_expected=SMALL.fields)
    assert {(w, t) for (_, w, t) in dash.state.wells} == set(last_well_messages(rec))  # before any update
    wait_until(lambda: dash.state.health["snapshots"] >= 1, what="the snapshot")
    state = httpx.get(f"{dash.url}/api/state").json()
    assert {d["timepoint"] for d in state["dose"]} == {0, 1}
    assert state["plate_map"]["wells"]["A1"]["role"] == "control"


@pytest.mark.unit
def test_source_from_config_and_bad_inputs(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[publish]\nendpoint = "tcp://127.0.0.1:6001"\nsnapshot_endpoint = "tcp://127.0.0.1:6011"\n'
                   '[journal]\npath = "j.sqlite"\n[plate]\nformat = 384\nfields_per_well = 4\n')
    args = argparse.Namespace(config=str(cfg), endpoint=None, snapshot=None, journal=None, plate_map=None,
                              plate_format=None)
    source = build_source(args)
    assert (source.endpoint, source.snapshot_endpoint, source.plate_format, source.fields_expected) == \
        ("tcp://127.0.0.1:6001", "tcp://127.0.0.1:6011", 384, 4)
    assert source.journal.path == tmp_path / "j.sqlite"
    with pytest.raises(SystemExit, match="give --config"):
        build_source(argparse.Namespace(**{**vars(args), "config": None}))
    (tmp_path / "map.csv").write_text("well,compound\nA1,x\n")
    with pytest.raises(PlateMapError, match="map.csv: column 'concentration' missing"):
        build_source(argparse.Namespace(**{**vars(args), "plate_map": str(tmp_path / "map.csv")}))


# --- in a real browser --------------------------------------------------------------------------

STREAMED = SimulationSpec(wells=tuple(f"{r}{c}" for r in "AB" for c in range(1, 7)), fields=1, timepoints=3,
                          size=256, cells_per_field=25, channels=("BF",), treatment="dose_series",
                          control_columns=1, interval_s=0.08, write_mode="rename", plate_name="live-plate", seed=2)


@pytest.mark.integration
def test_browser_sees_the_plate_fill_in_a_time_course_and_the_dose_curve(run_daemon, recorder_for, dashboards,
                                                                          tmp_path):
    if os.environ.get("WELLWATCH_REQUIRE_BROWSER") != "1":
        pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    config, _ = run_daemon(STREAMED, **{"watch.settle_s": 0.05})
    rec = recorder_for(config)
    acquisition = tmp_path / "acquisition"
    plate_map = acquisition / PLATE_MAP
    n_frames = len(STREAMED.wells) * STREAMED.timepoints
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            writer = start_writer(STREAMED, acquisition)
            wait_until(plate_map.exists, 10, "the simulator's plate map")  # written before the first frame
            dash = dashboards(config, plate_map=plate_map, fields_expected=STREAMED.fields)
            page.goto(dash.url)
            seen = []  # (timepoint shown, wells with data), sampled while the plate streams in
            while writer.is_alive():
                seen.append(tuple(page.evaluate(  # both read in one go: the page may render between two reads
                    "[Number(document.getElementById('timepoint').value), "
                    "document.querySelectorAll('.well.has-data').length]")))
                time.sleep(0.3)
            rec.wait_frames(n_frames)
            page.wait_for_function("document.querySelectorAll('.well.has-data').length === 12", timeout=20000)
            assert min(n for _, n in seen) < 12 and seen == sorted(seen), f"wells should fill in as frames arrive: {seen}"
            # the page's latest timepoint agrees with the stream, well by well
            wait_until(lambda: page.locator("#timepoint-label").inner_text().startswith("2 "), 20, "the last timepoint")
            expected = last_well_messages(rec)
            page.wait_for_function(
                "n => [...document.querySelectorAll('.well.has-data')].reduce((a, el) => a + Number(el.dataset.frames), 0) === n",
                arg=len(STREAMED.wells), timeout=20000)
            for well in STREAMED.wells:
                el = page.locator(f"#well-{well}")
                assert float(el.get_attribute("data-live-fraction")) == pytest.approx(expected[(well, 2)]["live_fraction"])
            # a well's time course opens
            page.click("#well-B4")
            page.wait_for_selector("#well-panel:not([hidden]) .chart canvas")
            assert page.locator("#well-charts .chart").count() == 4
            assert page.locator("#qc-table tbody tr").count() == STREAMED.timepoints
            # the dose-response curve appears, with the fit the server made
            treated = len(STREAMED.wells) - 2  # one control column of two rows

            def final_fit():
                return next((d for d in httpx.get(f"{dash.url}/api/state").json()["dose"]
                             if d["timepoint"] == 2 and len(d["points"]) == treated), None)

            wait_until(lambda: final_fit() is not None, 30, "the last timepoint's fit over every treated well")
            fit = final_fit()
            page.wait_for_selector("#dose-simdrug canvas", timeout=20000)
            assert fit["viability_fit"]["ic50"] is not None, fit["viability_fit"]
            page.wait_for_function("v => document.getElementById('dose-simdrug').dataset.ic50 == String(v)",
                                   arg=fit["viability_fit"]["ic50"], timeout=10000)
            assert "IC50" in page.locator("#dose-simdrug").inner_text()
            assert page.locator("#dose-simdrug").get_attribute("data-timepoint") == "2"
            assert errors == []
        finally:
            browser.close()


@pytest.mark.integration
def test_the_command_serves_the_page_with_its_bundled_plotting_library(tmp_path):
    """`wellwatch dashboard` as a user starts it; no daemon yet: the page says it is not connected."""
    import subprocess
    import sys

    from wellwatch.harness import free_port

    port, stream = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wellwatch", "dashboard", "--endpoint", f"tcp://127.0.0.1:{stream}",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(base + "/", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "the dashboard to serve")
        page = httpx.get(base + "/").text
        assert '<script src="/static/vendor/uPlot.iife.min.js">' in page and "cdn" not in page.lower()
        lib = httpx.get(base + "/static/vendor/uPlot.iife.min.js")
        assert lib.status_code == 200 and "uPlot" in lib.text[:2000]
        wait_until(lambda: httpx.get(base + "/api/state").json()["health"]["error"] is not None, 30,
                   "the dashboard to report the missing daemon")
        assert httpx.get(base + "/api/state").json()["health"]["connected"] is False
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in out


@pytest.mark.unit
def test_dashboard_reads_the_daemon_only_through_the_client_journal_and_pure_modules():
    """The design's rule: the stream through wellwatch.client, the journal read-only through
    wellwatch.results; of the science core only its pure modules (fits, plate map and formats, config,
    errors, the one definition of a well's images and completeness); nothing of the daemon."""
    import ast

    allowed = {"wellwatch.client", "wellwatch.core.dose", "wellwatch.core.plate_map", "wellwatch.core.config",
               "wellwatch.core.errors", "wellwatch.core.plate", "wellwatch.core.aggregate",
               "wellwatch.results.journal_reader", "wellwatch.results.summaries"}
    used = set()
    for path in (Path(__file__).resolve().parents[1] / "dashboard").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wellwatch"):
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("wellwatch")}
    assert "wellwatch.results.journal_reader" in used and used <= allowed, sorted(used - allowed)


@pytest.mark.integration
def test_browser_draws_a_384_well_plate_and_says_the_daemon_is_missing():
    if os.environ.get("WELLWATCH_REQUIRE_BROWSER") != "1":
        pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    from wellwatch.dashboard.cli import ServerThread
    from wellwatch.dashboard.live import LiveState, Source
    from wellwatch.dashboard.server import create_app
    from wellwatch.harness import free_port

    state = LiveState(Source(f"tcp://127.0.0.1:{free_port()}", plate_format=384)).start()
    port = free_port()
    server = ServerThread(create_app(state), "127.0.0.1", port)
    server.start()
    server.wait_started()
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#well-P24")
                assert page.locator(".plate .well").count() == 384
                page.wait_for_function("document.getElementById('health').innerText.includes('not connected')",
                                       timeout=20000)
            finally:
                browser.close()
    finally:
        server.stop()
        state.stop()


@pytest.mark.integration
def test_browser_shows_a_calibrated_models_intervals(run_daemon, recorder_for, dashboards, browser, tmp_path):
    from wellwatch.core.intervals import Calibration

    from .calibrated_model import calibrated_demo_model

    model = calibrated_demo_model(tmp_path / "calibrated.onnx",
                                  Calibration("classify_count", {"0.9": 0.1}, "per-well fractions only"))
    config, _ = run_daemon(SMALL, **{"watch.settle_s": 0.05, "models.live_dead.path": str(model)})
    rec = recorder_for(config)
    write_plate(SMALL, tmp_path / "acquisition")
    rec.wait_frames(len(SMALL.wells) * SMALL.fields * SMALL.timepoints)
    dash = dashboards(config, plate_map=tmp_path / "acquisition" / PLATE_MAP, fields_expected=SMALL.fields)
    wait_until(lambda: dash.state.health["snapshots"] >= 1, what="the snapshot")
    expected = last_well_messages(rec)
    # the dose points carry the treated wells' intervals over the controls' mean
    wait_until(lambda: any(d["timepoint"] == 1 for d in httpx.get(f"{dash.url}/api/state").json()["dose"]),
               what="the last timepoint's fit")
    fit = next(d for d in httpx.get(f"{dash.url}/api/state").json()["dose"] if d["timepoint"] == 1)
    assert fit["points"] and all(p["viability_interval"] is not None for p in fit["points"])
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dash.url)
    page.wait_for_function("document.querySelectorAll('.well.has-data').length === 6", timeout=20000)
    wait_until(lambda: page.locator("#timepoint-label").inner_text().startswith("1 "), 20, "the last timepoint")
    el = page.locator("#well-A2")
    low, high = expected[("A2", 1)]["live_fraction_interval"]
    assert [float(v) for v in el.get_attribute("data-interval").split(",")] == pytest.approx([low, high])
    assert "90% interval" in el.get_attribute("title") and "not usable one by one" in el.get_attribute("title")
    page.click("#well-A2")  # its live-fraction chart gains the calibrated estimate with error bars
    page.wait_for_selector("#well-panel:not([hidden]) .chart canvas")
    page.wait_for_selector("[data-chart='live fraction'] canvas")
    estimate = page.evaluate("S.charts.map((c) => c.series.map((s) => s.label))"
                             ".find((labels) => labels.includes('calibrated estimate'))")
    assert estimate is not None, "no calibrated-estimate series on the live-fraction chart"
    page.wait_for_selector("#dose-simdrug canvas", timeout=20000)
    assert errors == []  # the error-bar draw hooks ran without an exception
