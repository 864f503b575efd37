"""The fault campaign's faults, fast: hostile files, a killed pool worker, the observer, restored files, exits."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from wellwatch.core.errors import FrameReadError
from wellwatch.core.naming import format_scanr
from wellwatch.core.files.tiff import FrameLimits, read_frame
from wellwatch.simulator.hostile import tiff_bomb
from wellwatch.simulator.writer import write_plate

from .test_daemon_ops import WELLWATCH, plate, write_config


def vm_peak_mb() -> float:
    """The process's peak virtual size: an untouched np.empty of 7 GB still raises it by 7 GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


@pytest.mark.unit
@pytest.mark.parametrize("width, height, pages, reason", [
    (60000, 60000, 1, "limits.max_pixels"), (20000, 20000, 1, "limits.max_pixels"),
    (20000, 20000, 3, "3 pages"), (512, 512, 5000, "more than 1 pages")])
def test_bombs_are_refused_from_the_header_without_allocating(tmp_path, width, height, pages, reason):
    path = tmp_path / "bomb.tif"
    assert tiff_bomb(path, width, height, pages) < 1_000_000
    limits = FrameLimits(max_pages=3) if pages == 3 else FrameLimits()
    before = vm_peak_mb()
    with pytest.raises(FrameReadError, match=reason) as e:
        read_frame(str(path), limits)
    assert not e.value.retryable
    assert vm_peak_mb() - before < 100


@pytest.mark.unit
def test_file_bigger_than_max_file_mb_is_not_read(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(b"II*\0" + bytes(2_000_000))
    with pytest.raises(FrameReadError, match="limits.max_file_mb"):
        read_frame(str(path), FrameLimits(max_file_mb=1.0))


def journal_states(journal: str) -> dict[str, str]:
    with sqlite3.connect(journal) as db:
        return dict(db.execute("SELECT path, state FROM frames").fetchall())


def quarantine_reasons(journal: str) -> dict[str, str]:
    with sqlite3.connect(journal) as db:
        return dict(db.execute("SELECT path, reason FROM frames WHERE state = 'quarantined'").fetchall())


@pytest.mark.integration
def test_daemon_quarantines_bombs_and_keeps_counting(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    config, running = run_daemon(spec)
    rec = recorder_for(config)
    root = Path(config.watch.root)
    bombs = [format_scanr(w, i, 1, 0, "BF") for w, i in (("B1", 13), ("B2", 14))]
    tiff_bomb(root / bombs[0], 60000, 60000)
    tiff_bomb(root / bombs[1], 20000, 20000)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(1)
    deadline = time.monotonic() + 20
    while len(quarantine_reasons(config.journal.path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = quarantine_reasons(config.journal.path)
    assert set(reasons) == set(bombs) and all("limits.max_pixels" in r for r in reasons.values())
    assert running.daemon.pipeline.fatal is None


@pytest.mark.integration
def test_file_restored_to_earlier_pixels_is_a_new_version(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1, size=256, cells_per_field=12)
    config, _ = run_daemon(spec, **{"watch.reconcile_s": 0.3})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    (first,) = rec.wait_frames(1)
    path = Path(config.watch.root) / first["path"]
    original, st = path.read_bytes(), path.stat()
    write_plate(plate(wells=("A1",), fields=1, timepoints=1, size=256, cells_per_field=30, seed=99),
                tmp_path / "acquisition")
    rec.wait_frames(2)
    path.write_bytes(original)  # restored, with its old size and mtime: only the content tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    frames = rec.wait_frames(3, timeout=20)
    assert [f["version"] for f in frames] == [1, 2, 3]
    assert frames[2]["counts"] == frames[0]["counts"] != frames[1]["counts"]
    time.sleep(1.0)  # several reconcile scans: the unchanged file is not a fourth version
    assert len(rec.of_type("frame")) == 3
    assert rec.state.wells[("ops", "A1", 0)]["counts"] == frames[0]["counts"]


def watch_events(rec) -> list[dict]:
    return [m for m in rec.updates if m["type"] == "status" and m.get("kind") == "watch"]


@pytest.mark.integration
def test_root_deleted_and_recreated_is_watched_again_at_once(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    config, running = run_daemon(spec, **{"watch.reconcile_s": 3600.0})  # no reconcile scan to fall back on
    rec = recorder_for(config)
    root = Path(config.watch.root)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(1)
    shutil.rmtree(root)
    root.mkdir()  # re-created within one gate poll or two
    time.sleep(0.6)
    later = plate(wells=("B1",), fields=1, timepoints=1, seed=5)
    t0 = time.monotonic()
    write_plate(later, tmp_path / "acquisition")
    rec.wait_frames(2, timeout=10)
    assert time.monotonic() - t0 < 1.5  # latency back to normal, not a reconcile period
    events = [(e["event"], e.get("reason")) for e in watch_events(rec)]
    assert events in ([("observer_restarted", "root_replaced")], [("root_unavailable", None), ("root_available", None)])


@pytest.mark.integration
def test_dead_observer_is_restarted(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    config, running = run_daemon(spec, **{"watch.reconcile_s": 3600.0})
    rec = recorder_for(config)
    running.daemon.pipeline.discovery.observer.stop()  # as if its thread had died
    time.sleep(0.6)
    t0 = time.monotonic()
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(1, timeout=10)
    assert time.monotonic() - t0 < 1.5
    assert [(e["event"], e.get("reason")) for e in watch_events(rec)] == [("observer_restarted", "observer_died")]


def make_unwritable(path: Path) -> bool:
    """Read-only for this process: chmod for a user, the immutable attribute for root."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.integration
def test_unwritable_journal_at_start_is_one_line_and_exit_2(tmp_path):
    from wellwatch.daemon.journal import Journal

    cfg_path = write_config(tmp_path)
    journal = tmp_path / "journal.sqlite"
    Journal(journal).close()
    if not make_unwritable(journal):
        pytest.skip("cannot make a file read-only here")
    try:
        out = subprocess.run(WELLWATCH + ["run", "--config", str(cfg_path)], capture_output=True, text=True,
                             timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(journal)], capture_output=True)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "journal.path" in last and str(journal) in last and "cannot write" in last


@pytest.mark.unit
def test_bit_flipped_model_in_inspect_is_one_line_and_exit_2(tmp_path, caplog):
    from wellwatch.cli import main
    from wellwatch.core.bundled_models import bundled_demo_model
    from wellwatch.simulator.hostile import flip_bit

    damaged = tmp_path / "flipped.onnx"
    data = bundled_demo_model().read_bytes()
    damaged.write_bytes(data)
    flip_bit(damaged, data.index(b'"task"') + 2, 7)  # inside the contract: no longer UTF-8
    assert main(["inspect", str(damaged)]) == 2
    assert "not valid UTF-8" in caplog.text and str(damaged) in caplog.text


@pytest.mark.integration
def test_dead_publisher_stops_the_daemon_with_exit_1_and_a_reason(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    config, running = run_daemon(spec)
    recorder_for(config)
    publisher = running.daemon.pipeline.publisher

    def broken_send(message):
        raise OSError("injected: the network is gone")

    publisher._send = broken_send
    write_plate(spec, tmp_path / "acquisition")
    running.thread.join(20)
    assert not running.thread.is_alive() and running.exit_code == [1]
    assert "publisher thread died" in str(running.daemon.pipeline.fatal)
    assert "injected" in str(running.daemon.pipeline.fatal)


@pytest.mark.integration
def test_oversized_snapshot_request_is_dropped_and_others_still_answered(run_daemon, recorder_for):
    import zmq

    from wellwatch.client import request_snapshot
    from wellwatch.net.sockets import MAX_REQUEST_BYTES

    config, running = run_daemon(plate(wells=("A1",), fields=1, timepoints=1))
    recorder_for(config)
    context = zmq.Context.instance()
    hostile = context.socket(zmq.DEALER)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.connect(config.publish.snapshot_endpoint)
    hostile.send_multipart([b"", b"x" * (MAX_REQUEST_BYTES * 256)])
    assert not hostile.poll(500)  # no answer: the daemon dropped the peer before buffering it
    hostile.close()
    assert request_snapshot(context, config.publish.snapshot_endpoint)["type"] == "snapshot"
    assert running.daemon.pipeline.fatal is None


@pytest.mark.unit
def test_pool_worker_killed_from_outside_costs_no_task():
    import os
    import signal

    from wellwatch.daemon.segmentation_pool import SegmentationPool
    from wellwatch.simulator.hostile import nap

    pool = SegmentationPool(2)
    try:
        futures = [pool.submit(nap, 0.3, i) for i in range(6)]
        time.sleep(0.1)
        os.kill(next(iter(pool.executor._processes)), signal.SIGKILL)  # the OOM killer, mid-task
        assert [f.result(timeout=60) for f in futures] == list(range(6))
        assert pool.rebuilds >= 1
        assert pool.submit(nap, 0, "after").result(timeout=30) == "after"  # the rebuilt pool works
    finally:
        pool.shutdown()


@pytest.mark.unit
def test_frame_that_kills_its_worker_fails_alone_and_the_rest_succeed():
    from wellwatch.daemon.segmentation_pool import FrameFault, SegmentationPool
    from wellwatch.simulator.hostile import die_in_worker, nap

    pool = SegmentationPool(2)
    try:
        innocent = [pool.submit(nap, 0.2, i) for i in range(4)]
        poison = pool.submit(die_in_worker)
        with pytest.raises(FrameFault, match="died 2 times"):
            poison.result(timeout=60)
        assert [f.result(timeout=60) for f in innocent] == list(range(4))
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_daemon_with_a_killed_segmentation_worker_loses_no_frame(run_daemon, recorder_for, tmp_path):
    import os
    import signal

    spec = plate(wells=("A1", "A2"), fields=2, timepoints=1)
    config, running = run_daemon(spec, **{"segmentation.method": "classical", "segmentation.workers": 2,
                                          "segmentation.classical.min_area": 60,
                                          "segmentation.classical.downsample": 1})
    rec = recorder_for(config)
    pool = running.daemon.pipeline.seg_pool
    os.kill(next(iter(pool.executor._processes)), signal.SIGKILL)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(4, timeout=60)
    assert quarantine_reasons(config.journal.path) == {}
    assert pool.rebuilds >= 1 and running.daemon.metrics.pool_rebuilds._value.get() >= 1


@pytest.mark.integration
def test_good_file_at_daemon_deaths_is_read_in_isolation_and_counted(run_daemon, tmp_path):
    """The operator killing the daemon twice while a good file was being read
    alone is no verdict on the file; its isolated read is."""
    from wellwatch.daemon.journal import Journal
    from wellwatch.harness import local_config

    spec = plate(wells=("A1", "A2", "A3"), fields=1, timepoints=1)
    write_plate(spec, tmp_path / "acquisition")
    root = tmp_path / "acquisition" / "data"
    killer, survivor, bystander = sorted(p.name for p in root.glob("*.tif"))  # the killer is innocent

    def identity(name: str) -> tuple[str, int, int]:
        return name, (root / name).stat().st_size, (root / name).stat().st_mtime_ns

    journal = Journal(tmp_path / "journal.sqlite")  # earlier runs died: what was in the readers each time
    # killer: a death with others, then two alone as a suspect; survivor: once alone before it was a suspect
    for names in ([killer, bystander], [survivor], [killer], [bystander, survivor], [killer]):
        journal.mark_inflight([(*identity(n), "read") for n in names])
        journal.clear_inflight()  # what a start-up does
    journal.mark_inflight([(*identity(bystander), "seen")])  # only waiting at the gate: no death counted
    journal.clear_inflight()
    assert journal.suspects() == {identity(killer): (1, 2), identity(survivor): (2, 0), identity(bystander): (2, 0)}
    journal.close()
    config, running = run_daemon(spec)
    assert config.journal.path == str(local_config(tmp_path, spec).journal.path)
    deadline = time.monotonic() + 30
    while len(journal_states(config.journal.path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # all three read fine in their isolated process: counted, and no longer suspects
    assert journal_states(config.journal.path) == {killer: "done", survivor: "done", bystander: "done"}
    with sqlite3.connect(config.journal.path) as db:
        assert db.execute("SELECT COUNT(*) FROM suspects").fetchone()[0] == 0


@pytest.mark.unit
def test_aggregate_keeps_recent_timepoints_and_reloads_a_late_one():
    from wellwatch.core.aggregate import PlateAggregate, TileCounts

    agg = PlateAggregate(2, keep_timepoints=2)
    journal = {}  # what the journal would hold: (timepoint) -> [(field, counts)]
    for t in range(5):
        for f in (1, 2):
            c = TileCounts(live=10 * t + f, dead=1, empty=0)
            journal.setdefault(t, []).append((f, 0, c))
            agg.add("p", "A1", t, f, c, history=lambda t=t: journal[t])
    assert sorted(k[2] for k in agg.wells) == [3, 4]  # bounded, however long the run
    late = agg.add("p", "A1", 0, 2, TileCounts(live=100, dead=0, empty=0), history=lambda: journal[0])
    assert late.totals().live == 1 + 100 and len(late.fields) == 2  # field 1 came back from the journal
    assert sorted(k[2] for k in agg.wells) == [3, 4]


@pytest.mark.integration
def test_snapshot_is_the_latest_timepoint_per_well_older_ones_by_range(run_daemon, recorder_for, tmp_path):
    import zmq

    from wellwatch.client import request_snapshot
    from wellwatch.results.journal_reader import well_history

    spec = plate(wells=("A1", "A2"), fields=1, timepoints=4, size=64, cells_per_field=2)
    config, running = run_daemon(spec)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(8)
    time.sleep(0.3)
    context, endpoint = zmq.Context.instance(), config.publish.snapshot_endpoint
    latest = request_snapshot(context, endpoint)
    assert sorted((w["well"], w["timepoint"]) for w in latest["wells"]) == [("A1", 3), ("A2", 3)]
    older = request_snapshot(context, endpoint, timepoints=(0, 1))
    assert sorted((w["well"], w["timepoint"]) for w in older["wells"]) == [("A1", 0), ("A1", 1), ("A2", 0), ("A2", 1)]
    assert older["seq"] == latest["seq"] and older["timepoints"] == [0, 1]
    history = well_history(config.journal.path)  # the bulk read, beside the running daemon
    assert [(w["well"], w["timepoint"]) for w in history] == [(w, t) for w in ("A1", "A2") for t in range(4)]
    assert well_history(config.journal.path, well="A1", timepoints=(2, 3)) == [
        w for w in history if w["well"] == "A1" and w["timepoint"] >= 2]
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    req.send(b'{"request": "snapshot", "timepoints": [3, 1]}')
    assert req.poll(5000)
    assert json.loads(req.recv())["type"] == "error"
    req.close()
