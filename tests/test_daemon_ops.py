"""Operating the daemon: the real `wellwatch run` process, signals, restarts, metrics, refusals."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wellwatch.harness import free_port
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

from .conftest import StreamRecorder, wait_ready

pytestmark = pytest.mark.integration

WELLWATCH = [sys.executable, "-m", "wellwatch"]


def plate(**kw) -> SimulationSpec:
    base = dict(wells=("A1", "A2", "A3"), fields=2, timepoints=2, size=128, cells_per_field=6,
                channels=("BF",), plate_name="ops", seed=9, write_mode="rename")
    base.update(kw)
    return SimulationSpec(**base)


def write_config(tmp_path: Path, **extra: str) -> Path:
    pub, snap, metrics = free_port(), free_port(), free_port()
    (tmp_path / "acq" / "data").mkdir(parents=True, exist_ok=True)
    lines = {
        "watch": {"root": '"acq/data"', "settle_s": "0.1"},
        "plate": {"fields_per_well": "2", "name": '"ops"'},
        "publish": {"endpoint": f'"tcp://127.0.0.1:{pub}"', "snapshot_endpoint": f'"tcp://127.0.0.1:{snap}"'},
        "metrics": {"port": str(metrics)},
        "journal": {"path": '"journal.sqlite"'},
    }
    for dotted, value in extra.items():
        section, key = dotted.rsplit(".", 1)
        lines.setdefault(section, {})[key] = value
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) for s, kv in lines.items())
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    return path


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(WELLWATCH + ["run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_rows(journal: Path, n: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        if journal.exists():
            try:
                with sqlite3.connect(journal) as db:
                    rows = db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
            except sqlite3.OperationalError:  # the daemon is still creating the schema
                rows = 0
            if rows >= n:
                return rows
        time.sleep(0.1)
    return rows


def config_of(path: Path):
    from wellwatch.core.config import load_config

    return load_config(path)


def test_sigterm_drains_and_a_restart_neither_repeats_nor_skips(tmp_path):
    spec = plate()
    cfg_path = write_config(tmp_path)
    config = config_of(cfg_path)
    write_plate(spec, tmp_path / "acq")  # present before start
    proc = start(cfg_path)
    try:
        assert wait_rows(Path(config.journal.path), 12) == 12
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "provider=CPUExecutionProvider" in out and "stopped after seq" in out
    with sqlite3.connect(config.journal.path) as db:
        first_run_seq = db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]

    # a second plate arrives while the daemon is down; the restart takes only the new frames
    write_plate(plate(wells=("B1",), seed=10), tmp_path / "acq")
    proc = start(cfg_path)
    try:
        wait_ready(config)
        rec = StreamRecorder(config)
        rec.start()
        assert wait_rows(Path(config.journal.path), 16) == 16
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    with sqlite3.connect(config.journal.path) as db:
        paths = [r[0] for r in db.execute("SELECT path FROM frames")]
        seqs = [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
        second_run_frames = [r[0] for r in db.execute(
            "SELECT topic FROM outbox WHERE seq > ? AND topic LIKE 'frame/%'", (first_run_seq,))]
        unsent = db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone()[0]
    assert len(paths) == len(set(paths)) == 16
    assert seqs == list(range(1, len(seqs) + 1))  # seq continued across the restart, no gap, no reuse
    assert second_run_frames == ["frame/ops/B1"] * 4  # only the frames written while it was down
    assert unsent == 0  # everything journaled was published before the clean stop
    assert rec.snapshots and rec.snapshots[0]["seq"] > first_run_seq - 1  # it served the first run's state too
    assert {w["well"] for w in rec.state.wells.values()} == {"A1", "A2", "A3", "B1"}


def test_metrics_pass_promtool_and_report_provider(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it)")
    cfg_path = write_config(tmp_path)
    config = config_of(cfg_path)
    write_plate(plate(), tmp_path / "acq")
    proc = start(cfg_path)
    try:
        assert wait_rows(Path(config.journal.path), 12) == 12
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{config.metrics.port}/metrics", timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert 'wellwatch_frames_total{outcome="processed"} 12.0' in text
    assert 'wellwatch_execution_provider{provider="CPUExecutionProvider",slot="live_dead"} 1.0' in text
    assert 'wellwatch_stage_seconds_count{stage="infer"}' in text
    assert "wellwatch_model_info{" in text and 'name="demo-live-dead"' in text


@pytest.mark.parametrize("key,value,expected", [
    ("batching.max_batch", "0", "batching.max_batch"),
    ("watch.naming", '"scanr2"', "watch.naming"),
    ("watch.root", '"does/not/exist"', "watch.root"),
    ("models.live_dead.path", '"missing.onnx"', "missing.onnx"),
    ("inference.require_gpu", "true", "inference.require_gpu"),
])
def test_startup_errors_are_one_line_naming_the_key(tmp_path, key, value, expected):
    cfg_path = write_config(tmp_path, **{key: value})
    if key == "inference.require_gpu" and "CUDAExecutionProvider" in _cuda_really_available():
        pytest.skip("a GPU is really available here")
    proc = subprocess.run(WELLWATCH + ["run", "--config", str(cfg_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _cuda_really_available() -> str:
    import onnxruntime as ort

    from wellwatch.core.bundled_models import bundled_demo_model

    ort.set_default_logger_severity(4)
    s = ort.InferenceSession(str(bundled_demo_model()), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return s.get_providers()[0]


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg_path = write_config(tmp_path, **{"publish.endpoint": f'"tcp://127.0.0.1:{port}"'})
        proc = subprocess.run(WELLWATCH + ["run", "--config", str(cfg_path)], capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 2
    assert f"publish.endpoint tcp://127.0.0.1:{port}: cannot bind" in proc.stderr


def test_model_without_contract_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from wellwatch.core.bundled_models import bundled_demo_model

    proto = onnx.load(str(bundled_demo_model()))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    cfg_path = write_config(tmp_path, **{"models.live_dead.path": f'"{bare}"'})
    proc = subprocess.run(WELLWATCH + ["run", "--config", str(cfg_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"model {bare}: has no wellwatch model contract" in proc.stderr
