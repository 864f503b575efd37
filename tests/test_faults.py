"""Fault injection: kill -9, damaged files, lost events, a dropped share, hostile names.

The promise under test: every frame written is counted exactly once, or is listed as
quarantined with its reason, and the daemon keeps running.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wellwatch.core.naming import format_scanr
from wellwatch.core.plate import PLATE_FORMATS, all_wells, well_index
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

from .conftest import wait_ready
from .test_daemon_ops import WELLWATCH, config_of, plate, wait_rows, write_config

pytestmark = pytest.mark.integration


def per_field_results(journal: str) -> dict[str, tuple]:
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT path, state, live, dead, empty FROM frames").fetchall()
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "a frame was journaled twice"
    return {r[0]: r[1:] for r in rows}


def stream_frame_paths(journal: str) -> list[str]:
    """Frame messages as a seq-deduplicating subscriber sees them (the outbox is what was sent)."""
    import json

    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT seq, payload FROM outbox WHERE topic LIKE 'frame/%' ORDER BY seq").fetchall()
    seqs = [s for s, _ in rows]
    assert len(seqs) == len(set(seqs))
    return [json.loads(p)["path"] for _, p in rows]


def run_to_completion(tmp_path: Path, spec: SimulationSpec, name: str, kill_after: float | None) -> dict:
    """Write the plate while the daemon runs; optionally kill -9 it once mid-plate and restart."""
    folder = tmp_path / name
    cfg_path = write_config(folder)
    config = config_of(cfg_path)
    proc = subprocess.Popen(WELLWATCH + ["run", "--config", str(cfg_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        writer = subprocess.Popen(WELLWATCH + ["simulate", str(folder / "acq"), "--wells", ",".join(spec.wells),
                                               "--fields", str(spec.fields), "--timepoints", str(spec.timepoints),
                                               "--size", str(spec.size), "--cells-per-field",
                                               str(int(spec.cells_per_field)), "--channels", "BF",
                                               "--plate-name", "ops", "--seed", str(spec.seed),
                                               "--interval-s", str(spec.interval_s), "--write-mode", "rename"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = subprocess.Popen(WELLWATCH + ["run", "--config", str(cfg_path)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        wait_ready(config)  # a SIGTERM during start-up would end it before its handlers exist
        writer.wait(timeout=120)
        n = len(spec.wells) * spec.fields * spec.timepoints
        assert wait_rows(Path(config.journal.path), n, timeout=60) == n
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    return {"results": per_field_results(config.journal.path), "stream": stream_frame_paths(config.journal.path)}


def test_kill_9_at_random_points_then_restart_counts_every_frame_once(tmp_path):
    spec = plate(wells=("A1", "A2", "A3", "A4"), fields=2, timepoints=3, interval_s=0.1)
    reference = run_to_completion(tmp_path, spec, "reference", kill_after=None)
    rng = random.Random(20261122)
    for i, kill_after in enumerate(sorted(rng.uniform(1.0, 3.5) for _ in range(3))):
        killed = run_to_completion(tmp_path, spec, f"killed{i}", kill_after=kill_after)
        assert killed["results"] == reference["results"], f"kill at {kill_after:.2f} s changed the counts"
        assert sorted(killed["stream"]) == sorted(reference["stream"]), f"kill at {kill_after:.2f} s"


def damaged_variants(data: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    cuts = [0, 3, 8, 16, 64, 150, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1]
    variants = [(f"cut{n}", data[:n]) for n in cuts]
    for k in range(12):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), size=1 + k % 3):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        variants.append((f"flip{k}", bytes(flipped)))
    variants.append(("not-a-tiff", b"PK\x03\x04 this is a zip, not a TIFF" * 40))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3, 96, 96), np.uint16), photometric="minisblack")
    variants.append(("stack", buf.getvalue()))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((96, 96), np.int32))
    variants.append(("int32", buf.getvalue()))
    return variants


def test_truncated_and_bit_flipped_files_are_processed_or_quarantined(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1, size=192)
    write_plate(spec, tmp_path / "source")
    original = next((tmp_path / "source" / "data").glob("*.tif")).read_bytes()
    variants = damaged_variants(original, np.random.default_rng(7))
    config, running = run_daemon(spec, **{"pipeline.max_retries": 1, "pipeline.retry_delay_s": 0.05,
                                          "watch.settle_s": 0.05})
    rec = recorder_for(config)
    data = Path(config.watch.root)
    wells = all_wells(PLATE_FORMATS[96])
    names = {}
    for i, (kind, blob) in enumerate(variants):
        name = format_scanr(wells[i], well_index(wells[i], PLATE_FORMATS[96]), 1, 0, "BF")
        names[name] = kind
        (data / name).write_bytes(blob)
    deadline = time.monotonic() + 60
    while len(per_field_results(config.journal.path)) < len(variants) and time.monotonic() < deadline:
        time.sleep(0.1)
    results = per_field_results(config.journal.path)
    assert set(results) == set(names), "every damaged file ends in the journal, once"
    with sqlite3.connect(config.journal.path) as db:
        reasons = dict(db.execute("SELECT path, reason FROM frames WHERE state = 'quarantined'").fetchall())
    for name, kind in names.items():
        state = results[name][0]
        if kind.startswith("cut") or kind in ("not-a-tiff", "stack", "int32"):
            assert state == "quarantined" and reasons[name], (kind, state)
        else:
            assert state in ("done", "quarantined")
            assert state == "done" or reasons[name]
    assert running.thread.is_alive() and running.daemon.pipeline.fatal is None
    time.sleep(0.2)
    with sqlite3.connect(config.journal.path) as db:
        status = dict(db.execute("SELECT path, status FROM frame_status").fetchall())
    assert status == {name: "quarantined" if results[name][0] == "quarantined" else "published" for name in names}
    quarantine_messages = [m for m in rec.updates if m["type"] == "status" and m.get("kind") == "quarantine"]
    assert {m["path"] for m in quarantine_messages} == set(reasons)
    assert running.daemon.metrics.frames.labels("quarantined")._value.get() == len(reasons)


def test_burst_of_thousands_found_even_with_events_lost(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=tuple(all_wells(PLATE_FORMATS[384])), fields=3, timepoints=2, size=64, cells_per_field=1,
                 plate_format=384)
    config, running = run_daemon(spec, **{"watch.reconcile_s": 0.5, "batching.max_delay_ms": 5.0})
    rec = recorder_for(config)
    discovery = running.daemon.pipeline.discovery
    discovery.restart_observer = lambda: False  # the observer is gone for good:
    discovery.stop()                            # only the reconcile scan can find files
    write_plate(spec, tmp_path / "acquisition")
    n = len(spec.wells) * spec.fields * spec.timepoints
    assert n == 2304
    deadline = time.monotonic() + 120
    while len(per_field_results(config.journal.path)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    results = per_field_results(config.journal.path)
    assert len(results) == n and {r[0] for r in results.values()} == {"done"}


def test_dropped_share_alerts_and_resumes_without_losing_results(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1", "A2"), fields=1, timepoints=1)
    config, running = run_daemon(spec, **{"watch.reconcile_s": 0.2})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(2)
    root = Path(config.watch.root)
    gone = root.with_name("unmounted")
    root.rename(gone)  # the share drops: the folder vanishes
    deadline = time.monotonic() + 10
    while running.daemon.metrics.watch_root_up._value.get() != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.daemon.metrics.watch_root_up._value.get() == 0
    gone.rename(root)  # it comes back
    write_plate(plate(wells=("B1",), fields=1, timepoints=1, seed=3), tmp_path / "acquisition")
    rec.wait_frames(3, timeout=20)

    def watch_events() -> list[str]:
        return [m["event"] for m in rec.updates if m["type"] == "status" and m.get("kind") == "watch"]

    deadline = time.monotonic() + 10
    while len(watch_events()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watch_events() == ["root_unavailable", "root_available"]
    assert running.daemon.metrics.watch_root_up._value.get() == 1
    assert len(per_field_results(config.journal.path)) == 3  # nothing deleted, nothing repeated


def test_symlink_out_of_root_and_unmatched_names(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    write_plate(spec, tmp_path / "outside")
    outside = next((tmp_path / "outside" / "data").glob("*.tif"))
    config, running = run_daemon(spec, **{"watch.reconcile_s": 0.2})
    rec = recorder_for(config)
    root = Path(config.watch.root)
    os.symlink(outside, root / format_scanr("A2", 2, 1, 0, "BF"))
    shutil.copy(outside, root / "notes-from-the-microscope.tif")
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(1)
    time.sleep(1.0)  # several reconcile scans
    assert list(per_field_results(config.journal.path)) == [outside.name]  # the real file only
    assert running.daemon.metrics.frames.labels("unmatched_name")._value.get() == 1  # counted once


def test_rewritten_file_is_a_new_version_that_replaces_its_result(run_daemon, recorder_for, tmp_path):
    spec = plate(wells=("A1",), fields=2, timepoints=1, size=256, cells_per_field=12)
    config, _ = run_daemon(spec)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(2)
    write_plate(SimulationSpec(**{**spec.to_json(), "seed": 99, "fields": 1}), tmp_path / "acquisition")
    frames = rec.wait_frames(3)
    time.sleep(0.3)
    assert [f["version"] for f in frames] == [1, 1, 2]
    well = rec.state.wells[("ops", "A1", 0)]
    latest = {f["field"]: f["counts"] for f in frames}  # field 1's second version replaced its first
    assert well["frames"] == 2
    assert well["counts"]["live"] == sum(c["live"] for c in latest.values())
