"""Shared fixtures: a daemon running in-process on loopback ports against a temp folder."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import zmq

from wellwatch.client import follow, request_snapshot
from wellwatch.harness import local_config, start_daemon

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KINDS = ("unit", "integration")


def pytest_collection_modifyitems(config, items):
    """Every test says its kind: unit (functions on arrays, files and a SQLite file, in one process) or
    integration (a running daemon, hub or dashboard, sockets, subprocesses, a browser, Prometheus, Ray)."""
    unmarked = [item.nodeid for item in items
                if sum(1 for kind in KINDS if item.get_closest_marker(kind)) != 1]
    if unmarked:
        raise pytest.UsageError("tests marked neither unit nor integration (or both): " + ", ".join(unmarked[:10])
                                + (f" and {len(unmarked) - 10} more" if len(unmarked) > 10 else ""))


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def wait_answering(snapshot_endpoint: str, timeout: float = 30) -> None:
    """Block until a daemon or hub answers snapshot requests there (a process under load, or one
    importing from a fresh environment, may take seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request_snapshot(zmq.Context.instance(), snapshot_endpoint, timeout_s=1)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def wait_ready(config, timeout: float = 30) -> None:
    """Block until the daemon answers snapshot requests."""
    wait_answering(config.publish.snapshot_endpoint, timeout)


class StreamRecorder(threading.Thread):
    """A full subscriber (snapshot first, then updates) that keeps everything it receives."""

    def __init__(self, config):
        super().__init__(daemon=True)
        self.config = config
        self.updates: list[dict] = []
        self.snapshots: list[dict] = []
        self.state = None
        self.connected = threading.Event()

    def run(self) -> None:
        for kind, message, state in follow(self.config.publish.endpoint, self.config.publish.snapshot_endpoint,
                                           timeout_s=60):
            self.state = state
            (self.snapshots if kind == "snapshot" else self.updates).append(message)
            self.connected.set()

    def of_type(self, type_: str) -> list[dict]:
        return [m for m in self.updates if m["type"] == type_]

    def wait_frames(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.of_type("frame")) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        frames = self.of_type("frame")
        assert len(frames) >= n, f"only {len(frames)} of {n} frame messages within {timeout} s"
        return frames


@pytest.fixture
def run_daemon(tmp_path):
    """Start daemons on a simulated plate's folder; all are stopped at the end of the test."""
    running = []

    def start(spec, segmentation_backend=None, cell_type_backend=None, cell_live_dead_backend=None, **overrides):
        config = local_config(tmp_path, spec, **overrides)
        daemon = start_daemon(config, segmentation_backend=segmentation_backend, cell_type_backend=cell_type_backend,
                              cell_live_dead_backend=cell_live_dead_backend)
        running.append(daemon)
        return config, daemon

    yield start
    for d in running:
        d.stop()


@pytest.fixture
def recorder_for():
    recorders = []

    def make(config) -> StreamRecorder:
        r = StreamRecorder(config)
        r.start()
        assert r.connected.wait(15), "no snapshot from the daemon"
        recorders.append(r)
        return r

    return make


def daemon_frames(config, files: list[Path], n: int) -> list[dict]:
    """The daemon's frame messages once `files` are renamed into its watched folder, whole, one by one."""
    daemon = start_daemon(config)
    try:
        rec = StreamRecorder(config)
        rec.start()
        assert rec.connected.wait(30)
        data = Path(config.watch.root)
        for src in files:
            shutil.copy(src, data / (src.name + ".part"))
            (data / (src.name + ".part")).rename(data / src.name)
        return rec.wait_frames(n, timeout=240)
    finally:
        assert daemon.stop() == 0
