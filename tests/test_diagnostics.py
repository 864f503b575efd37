"""The daemon says why nothing is counted, and how counting goes (daemon/diagnostics.py): a real
daemon on simulated acquisitions, its stream followed by a real subscriber."""

from __future__ import annotations

import logging
import time

import numpy as np

from wellwatch.daemon.diagnostics import Diagnostics, Expectations
from wellwatch.core.scoring import FrameOutputs
from wellwatch.daemon.messages import FailedFrame, FrameFile, ScoredFrame
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.core.naming import FrameMeta
from wellwatch.harness import start_writer
from wellwatch.simulator.spec import SimulationSpec
from prometheus_client import CollectorRegistry
import pytest

FAST = {"report.nothing_counted_s": 0.5, "report.progress_s": 0.5}


def wait_status(recorder, kind: str, timeout: float = 20, **match) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in recorder.of_type("status"):
            if m.get("kind") == kind and all(m.get(k) == v for k, v in match.items()):
                return m
        time.sleep(0.05)
    raise AssertionError(f"no status/{kind} {match} within {timeout} s; got "
                         f"{[m.get('kind') for m in recorder.of_type('status')]}")


@pytest.mark.integration
def test_a_channel_the_files_do_not_have_is_named_within_seconds(tmp_path, run_daemon, recorder_for, caplog):
    spec = SimulationSpec(wells=("A1", "A2"), fields=1, timepoints=1, size=128, cells_per_field=5,
                          channels=("BF", "PI"))
    config, daemon = run_daemon(spec, **{"channels.label_free": "Brightfield", **FAST})
    recorder = recorder_for(config)
    caplog.set_level(logging.WARNING, logger="wellwatch.daemon.diagnostics")
    t0 = time.monotonic()
    start_writer(spec, tmp_path / "acquisition").join()
    warning = wait_status(recorder, "nothing_counted", event="warning")
    assert time.monotonic() - t0 < 10
    assert warning["channels_seen"] == ["BF", "PI"] and warning["reasons"] == {"other_channel": 4}
    assert warning["expects"]["channels"] == ["Brightfield"]
    assert "channel(s) BF, PI" in warning["message"] and "Brightfield" in warning["message"]
    assert any("nothing counted" in r.getMessage() and "BF, PI" in r.getMessage() for r in caplog.records)
    assert daemon.daemon.registry.get_sample_value("wellwatch_nothing_counted") == 1
    assert recorder.of_type("frame") == []


@pytest.mark.integration
def test_frames_smaller_than_one_tile_are_named(tmp_path, run_daemon, recorder_for):
    spec = SimulationSpec(wells=("A1",), fields=2, timepoints=1, size=48, cells_per_field=1, channels=("BF",))
    config, daemon = run_daemon(spec, **FAST)
    recorder = recorder_for(config)
    start_writer(spec, tmp_path / "acquisition").join()
    warning = wait_status(recorder, "nothing_counted", event="warning")
    assert warning["reasons"] == {"smaller_than_tile": 2}
    assert "smaller than one 64 px tile" in warning["message"] and "(48x48 px)" in warning["message"]
    assert daemon.daemon.registry.get_sample_value("wellwatch_frames_total",
                                                   {"outcome": "smaller_than_tile"}) == 2


@pytest.mark.integration
def test_names_the_preset_does_not_match_then_counting_resumes(tmp_path, run_daemon, recorder_for):
    spec = SimulationSpec(wells=("A1",), fields=1, timepoints=1, size=128, cells_per_field=5, channels=("BF",))
    config, daemon = run_daemon(spec, **FAST)
    recorder = recorder_for(config)
    data = tmp_path / "acquisition" / "data"
    (data / "well A1 image 1.tif").write_bytes(b"II*\x00")
    warning = wait_status(recorder, "nothing_counted", event="warning")
    assert warning["reasons"] == {"unmatched_name": 1} and "'scanr' does not match" in warning["message"]
    start_writer(spec, tmp_path / "acquisition").join()
    wait_status(recorder, "nothing_counted", event="resolved")
    assert daemon.daemon.registry.get_sample_value("wellwatch_nothing_counted") == 0


@pytest.mark.integration
def test_progress_reports_counts_last_well_latency_and_backlog_apart(tmp_path, run_daemon, recorder_for, caplog):
    before = SimulationSpec(wells=("A1",), fields=2, timepoints=1, size=128, cells_per_field=5, channels=("BF",))
    start_writer(before, tmp_path / "acquisition").join()  # there before the daemon starts: backlog
    caplog.set_level(logging.INFO, logger="wellwatch.daemon.diagnostics")
    # the first report comes progress_s after the start: the subscriber is connected by then
    config, daemon = run_daemon(before, **{**FAST, "report.progress_s": 3.0})
    recorder = recorder_for(config)
    live = SimulationSpec(wells=("B2",), fields=2, timepoints=1, size=128, cells_per_field=5, channels=("BF",))
    time.sleep(0.2)
    start_writer(live, tmp_path / "acquisition").join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        progress = [m for m in recorder.of_type("status") if m["kind"] == "progress"]
        if sum(m["frames"] for m in progress) >= 4:
            break
        time.sleep(0.1)
    assert sum(m["frames"] for m in progress) == 4
    assert sum(m["backlog_frames"] for m in progress) == 2  # A1's two fields were already there
    assert progress[-1]["total"] == 4 and progress[-1]["last"]["well"] in ("A1", "B2")
    live_latency = [m["latency_ms"] for m in progress if m["latency_ms"]]
    assert live_latency and all(lat["max"] < 10_000 for lat in live_latency)
    assert any(r.getMessage().startswith("counted ") and " field " in r.getMessage() for r in caplog.records)
    assert not [m for m in recorder.of_type("status") if m["kind"] == "nothing_counted"]


# --- the rules, without a daemon -------------------------------------------------------------

def _diagnostics(in_flight=lambda: 0, **kw):
    events = []
    d = Diagnostics(Expectations(("BF",), "scanr", 64, "demo"), DaemonMetrics(CollectorRegistry()), events.append,
                    in_flight, **{"nothing_counted_s": 1.0, "progress_s": 0, "repeat_s": 30.0, **kw})
    return d, events


@pytest.mark.unit
def test_nothing_counted_waits_while_frames_are_on_their_way_and_is_rate_limited():
    busy = [1]
    d, events = _diagnostics(in_flight=lambda: busy[0])
    d.ignored("x--PI.tif", "other_channel", "PI")
    now = time.monotonic()
    d.tick(now + 5)
    assert events == []  # a BF frame is still on its way: it may yet be counted
    busy[0] = 0
    d.tick(now + 5)
    assert [e.body["event"] for e in events] == ["warning"]
    d.ignored("y--PI.tif", "other_channel", "PI")
    d.tick(now + 10)
    assert len(events) == 1  # at most once per repeat_s
    d.tick(now + 40)
    assert len(events) == 2 and events[1].body["files"] == 2
    d.tick(now + 80)
    assert len(events) == 2  # nothing new arrived: nothing new to say


@pytest.mark.unit
def test_other_channels_are_no_alarm_once_the_models_channel_was_counted():
    """A slow acquisition (fields minutes apart) or a restart mid-plate: PI and LIVE files arriving
    while the next BF is still being imaged are expected, not a mistyped channel."""
    now = time.monotonic()
    restarted, events = _diagnostics(counted_before=12)  # the journal holds 12 counted BF frames
    restarted.ignored("x--PI.tif", "other_channel", "PI")
    restarted.tick(now + 5)
    assert events == []
    live, events = _diagnostics()
    live.committed([_counted_bf_frame()])
    live.ignored("x--PI.tif", "other_channel", "PI")
    live.tick(now + 5)
    assert events == []
    live.ignored("x.tif", "unmatched_name")  # other reasons still speak
    live.tick(now + 10)
    assert [e.body["reasons"] for e in events] == [{"unmatched_name": 1}]


def _counted_bf_frame():
    job = FrameFile("/d/b.tif", "b.tif", FrameMeta("p", "A1", 1, 0, 0, "BF"), 10, 0)
    return ScoredFrame(job, "", FrameOutputs((256, 256), np.zeros((1, 2), np.int64), 0, np.zeros((1, 2), np.float32)))


@pytest.mark.unit
def test_a_quarantine_is_a_reason():
    d, events = _diagnostics()
    job = FrameFile("/d/a.tif", "a.tif", FrameMeta("p", "A1", 1, 0, 0, "BF"), 10, 0)
    d.committed([FailedFrame(job, "", "not a TIFF file")])
    d.tick(time.monotonic() + 2)
    assert events[0].body["reasons"] == {"quarantined": 1}
    assert "a.tif: not a TIFF file" in events[0].body["message"]


@pytest.mark.unit
def test_the_demo_model_warning_names_the_next_step(caplog):
    from wellwatch.core.config import load_config
    from wellwatch.daemon.service import load_backend

    caplog.set_level(logging.WARNING, logger="wellwatch.daemon.service")
    load_backend(load_config(None, {"inference.device": "cpu"}), DaemonMetrics(CollectorRegistry()))
    (warning,) = [r.getMessage() for r in caplog.records if "DEMO model" in r.getMessage()]
    assert "wellwatch calibrate" in warning and "models.live_dead.path" in warning and "docs" in warning
