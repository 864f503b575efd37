"""The daemon end to end: simulated scanR plates in, per-well counts out over ZeroMQ.

Real parts throughout: TIFF files written the way microscopes write them, watchdog, SQLite,
ZeroMQ on 127.0.0.1, the bundled demo ONNX model.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import numpy as np
import pytest
import zmq

from wellwatch.client import request_snapshot
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

pytestmark = pytest.mark.integration


def small_plate(**kw) -> SimulationSpec:
    base = dict(wells=("A1", "A6", "A12", "B1"), fields=2, timepoints=2, size=256, cells_per_field=12,
                channels=("BF", "PI"), treatment="dose_series", plate_name="p1", seed=5)
    base.update(kw)
    return SimulationSpec(**base)


def frames_of(spec: SimulationSpec) -> int:
    return len(spec.wells) * spec.fields * spec.timepoints


def journal_rows(config) -> list[tuple]:
    with sqlite3.connect(config.journal.path) as db:
        return db.execute("SELECT path, sha256, state, live, dead, empty FROM frames").fetchall()


def test_plate_written_at_steady_rate_gives_frame_and_well_messages(run_daemon, recorder_for, tmp_path):
    spec = small_plate(write_mode="chunked", interval_s=0.02, chunk_pause_s=0.005)
    config, _ = run_daemon(spec)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(frames_of(spec))
    time.sleep(0.3)
    wells = rec.of_type("well")

    # every frame message names its file and has a well update with the same (plate, well, timepoint)
    assert sorted(m["path"] for m in frames) == sorted(p.name for p in (tmp_path / "acquisition" / "data").glob("*BF.tif"))
    for f in frames:
        assert {"schema", "seq", "type", "plate", "well", "timepoint", "models", "latency_s"} <= f.keys()
        assert f["models"] == {"demo-live-dead": f["models"]["demo-live-dead"]} and len(f["models"]["demo-live-dead"]) == 64
        assert any(w["seq"] == f["seq"] + 1 and (w["well"], w["timepoint"]) == (f["well"], f["timepoint"]) for w in wells)
    seqs = [m["seq"] for m in rec.updates]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # chunked writes with pauses: nothing was read early (journaled hash = the finished file's hash)
    for path, sha, state, *_ in journal_rows(config):
        assert state == "done"
        assert hashlib.sha256((tmp_path / "acquisition" / "data" / path).read_bytes()).hexdigest() == sha

    # the final well messages sum their fields, and are complete
    final = rec.state.wells
    assert len(final) == len(spec.wells) * spec.timepoints
    for (plate, well, t), m in final.items():
        per_field = [f for f in frames if (f["well"], f["timepoint"]) == (well, t)]
        assert m["frames"] == spec.fields == m["fields_expected"] and m["complete"] is True
        for key in ("live", "dead", "empty"):
            assert m["counts"][key] == sum(f["counts"][key] for f in per_field)


def test_preallocated_files_filled_in_place_are_never_read_early(run_daemon, recorder_for, tmp_path):
    """Zeros to the final size, then header, IFD and pixels in place: the structure is valid long
    before the pixels are, so only the settle time may release these files."""
    spec = small_plate(wells=("A1", "A2"), fields=2, timepoints=1, write_mode="preallocate", chunk_pause_s=0.03)
    # a settle time well above the writer's pauses even when CI's load stalls it (0.1 s was not)
    config, _ = run_daemon(spec, **{"watch.settle_s": 0.5})
    assert config.watch.completeness == "structure"
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(frames_of(spec))
    rows = journal_rows(config)
    assert len(rows) == frames_of(spec)
    for path, sha, state, *_ in rows:
        assert state == "done"
        assert hashlib.sha256((tmp_path / "acquisition" / "data" / path).read_bytes()).hexdigest() == sha


def test_live_fraction_tracks_ground_truth(run_daemon, recorder_for, tmp_path):
    spec = small_plate(wells=("A1", "A4", "A8", "A12"), size=512, cells_per_field=40, timepoints=3, seed=11,
                       write_mode="rename")
    config, _ = run_daemon(spec)
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    rec.wait_frames(frames_of(spec))
    time.sleep(0.3)
    truth = {(w["well"], w["timepoint"]): w["live_fraction"]
             for w in json.loads((tmp_path / "acquisition" / "ground_truth.json").read_text())["wells"]}
    errors = np.array([m["live_fraction"] - truth[(k[1], k[2])] for k, m in rec.state.wells.items()])
    # the dose series spans live fractions from ~0.95 to ~0.1: tracking must hold across it
    assert np.ptp(list(truth.values())) > 0.5
    assert np.abs(errors).mean() < 0.06, errors
    assert np.abs(errors).max() < 0.15, errors


def test_frames_present_before_start_are_processed_once(run_daemon, recorder_for, tmp_path):
    spec = small_plate()
    write_plate(spec, tmp_path / "acquisition")
    config, running = run_daemon(spec)
    rec = recorder_for(config)
    time.sleep(0.5)
    rows = journal_rows(config)
    deadline = time.monotonic() + 30
    while len(rows) < frames_of(spec) and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = journal_rows(config)
    assert len(rows) == frames_of(spec) and {r[2] for r in rows} == {"done"}
    # the journal holds the hash of each complete file: what was counted is what was written
    for path, sha, *_ in rows:
        assert hashlib.sha256((tmp_path / "acquisition" / "data" / path).read_bytes()).hexdigest() == sha
    time.sleep(0.3)  # the last messages sent
    # a snapshot holds each well's latest timepoint; all of them on request by range
    every = request_snapshot(zmq.Context.instance(), config.publish.snapshot_endpoint,
                             timepoints=(0, spec.timepoints - 1))
    assert sum(m["frames"] for m in every["wells"]) == frames_of(spec)


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_burst_of_renamed_files_is_all_found(run_daemon, recorder_for, tmp_path, observer):
    spec = small_plate(wells=tuple(f"{r}{c}" for r in "AB" for c in range(1, 13)), fields=3, timepoints=2,
                       size=64, cells_per_field=2, channels=("BF",), write_mode="rename")
    config, running = run_daemon(spec, **{"watch.observer": observer, "watch.reconcile_s": 60.0})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(frames_of(spec))
    assert len({m["path"] for m in frames}) == len(frames) == frames_of(spec)
    # temp name then rename: what was read is the finished file, never the .part
    for path, sha, state, *_ in journal_rows(config):
        assert not path.endswith(".part") and state == "done"
        assert hashlib.sha256((tmp_path / "acquisition" / "data" / path).read_bytes()).hexdigest() == sha


def test_late_subscriber_ends_with_the_publishers_state(run_daemon, recorder_for, tmp_path):
    spec = small_plate(timepoints=3, interval_s=0.01)
    config, _ = run_daemon(spec)
    early = recorder_for(config)
    write_plate(spec.__class__(**{**spec.to_json(), "timepoints": 1}), tmp_path / "acquisition")
    early.wait_frames(frames_of(spec) // 3)
    late = recorder_for(config)  # joins mid-plate: snapshot, then newer updates only
    assert late.snapshots[0]["seq"] > 0 and late.snapshots[0]["wells"]
    write_plate(spec, tmp_path / "acquisition")  # rewrites t0 identically (duplicates), adds t1, t2
    early.wait_frames(frames_of(spec))
    time.sleep(0.5)
    assert late.state.wells == early.state.wells
    assert late.state.seq == early.state.seq


def test_subscribe_command_prints_snapshot_then_updates(run_daemon, recorder_for, tmp_path):
    import subprocess
    import sys

    spec = small_plate(wells=("A1",), timepoints=1, interval_s=0.05)
    config, _ = run_daemon(spec)
    recorder_for(config)  # the daemon is up
    proc = subprocess.Popen([sys.executable, "-m", "wellwatch", "subscribe", config.publish.endpoint,
                             "--snapshot", config.publish.snapshot_endpoint, "--count", "4", "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the snapshot: the subscriber is connected before frames arrive
    write_plate(spec, tmp_path / "acquisition")
    out, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in (first + out).splitlines()]
    assert proc.returncode == 0, err
    assert lines[0]["type"] == "snapshot" and "seq" in lines[0]
    assert [m["type"] for m in lines[1:]] == ["frame", "well", "frame", "well"]
    assert all(m["seq"] > lines[0]["seq"] for m in lines[1:])
    assert lines[1]["topic"] == "frame/p1/A1" and lines[2]["topic"] == "well/p1/A1"


def test_curve_encrypted_stream_admits_only_allowed_clients(run_daemon, tmp_path):
    import zmq
    import zmq.auth

    from wellwatch.client import CurveKeys, follow, request_snapshot

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    zmq.auth.create_certificates(keys, "server")
    client_public, _ = zmq.auth.create_certificates(keys, "client")
    zmq.auth.create_certificates(keys, "stranger")
    (allowed / "client.key").write_bytes(open(client_public, "rb").read())
    spec = small_plate(wells=("A1",), timepoints=1)
    config, _ = run_daemon(spec, **{"publish.curve_secret_key": str(keys / "server.key_secret"),
                                    "publish.curve_allowed_clients": str(allowed)})
    good = CurveKeys(str(keys / "server.key"), str(keys / "client.key_secret"))
    stranger = CurveKeys(str(keys / "server.key"), str(keys / "stranger.key_secret"))
    context = zmq.Context.instance()
    time.sleep(1.0)
    assert request_snapshot(context, config.publish.snapshot_endpoint, timeout_s=5, curve=good)["type"] == "snapshot"
    for curve in (stranger, None):
        try:
            request_snapshot(context, config.publish.snapshot_endpoint, timeout_s=1.5, curve=curve)
            raise AssertionError(f"a client with {curve} got a snapshot")
        except TimeoutError:
            pass
    stream = follow(config.publish.endpoint, config.publish.snapshot_endpoint, curve=good, timeout_s=20)
    assert next(stream)[0] == "snapshot"
    write_plate(spec, tmp_path / "acquisition")
    kind, message, _ = next(stream)
    assert kind == "update" and message["type"] in ("frame", "well")


class SlowBackend:
    """The demo model behind a slow inference call: frames stay in flight across reconcile scans."""

    def __init__(self, seconds: float):
        from wellwatch.core.inference.backend import OnnxBackend
        from wellwatch.core.bundled_models import bundled_demo_model

        self.inner = OnnxBackend(bundled_demo_model(), device="cpu", warmup=False)
        self.path, self.contract, self.sha256, self.provider = (self.inner.path, self.inner.contract,
                                                                self.inner.sha256, self.inner.provider)
        self.seconds = seconds

    def infer(self, batch):
        time.sleep(self.seconds)
        return self.inner.infer(batch)


def _plate_through_a_slow_model(tmp_path, spec, overrides: dict, samples: dict) -> dict:
    """Write `spec`'s plate under a daemon whose model takes 0.3 s per batch; -> the registry's
    values of `samples` {key: (metric name, labels)} once every frame was published."""
    from tests.conftest import StreamRecorder
    from wellwatch.harness import local_config, start_daemon

    config = local_config(tmp_path, spec, **overrides)
    running = start_daemon(config, backend=SlowBackend(0.3))
    try:
        rec = StreamRecorder(config)
        rec.start()
        assert rec.connected.wait(15)
        write_plate(spec, tmp_path / "acquisition")
        rec.wait_frames(frames_of(spec), timeout=120)
        registry = running.daemon.registry
        return {k: registry.get_sample_value(name, labels) for k, (name, labels) in samples.items()}
    finally:
        assert running.stop() == 0


def test_reconcile_scans_do_not_hand_out_frames_already_in_flight(tmp_path):
    """Scans find files that events already delivered; a frame still on its way must not be read
    and scored a second time (it would be caught as a duplicate at commit, after costing a model run)."""
    spec = small_plate()
    got = _plate_through_a_slow_model(tmp_path, spec, {"watch.reconcile_s": 0.2, "batching.max_batch": 4},
                                      {"reads": ("wellwatch_stage_seconds_count", {"stage": "read"}),
                                       "duplicates": ("wellwatch_frames_total", {"outcome": "duplicate"})})
    assert got["reads"] == frames_of(spec) and (got["duplicates"] or 0) == 0


def test_frames_prepared_during_a_long_batch_share_the_next_batch(tmp_path):
    """While a batch runs, frames pile up prepared; they must be pooled into the next batches, not
    run one frame per batch because each is already overdue when admitted (it cost ResNet-18 30%)."""
    spec = small_plate(channels=("BF",))  # 16 frames written at once
    batches = _plate_through_a_slow_model(tmp_path, spec, {"batching.max_delay_ms": 5.0},
                                          {"n": ("wellwatch_batch_size_patches_count", {})})["n"]
    assert batches <= frames_of(spec) // 3, f"{batches} batches for {frames_of(spec)} frames"
