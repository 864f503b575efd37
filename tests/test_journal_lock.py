"""One journal, one writer: a second daemon on the same journal.path is refused at start-up; a
holder killed with SIGKILL never blocks the next start; read-only readers stay allowed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wellwatch.daemon.journal_lock import JournalInUseError, JournalLock, lock_path_for
from wellwatch.daemon.service import Daemon
from wellwatch.results.tables import write_results
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec

from .conftest import wait_ready
from .test_daemon_ops import WELLWATCH, write_config

pytestmark = pytest.mark.integration

HOLD = """
import sys, time
from wellwatch.daemon.journal_lock import JournalLock
lock = JournalLock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def hold_in_child(journal: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(journal)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_is_refused_naming_the_holder(tmp_path):
    journal = tmp_path / "journal.sqlite"
    child = hold_in_child(journal)
    try:
        with pytest.raises(JournalInUseError) as refused:
            JournalLock(journal)
        message = str(refused.value)
        assert f"pid {child.pid}" in message and socket.gethostname() in message and "since 20" in message
        assert str(journal) in message
    finally:
        child.kill()
        child.wait()


def test_a_holder_killed_with_sigkill_does_not_block_the_next_start(tmp_path):
    journal = tmp_path / "journal.sqlite"
    child = hold_in_child(journal)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert lock_path_for(journal).exists()  # the stale file stays; the kernel dropped the lock
    lock = JournalLock(journal)
    assert lock.held
    lock.release()
    JournalLock(journal).release()  # released: taken again at once


def test_second_daemon_on_the_same_journal_is_refused_and_readers_stay_allowed(tmp_path):
    spec = SimulationSpec(wells=("A1",), fields=1, timepoints=1, size=128, cells_per_field=4, channels=("BF",),
                          plate_name="lock", seed=3)
    first = local_config(tmp_path, spec)
    running = start_daemon(first)
    try:
        wait_ready(first)
        # another config: its own ports, the same journal
        second = local_config(tmp_path, spec)
        assert second.publish.endpoint != first.publish.endpoint
        assert second.journal.path == first.journal.path
        with pytest.raises(JournalInUseError, match=f"pid {os.getpid()}"):
            Daemon(second)
        # the refused daemon left its ports free and the first one running
        assert running.thread.is_alive()
        out, wells_out, n_frames, _ = write_results(Path(first.journal.path), tmp_path / "r.csv")
        assert out.is_file() and wells_out.is_file() and n_frames == 0
    finally:
        assert running.stop() == 0
    Daemon(first).journal_lock.release()  # the first one stopped: its lock went with it


def test_wellwatch_run_twice_on_one_journal_exits_2_with_one_line(tmp_path):
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    shared_journal = f'"{tmp_path / "journal.sqlite"}"'
    first_config = write_config(first_dir, **{"journal.path": shared_journal, "metrics.port": "0"})
    second_config = write_config(second_dir, **{"journal.path": shared_journal, "metrics.port": "0"})
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        first = subprocess.Popen(WELLWATCH + ["run", "--config", str(first_config)], stdout=log,
                                 stderr=subprocess.STDOUT)
    second = None
    try:
        deadline = time.monotonic() + 60
        while "watching" not in first_log.read_text():  # the first daemon is up and counting
            assert time.monotonic() < deadline and first.poll() is None, first_log.read_text()
            time.sleep(0.1)
        second = subprocess.Popen(WELLWATCH + ["run", "--config", str(second_config)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("a second daemon started on the journal of a running one")
        assert second.returncode == 2, err
        lines = [line for line in err.splitlines() if "journal" in line]
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "Traceback" not in err
        assert first.poll() is None  # the first daemon is untouched
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.wait()
        first.send_signal(signal.SIGTERM)
        first.wait(60)
