"""The facility hub with real daemons: three simulated plates, one subscriber, ZeroMQ on 127.0.0.1.

Two daemons run in-process; the third runs as its own `wellwatch run` process so it can be killed
with SIGKILL mid-plate and started again on the same journal and ports.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from wellwatch.client import StreamState, follow, request_snapshot
from wellwatch.core.errors import ConfigError
from wellwatch.harness import free_port, local_config, start_daemon
from wellwatch.scale.hub import Hub, merge_snapshots
from wellwatch.scale.hub_config import hub_config_from
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

from .conftest import wait_answering, wait_ready


def plate(name: str, seed: int) -> SimulationSpec:
    return SimulationSpec(wells=("A1", "B2"), fields=2, timepoints=2, size=256, cells_per_field=12,
                          channels=("BF",), treatment="dose_series", plate_name=name, seed=seed)


def staged(spec: SimulationSpec, staging: Path) -> dict[int, list[Path]]:
    """The plate's frames written aside, by timepoint, to be renamed into place like a scanR does."""
    write_plate(spec, staging)
    by_t: dict[int, list[Path]] = {}
    for p in sorted((staging / "data").glob("*.tif")):
        by_t.setdefault(int(p.name.split("--T")[1][:5]), []).append(p)
    return by_t


def move_in(files: list[Path], data: Path) -> None:
    for p in files:
        os.rename(p, data / p.name)


def journal_done(path: str) -> int:
    if not Path(path).exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM frames WHERE state = 'done'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def outbox_seqs(path: str) -> list[int]:
    with sqlite3.connect(path) as db:
        return [s for (s,) in db.execute("SELECT seq FROM outbox ORDER BY seq")]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def config_toml(config, source: str) -> str:
    """The same settings as a config.toml, for a daemon in its own process."""
    c = config
    return f"""
[watch]
root = "{c.watch.root}"
naming = "scanr"
settle_s = 0.1
reconcile_s = 1.0
[plate]
format = 96
name = "{c.plate.name}"
fields_per_well = {c.plate.fields_per_well}
[channels]
label_free = ["BF"]
[inference]
device = "cpu"
[publish]
endpoint = "{c.publish.endpoint}"
snapshot_endpoint = "{c.publish.snapshot_endpoint}"
source = "{source}"
[metrics]
port = 0
[journal]
path = "{c.journal.path}"
"""


class Recorder(threading.Thread):
    def __init__(self, endpoint: str, snapshot_endpoint: str):
        super().__init__(daemon=True)
        self.endpoint, self.snapshot_endpoint = endpoint, snapshot_endpoint
        self.snapshots: list[dict] = []
        self.updates: list[dict] = []
        self.state: StreamState | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        for kind, message, state in follow(self.endpoint, self.snapshot_endpoint, timeout_s=90):
            self.state = state
            (self.snapshots if kind == "snapshot" else self.updates).append(message)
            self.connected.set()


def well_view(wells) -> dict:
    return {(w["source"], w["plate"], w["well"], w["timepoint"]): (w["seq"], w["frames"], w["counts"])
            for w in wells}


class ScopesBehindHub:
    """Three daemons behind one hub: scope-a and scope-b in this process, scope-c a `wellwatch run`
    process a test can kill (SIGKILL) and start again on the same journal and ports."""

    def __init__(self, tmp_path: Path, specs: dict):
        self.configs, self.frames_by_t = {}, {}
        for source, spec in specs.items():
            self.configs[source] = local_config(tmp_path / source, spec, **{"publish.source": source,
                                                                           "watch.reconcile_s": 1.0})
            self.frames_by_t[source] = staged(spec, tmp_path / f"{source}-staging")
        self.running = [start_daemon(self.configs[s]) for s in ("scope-a", "scope-b")]
        c_toml = tmp_path / "scope-c.toml"
        c_toml.write_text(config_toml(self.configs["scope-c"], "scope-c"))
        self.cmd = [sys.executable, "-m", "wellwatch", "run", "--config", str(c_toml)]
        self.log_c = open(tmp_path / "scope-c.log", "w")
        self.hub = None
        self.start_c()

    def start_c(self) -> None:
        self.proc_c = subprocess.Popen(self.cmd, stdout=self.log_c, stderr=subprocess.STDOUT)

    def kill_c(self) -> None:
        self.proc_c.send_signal(signal.SIGKILL)
        self.proc_c.wait(10)

    def follow_hub(self) -> "Recorder":
        """Start the hub once every daemon is up, and a subscriber following it from its snapshot."""
        for config in self.configs.values():
            wait_ready(config, timeout=60)
        hub_port, hub_snap = free_port(), free_port()
        self.hub = Hub(hub_config_from({
            "hub": {"endpoint": f"tcp://127.0.0.1:{hub_port}", "snapshot_endpoint": f"tcp://127.0.0.1:{hub_snap}"},
            "daemons": [{"endpoint": c.publish.endpoint, "snapshot_endpoint": c.publish.snapshot_endpoint}
                        for c in self.configs.values()]}))
        self.hub.start()
        rec = Recorder(f"tcp://127.0.0.1:{hub_port}", f"tcp://127.0.0.1:{hub_snap}")
        rec.start()
        assert rec.connected.wait(20), "no snapshot from the hub"
        return rec

    def stop(self) -> None:
        for d in self.running:
            d.stop()
        self.proc_c.send_signal(signal.SIGTERM)
        self.proc_c.wait(30)
        self.log_c.close()

    def stop_hub(self) -> None:
        if self.hub is not None:
            self.hub.stop()


@pytest.mark.integration
def test_three_daemons_behind_a_hub_one_killed_and_restarted(tmp_path):
    specs = {f"scope-{k}": plate(f"plate-{k}", seed) for k, seed in (("a", 1), ("b", 2), ("c", 3))}
    scopes = ScopesBehindHub(tmp_path, specs)
    configs, frames_by_t = scopes.configs, scopes.frames_by_t
    try:
        rec = scopes.follow_hub()
        first = rec.snapshots[0]
        assert set(first["seqs"]) == set(specs) and first["unreachable"] == []

        for source in specs:  # timepoint 0 of every plate
            move_in(frames_by_t[source][0], Path(configs[source].watch.root))
        wait_for(lambda: journal_done(configs["scope-c"].journal.path) == 4, 60, "scope-c's timepoint 0")
        # timepoint 1 starts landing, scope-c is killed mid-stream (SIGKILL), the rest lands while it is
        # down, then it starts again on the same journal and ports
        for source in specs:
            move_in(frames_by_t[source][1][:2], Path(configs[source].watch.root))
        time.sleep(0.1)
        scopes.kill_c()
        for source in specs:
            move_in(frames_by_t[source][1][2:], Path(configs[source].watch.root))
        seqs_before_restart = outbox_seqs(configs["scope-c"].journal.path)
        scopes.start_c()

        # everything arrives: 12 (plate, well, timepoint) states, each with both fields
        def complete() -> bool:
            return (rec.state is not None and len(rec.state.wells) == 12
                    and all(w["frames"] == 2 for w in rec.state.wells.values()))
        wait_for(complete, 90, "all three plates complete at the subscriber")
        for config in configs.values():
            wait_for(lambda: not [s for s in outbox_seqs(config.journal.path) if s > rec.state.seqs.get(
                config.publish.source, 0)], 30, "the subscriber to catch up")
    finally:
        scopes.stop()

    # every message of all three daemons reached the one subscriber, or is covered by a snapshot it
    # took on seeing a gap: a daemon starting again publishes at once, before the hub's XSUB has
    # reconnected (ZeroMQ's slow joiner), so its first messages may be dropped; the subscriber sees
    # the gap in that source's seq and re-takes the state (Clone pattern); the journal keeps them all
    healing = rec.snapshots[1:]
    assert rec.state.gaps == len(healing)
    for source, config in configs.items():
        expected = {s for s in outbox_seqs(config.journal.path) if s > first["seqs"][source]}
        got = {m["seq"] for m in rec.updates if m["source"] == source}
        assert got <= expected
        covered = max((snap["seqs"].get(source, 0) for snap in healing), default=0)
        assert all(s <= covered for s in expected - got), (source, sorted(expected - got), covered)
    if rec.state.gaps == 0:  # the usual case for the daemons that were not restarted: nothing lost at all
        assert len(rec.updates) == sum(len({s for s in outbox_seqs(c.journal.path) if s > first["seqs"][src]})
                                       for src, c in configs.items())

    # the killed daemon: every frame journaled once, seq continued (never reused) across the restart
    journal_c = configs["scope-c"].journal.path
    with sqlite3.connect(journal_c) as db:
        paths = [p for (p,) in db.execute("SELECT path FROM frames WHERE state = 'done'")]
    assert sorted(paths) == sorted(p.name for t in (0, 1) for p in frames_by_t["scope-c"][t])
    after = outbox_seqs(journal_c)
    assert after[:len(seqs_before_restart)] == seqs_before_restart and after == sorted(set(after))
    assert after == list(range(1, len(after) + 1))

    # the merged snapshot is the union of the daemons' own snapshots, and the subscriber's state
    # (taken now from the journals, since the daemons are stopped: restart-free check of the union)
    assert scopes.hub.snapshots_served >= 1
    union = {}
    for source, config in configs.items():
        with sqlite3.connect(config.journal.path) as db:
            for (payload,) in db.execute("SELECT payload FROM outbox WHERE topic LIKE 'well/%' ORDER BY seq"):
                m = json.loads(payload)
                union[(source, m["plate"], m["well"], m["timepoint"])] = (m["seq"], m["frames"], m["counts"])
    assert well_view(rec.state.wells.values()) == union
    scopes.stop_hub()


def full_view(wells) -> dict:
    return {(w["source"], w["plate"], w["well"], w["timepoint"]): (w["seq"], w["frames"], w["complete"], w["counts"])
            for w in wells}


def daemon_state(journal_path: str) -> dict:
    """A daemon's own state: its latest well message per (plate, well, timepoint), from its journal."""
    from wellwatch.results.journal_reader import well_history

    return full_view(well_history(journal_path))


@pytest.mark.integration
def test_a_daemon_down_for_several_timepoints_comes_back_whole_at_the_subscriber(tmp_path):
    """Three daemons behind the hub; scope-c is killed (SIGKILL) after timepoint 0 and stays down
    while timepoints 1-3 land; it restarts and catches up on them at once, before the hub's XSUB has
    reconnected, so its first messages may be lost: the subscriber's gap heals with every well state
    changed since the seq it held. Its final state equals each daemon's own, nothing missing."""
    timepoints = 5
    specs = {f"scope-{k}": SimulationSpec(wells=("A1", "A2", "A3"), fields=1, timepoints=timepoints, size=128,
                                          cells_per_field=6, channels=("BF",), plate_name=f"plate-{k}", seed=seed)
             for k, seed in (("a", 11), ("b", 12), ("c", 13))}
    scopes = ScopesBehindHub(tmp_path, specs)
    configs, frames_by_t = scopes.configs, scopes.frames_by_t
    try:
        rec = scopes.follow_hub()
        for source in specs:
            move_in(frames_by_t[source][0], Path(configs[source].watch.root))
        wait_for(lambda: journal_done(configs["scope-c"].journal.path) == 3, 60, "scope-c's timepoint 0")
        scopes.kill_c()
        for t in range(1, timepoints - 1):  # the outage: three timepoints land on every plate
            for source in specs:
                move_in(frames_by_t[source][t], Path(configs[source].watch.root))
            for source in ("scope-a", "scope-b"):
                wait_for(lambda: journal_done(configs[source].journal.path) == 3 * (t + 1), 60, f"{source} t{t}")
        scopes.start_c()
        wait_for(lambda: journal_done(configs["scope-c"].journal.path) == 3 * (timepoints - 1), 90,
                 "scope-c catching up")
        for source in specs:
            move_in(frames_by_t[source][timepoints - 1], Path(configs[source].watch.root))
        for config in configs.values():
            wait_for(lambda: journal_done(config.journal.path) == 3 * timepoints, 60, "the last timepoint")
        own: dict = {}
        for config in configs.values():
            wait_for(lambda: rec.state is not None and not [s for s in outbox_seqs(config.journal.path)
                                                            if s > rec.state.seqs.get(config.publish.source, 0)],
                     30, "the subscriber to catch up")
            own.update(daemon_state(config.journal.path))
        held = full_view(rec.state.wells.values())
        assert len(own) == 3 * 3 * timepoints
        assert sorted(set(own) - set(held)) == [] and held == own
    finally:
        scopes.stop()
        scopes.stop_hub()


@pytest.mark.integration
def test_merged_snapshot_is_the_union_of_live_daemon_snapshots(tmp_path):
    specs = {f"scope-{k}": plate(f"plate-{k}", seed) for k, seed in (("a", 4), ("b", 5), ("c", 6))}
    configs = {s: local_config(tmp_path / s, spec, **{"publish.source": s}) for s, spec in specs.items()}
    running = [start_daemon(c) for c in configs.values()]
    for source, spec in specs.items():
        write_plate(spec, tmp_path / source / "acquisition")
    hub_snap = free_port()
    hub = Hub(hub_config_from({
        "hub": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "snapshot_endpoint": f"tcp://127.0.0.1:{hub_snap}"},
        "daemons": [{"endpoint": c.publish.endpoint, "snapshot_endpoint": c.publish.snapshot_endpoint}
                    for c in configs.values()]}))
    hub.start()
    try:
        for config in configs.values():
            wait_for(lambda: journal_done(config.journal.path) == 8, 60, "a plate")
        time.sleep(0.3)  # the last well messages leave the publisher
        ctx = zmq.Context.instance()
        own = [request_snapshot(ctx, c.publish.snapshot_endpoint) for c in configs.values()]
        merged = request_snapshot(ctx, f"tcp://127.0.0.1:{hub_snap}")
        assert merged["seqs"] == {s["source"]: s["seq"] for s in own}
        assert well_view(merged["wells"]) == well_view(w for s in own for w in s["wells"])
        assert len(merged["wells"]) == 3 * 2  # each daemon's snapshot: every well at its latest timepoint
        # older timepoints by range: the request is passed on, and the replies merged the same way
        own = [request_snapshot(ctx, c.publish.snapshot_endpoint, timepoints=(0, 1)) for c in configs.values()]
        merged = request_snapshot(ctx, f"tcp://127.0.0.1:{hub_snap}", timepoints=(0, 1))
        assert merged["timepoints"] == [0, 1] and len(merged["wells"]) == 3 * 2 * 2
        assert well_view(merged["wells"]) == well_view(w for s in own for w in s["wells"])
        bad = request_snapshot(ctx, f"tcp://127.0.0.1:{hub_snap}", timepoints=(3, 1))
        assert bad["type"] == "error" and "timepoints" in bad["error"]
        # a daemon that stops answering is named, and the others still come through
        running[0].stop()
        merged = request_snapshot(ctx, f"tcp://127.0.0.1:{hub_snap}", timeout_s=10)
        assert merged["unreachable"] == [configs["scope-a"].publish.snapshot_endpoint]
        assert set(merged["seqs"]) == {"scope-b", "scope-c"}
    finally:
        hub.stop()
        for d in running:
            d.stop()


@pytest.mark.unit
def test_merge_keeps_what_daemons_add_and_tags_items_with_their_source():
    a = {"schema": 1, "type": "snapshot", "source": "a", "seq": 7,
         "wells": [{"plate": "p", "well": "A1", "timepoint": 3, "seq": 7}], "older": [{"timepoint": 1}],
         "range": [1, 3]}
    b = {"schema": 1, "type": "snapshot", "seq": 2, "wells": []}  # a daemon from before `source`
    merged = merge_snapshots([("tcp://a:2", a), ("tcp://b:2", b)], ["tcp://c:2"])
    assert merged["seqs"] == {"a": 7, "tcp://b:2": 2}
    assert merged["wells"] == [{"plate": "p", "well": "A1", "timepoint": 3, "seq": 7, "source": "a"}]
    assert merged["older"] == [{"timepoint": 1, "source": "a"}] and merged["range"] == [1, 3]
    assert merged["unreachable"] == ["tcp://c:2"] and merged["sources"]["a"]["endpoint"] == "tcp://a:2"


@pytest.mark.unit
def test_stream_state_tracks_seq_per_source():
    state = StreamState()
    state.load_snapshot({"seqs": {"a": 5, "b": 100}, "wells": []})
    assert state.missing_before({"source": "a", "seq": 6}) == 0
    assert state.missing_before({"source": "b", "seq": 104}) == 3
    assert state.missing_before({"source": "new", "seq": 1}) is None
    assert state.apply({"source": "a", "seq": 6, "type": "frame"})
    assert not state.apply({"source": "a", "seq": 6, "type": "frame"})  # already applied
    assert state.apply({"source": "b", "seq": 101, "type": "frame"})    # b's seq is its own
    assert state.seqs == {"a": 6, "b": 101}


@pytest.mark.unit
@pytest.mark.parametrize("data, key", [
    ({"daemons": []}, "daemons"),
    ({"daemons": [{"endpoint": "127.0.0.1:5556"}]}, "daemons[0].endpoint"),
    ({"daemons": [{"endpoint": "tcp://h:5556", "port": 1}]}, "daemons[0].port"),
    ({"hub": {"snapshot_timeout_s": 0}, "daemons": [{"endpoint": "tcp://h:5556"}]}, "hub.snapshot_timeout_s"),
    ({"daemons": [{"endpoint": "tcp://h:5556"}, {"endpoint": "tcp://h:5556"}]}, "daemons.endpoint"),
    # the daemon's config refused a snapshot endpoint equal to the stream's; the hub's now does too
    ({"hub": {"endpoint": "tcp://127.0.0.1:5600", "snapshot_endpoint": "tcp://127.0.0.1:5600"},
      "daemons": [{"endpoint": "tcp://h:5556"}]}, "hub.snapshot_endpoint"),
    ({"daemons": [{"endpoint": "tcp://h:5556", "snapshot_endpoint": "tcp://h:5556"}]}, "daemons[0].snapshot_endpoint"),
])
def test_hub_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        hub_config_from(data)
    assert e.value.key == key


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["missing", "a folder", "not utf-8", "not toml"])
def test_hub_and_daemon_configs_that_cannot_be_read_say_so_alike(tmp_path, kind):
    """One reader for both files: the same key, and the same reason for the same fault."""
    from wellwatch.core.config import load_config
    from wellwatch.scale.hub_config import load_hub_config

    path = tmp_path / "settings.toml"
    if kind == "a folder":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"[hub]\nendpoint = '\xff\xfe'\n")
    elif kind == "not toml":
        path.write_text("[hub\n")
    errors = []
    for load in (load_hub_config, load_config):
        with pytest.raises(ConfigError) as e:
            load(path)
        errors.append(e.value)
    hub, daemon = errors
    assert hub.key == daemon.key == "--config" and hub.value == daemon.value == str(path)
    assert hub.allowed == daemon.allowed
    assert {"missing": "does not exist", "a folder": "is a folder", "not utf-8": "not UTF-8",
            "not toml": "not valid TOML"}[kind] in hub.allowed


@pytest.mark.integration
def test_hub_command_serves_subscribe_and_stops_on_sigterm(tmp_path):
    spec = plate("plate-x", 9)
    config = local_config(tmp_path / "x", spec, **{"publish.source": "scope-x"})
    daemon = start_daemon(config)
    hub_port = free_port()
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(f'[hub]\nendpoint = "tcp://127.0.0.1:{hub_port}"\n'
                        f'snapshot_endpoint = "tcp://127.0.0.1:{hub_port + 1}"\n'
                        f'[[daemons]]\nendpoint = "{config.publish.endpoint}"\n'
                        f'snapshot_endpoint = "{config.publish.snapshot_endpoint}"\n')
    hub = subprocess.Popen([sys.executable, "-m", "wellwatch", "hub", "--config", str(hub_toml)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sub = None
    try:
        wait_ready(config, timeout=60)
        # the hub is a second process; on a fresh environment its first imports compile for seconds,
        # longer than the subscriber's 5 s snapshot wait (a CI run lost the snapshot that way)
        wait_answering(f"tcp://127.0.0.1:{hub_port + 1}", timeout=60)
        sub = subprocess.Popen([sys.executable, "-m", "wellwatch", "subscribe", f"tcp://127.0.0.1:{hub_port}",
                                "--topic", "frame/", "--count", "8", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # the subscriber's snapshot before the plate starts (a late one would still be right)
        write_plate(spec, tmp_path / "x" / "acquisition")
        out, err = sub.communicate(timeout=90)
        lines = [json.loads(line) for line in out.splitlines()]
        frames = [m for m in lines if m.get("type") == "frame"]
        assert lines, f"subscribe printed nothing (exit {sub.returncode}): {err}"
        assert lines[0]["type"] == "snapshot" and lines[0]["seqs"].keys() == {"scope-x"}, err
        assert len(frames) == 8 and {m["source"] for m in frames} == {"scope-x"}
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
        hub.send_signal(signal.SIGTERM)
        hub_out = hub.communicate(timeout=30)[0]
        daemon.stop()
    assert hub.returncode == 0, hub_out


@pytest.mark.integration
def test_hub_command_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "hub.toml"
    bad.write_text('[[daemons]]\nendpoint = "scope-1:5556"\n')
    proc = subprocess.run([sys.executable, "-m", "wellwatch", "hub", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "daemons[0].endpoint" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.unit
def test_source_defaults_to_the_host_name(tmp_path):
    import socket

    from wellwatch.core.config import load_config

    assert load_config(None, {"watch.root": str(tmp_path)}).source == socket.gethostname()
    assert load_config(None, {"watch.root": str(tmp_path), "publish.source": "scanr-2"}).source == "scanr-2"
