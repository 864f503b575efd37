"""What a daemon death leaves behind. Suspect files (being read when it died) are judged
in an isolated reader, a joined-channel field with a suspect is not stalled, and no worker process
outlives the daemon, however it dies.

Real parts: `wellwatch run` processes, kill -9, a real SQLite journal, TIFF files, ZeroMQ on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from wellwatch.daemon.journal import Journal
from wellwatch.core.files.tiff import FrameLimits
from wellwatch.daemon.suspect_read import verdict
from wellwatch.simulator.hostile import tiff_bomb
from wellwatch.simulator.writer import write_plate

from .test_daemon_ops import WELLWATCH, plate, start, write_config
from .test_hardening import journal_states, quarantine_reasons


def seed_suspects(journal_path: Path, root: Path, names: list[str]) -> None:
    """What a kill -9 while `names` were in the readers leaves in the journal (the next start counts it)."""
    journal = Journal(journal_path)
    try:
        for name in names:
            st = (root / name).stat()
            journal.mark_inflight([(name, st.st_size, st.st_mtime_ns, "read")])
        journal.clear_inflight()
        assert len(journal.suspects()) == len(names)
    finally:
        journal.close()


def wait_states(journal: str, n: int, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while len(states := journal_states(journal)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return states


@pytest.mark.unit
def test_a_suspect_killed_in_its_isolated_reader_is_the_files_fault(tmp_path):
    good = tmp_path / "good.tif"
    write_plate(plate(wells=("A1",), fields=1, timepoints=1), tmp_path / "acq")
    shutil.copy(next((tmp_path / "acq" / "data").glob("*.tif")), good)
    assert verdict(str(good), FrameLimits()) is None
    # the reader process killed under it, as a crash in native code or the OOM killer would
    assert "killed its reader in an isolated process (SIGKILL)" in verdict(
        str(good), FrameLimits(), on_start=lambda proc: proc.kill())


@pytest.mark.integration
def test_a_suspect_that_needs_more_memory_than_its_reader_may_take_is_quarantined(run_daemon, tmp_path):
    spec = plate(wells=("A1", "A2"), fields=1, timepoints=1)
    write_plate(spec, tmp_path / "acquisition")
    root = tmp_path / "acquisition" / "data"
    bomb = "A3--W00003--P00001--Z00000--T00000--BF.tif"
    tiff_bomb(root / bomb, 60000, 60000)  # 7.2 GB declared, allowed by max_pixels below
    seed_suspects(tmp_path / "journal.sqlite", root, sorted(p.name for p in root.glob("*.tif")))
    config, _ = run_daemon(spec, **{"limits.max_pixels": 2**32, "limits.read_memory_mb": 300})
    states = wait_states(config.journal.path, 3, timeout=60)
    assert states == {**{p.name: "done" for p in root.glob("A[12]*.tif")}, bomb: "quarantined"}
    assert "limits.read_memory_mb = 300 MB" in quarantine_reasons(config.journal.path)[bomb]


@pytest.mark.integration
def test_suspect_in_a_joined_channel_field_does_not_stall_the_daemon(run_daemon, tmp_path):
    """Defect 1: segment_on a second channel; the daemon died while reading field 1's BF file, before
    its PI file was written. Restarted, it must count that field and every later one."""
    spec = plate(wells=("A1", "A2"), fields=1, timepoints=2, channels=("BF", "PI"))
    write_plate(spec, tmp_path / "staged")
    staged = sorted((tmp_path / "staged" / "data").glob("*.tif"))
    root = tmp_path / "acquisition" / "data"
    root.mkdir(parents=True)
    first_bf = next(p for p in staged if p.name.startswith("A1") and "T00000--BF" in p.name)
    shutil.copy2(first_bf, root / first_bf.name)
    seed_suspects(tmp_path / "journal.sqlite", root, [first_bf.name])
    config, _ = run_daemon(spec, **{"channels.segment_on": "PI", "segmentation.method": "classical",
                                    "segmentation.workers": 1, "segmentation.classical.min_area": 20,
                                    "segmentation.classical.downsample": 1})
    time.sleep(1.0)  # the suspect is checked and waits in the channel join
    for p in staged:
        if p.name != first_bf.name:
            shutil.copy2(p, root / p.name)
    states = wait_states(config.journal.path, len(staged), timeout=60)
    assert states == {p.name: "done" for p in staged}
    with sqlite3.connect(config.journal.path) as db:
        assert db.execute("SELECT COUNT(*) FROM suspects").fetchone()[0] == 0


# --- no orphans -------------------------------------------------------------------------------

def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (children, their children...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(pid)
        except OSError:
            pass
    return out


def wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = descendants(proc.pid)
        if len(kids) >= n:
            time.sleep(1.0)  # all workers up, the tracker too
            return descendants(proc.pid)
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} child processes within {timeout} s: {kids}")


# workers + the resource tracker; prepare workers run the tile path, segmentation workers classical
POOLS = {"prepare": ({"pipeline.prepare_workers": "2"}, 3),
         "segmentation": ({"segmentation.method": '"classical"', "segmentation.workers": "2"}, 3)}


@pytest.mark.integration
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_no_worker_outlives_a_kill_9_of_the_daemon_pid_alone(tmp_path, pool):
    extra, n = POOLS[pool]
    proc = start(write_config(tmp_path, **extra))
    kids: set[int] = set()
    try:
        kids = wait_for_children(proc, n)
        proc.send_signal(signal.SIGKILL)  # the daemon's pid only, not its process group
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(kids), f"still alive 5 s after the daemon died: {sorted(alive(kids))}"
    finally:  # without the fix they survive, reparented: kill them by pid, not as the daemon's children
        for pid in alive(kids | descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_ctrl_c_stops_the_daemon_cleanly_and_leaks_nothing(tmp_path, pool):
    """Ctrl-C in a terminal sends SIGINT to the whole process group, workers included: they must
    leave the stop to the daemon (no worker dying mid-drain, no pool rebuilt, nothing leaked)."""
    extra, n = POOLS[pool]
    proc = subprocess.Popen(WELLWATCH + ["run", "--config", str(write_config(tmp_path, **extra))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    kids = wait_for_children(proc, n)
    write_plate(plate(wells=("A1",), fields=2, timepoints=1), tmp_path / "acq")
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    for sign in ("Traceback", "KeyboardInterrupt", "worker died", "process died", "leaked"):
        assert sign not in out, out
    deadline = time.monotonic() + 5
    while alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(kids)


@pytest.mark.integration
def test_a_preallocated_file_stalled_half_way_is_read_once_whole(run_daemon, recorder_for, tmp_path):
    """Defect 6: a writer that creates the whole TIFF (header, IFD, zero pixels), fills it, and
    stalls 3 s half-way. The file must be read once, whole: one version, never a half-zero one."""
    spec = plate(wells=("A1",), fields=1, timepoints=1)
    write_plate(spec, tmp_path / "staged")
    (source,) = (tmp_path / "staged" / "data").glob("*.tif")
    data = source.read_bytes()
    config, _ = run_daemon(spec)
    rec = recorder_for(config)
    path = Path(config.watch.root) / source.name
    half = len(data) // 2
    with open(path, "wb") as f:
        f.write(b"\x00" * len(data))
        f.flush()
        f.seek(0)
        f.write(data[:half])  # header and IFD first, then half the pixels
        f.flush()
        time.sleep(3.0)  # a slow share
        f.write(data[half:])
    rec.wait_frames(1)
    time.sleep(1.0)  # a second, corrected version would follow within the settle time
    with sqlite3.connect(config.journal.path) as db:
        rows = db.execute("SELECT version, sha256 FROM frames").fetchall()
    assert rows == [(1, hashlib.sha256(data).hexdigest())]
    assert len(rec.of_type("frame")) == 1
