"""Preparation in worker processes over shared memory (pipeline.prepare_workers): the same tiles as in
the read threads, buffers given back, bad frames refused, and a killed worker loses no frame and
counts none twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.errors import FrameReadError
from wellwatch.daemon.preparation_processes import PreparePool, WorkerDied
from wellwatch.core.preprocess import prepare_tiles
from wellwatch.core.files.tiff import FrameLimits, decode_frame
from wellwatch.core.bundled_models import bundled_demo_model
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import tiff_bytes, write_plate


def plate(**kw) -> SimulationSpec:
    base = dict(wells=("A1", "A6", "B2"), fields=2, timepoints=2, size=256, cells_per_field=12,
                channels=("BF",), treatment="dose_series", plate_name="p1", seed=7, write_mode="rename")
    base.update(kw)
    return SimulationSpec(**base)


@pytest.fixture(scope="module")
def contract():
    return OnnxBackend(bundled_demo_model(), "cpu", warmup=False).contract


@pytest.fixture
def pool(contract):
    p = PreparePool(1, contract, FrameLimits(), slots=2)
    yield p
    p.shutdown()


@pytest.mark.unit
def test_processes_prepare_exactly_the_tiles_of_the_read_threads_and_give_buffers_back(pool, contract):
    for size in (256, 384, 256):  # the second frame is bigger: its buffer grows
        image = next(iter_fields(plate(size=size))).images["BF"]
        tiles, origins, empty = pool.prepare("f.tif", tiff_bytes(image))
        patches, origins2, empty2 = prepare_tiles([decode_frame("f.tif", tiff_bytes(image))], contract)
        np.testing.assert_array_equal(origins, origins2)
        np.testing.assert_array_equal(empty, empty2)
        np.testing.assert_array_equal(tiles.to_array(), patches)
        assert pool.buffers.in_use == 1
        tiles.release()
        assert pool.buffers.in_use == 0


@pytest.mark.unit
def test_a_damaged_file_is_refused_with_its_reason_and_its_buffer_given_back(pool):
    with pytest.raises(FrameReadError, match="bad.tif: TIFF has no pages"):
        pool.prepare("bad.tif", b"II*\x00" + b"\x00" * 100)
    assert pool.buffers.in_use == 0


@pytest.mark.unit
def test_all_buffers_in_use_gives_none_so_the_caller_prepares_the_frame_itself(pool):
    image = tiff_bytes(next(iter_fields(plate())).images["BF"])
    held = [pool.prepare("f.tif", image)[0] for _ in range(2)]  # both slots
    assert pool.prepare("f.tif", image) is None and pool.buffers.in_use == 2
    held[0].release()
    assert pool.prepare("f.tif", image) is not None


@pytest.mark.unit
def test_a_killed_worker_fails_only_its_frame_with_worker_died_and_the_pool_is_replaced(pool):
    image = tiff_bytes(next(iter_fields(plate())).images["BF"])
    os.kill(pool.pids()[0], signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(WorkerDied):
        pool.prepare("f.tif", image)
    assert pool.rebuilds == 1 and pool.buffers.in_use == 0
    tiles, _, _ = pool.prepare("f.tif", image)  # the new pool works
    assert len(tiles) > 0


def frame_rows(config) -> list[tuple]:
    with sqlite3.connect(config.journal.path) as db:
        return db.execute("SELECT path, state, live, dead, empty FROM frames ORDER BY path").fetchall()


def wait_done(config, n: int, timeout: float = 60) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = frame_rows(config)
        if sum(r[1] == "done" for r in rows) >= n:
            return rows
        time.sleep(0.05)
    return frame_rows(config)


def in_threads(spec: SimulationSpec, folder) -> list[tuple]:
    """The journal rows of the plate prepared in the read threads (prepare_workers = 0)."""
    from wellwatch.harness import local_config, start_daemon

    folder.mkdir()
    config = local_config(folder, spec, **{"pipeline.prepare_workers": 0})
    daemon = start_daemon(config)
    try:
        write_plate(spec, folder / "acquisition")
        return wait_done(config, len(spec.wells) * spec.fields * spec.timepoints)
    finally:
        daemon.stop()


@pytest.mark.integration
def test_daemon_with_prepare_processes_counts_as_in_threads_and_survives_killed_workers(run_daemon, tmp_path):
    """Workers are SIGKILLed while frames arrive: every frame is journaled once, done, with the
    counts the in-thread daemon gives; the frames the dead workers held were retried."""
    spec = plate(interval_s=0.02)
    n = len(spec.wells) * spec.fields * spec.timepoints
    reference = in_threads(spec, tmp_path / "threads")
    assert len(reference) == n

    config, daemon = run_daemon(spec, **{"pipeline.prepare_workers": 1, "pipeline.retry_delay_s": 0.05})
    reader = daemon.daemon.pipeline.reader
    writer = threading.Thread(target=write_plate, args=(spec, tmp_path / "acquisition"))
    writer.start()
    killed: set[int] = set()
    while writer.is_alive() and len(killed) < 3:  # kill each new worker once, mid-plate
        time.sleep(0.05)
        for pid in set(reader.worker_pids().values()) - killed:
            killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # already gone
                pass
    writer.join()
    rows = wait_done(config, n)
    registry = daemon.daemon.registry
    died = registry.get_sample_value("wellwatch_frames_total", {"outcome": "worker_died"})
    rebuilds = registry.get_sample_value("wellwatch_prepare_pool_rebuilds_total")
    assert killed and died >= 1 and rebuilds >= 1
    assert len(rows) == n == len({r[0] for r in rows})  # each frame journaled once
    assert rows == reference  # all done, with the same live/dead/empty counts as in the threads


@pytest.mark.integration
def test_frames_beyond_the_shared_buffers_are_prepared_in_the_threads_with_the_same_counts(run_daemon, tmp_path):
    spec = plate()
    n = len(spec.wells) * spec.fields * spec.timepoints
    reference = in_threads(spec, tmp_path / "threads")
    # queue_size 2 -> 2 shared buffers for a burst of 12 frames: most find them busy
    config, daemon = run_daemon(spec, **{"pipeline.prepare_workers": 1, "pipeline.queue_size": 2,
                                         "batching.max_delay_ms": 200.0})
    write_plate(spec, tmp_path / "acquisition")
    assert wait_done(config, n) == reference
    assert daemon.daemon.pipeline.reader.prepare_pool.buffers.in_use == 0  # all given back


@pytest.mark.unit
def test_shared_memory_too_short_sends_the_frame_to_the_thread_with_one_warning(pool, monkeypatch, caplog):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    image = tiff_bytes(next(iter_fields(plate())).images["BF"])
    assert pool.prepare("f.tif", image) is None and pool.prepare("f.tif", image) is None
    assert pool.buffers.in_use == 0
    warnings = [r.message for r in caplog.records if "shared memory" in r.getMessage()]
    assert len(warnings) == 1 and "is /dev/shm too small?" in caplog.text
