"""A suspect file is read once more in an isolated child process before the daemon reads it.

A suspect is a file that was being read when the daemon died (kill -9, the OOM killer, a crash in
native code). Counting deaths cannot tell a file that kills its reader from an operator who
killed the daemon twice, so the verdict comes from a fresh interpreter that reads the file the
way the daemon does (`reader.decode_frame`, or `multichannel_tiff.decode_channels`), under an
address-space ceiling of `limits.read_memory_mb` above what it holds before the read and a time
limit. Only a child that dies of a signal (a crash in native code, the OOM killer), runs out of
that memory or out of time is the file's fault: it is quarantined. A file that reads in the child,
or fails there the ordinary way (a damaged TIFF, a decompression bomb refused from its header),
goes to the readers as usual.

The child exits when the daemon dies, however it dies: it watches its stdin, a pipe only the
daemon holds open.

    python -m wellwatch.daemon.suspect_read PATH LIMITS_JSON frame|channels   (what the daemon runs)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.multichannel_tiff import decode_channels
from wellwatch.core.files.tiff import FrameLimits, check_file_size, decode_frame

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # a read of a frame within limits takes well under a second
OUT_OF_MEMORY = 3  # the child's exit code when the read went past limits.read_memory_mb


def verdict(path: str, limits: FrameLimits, channels: bool = False, timeout_s: float = TIMEOUT_S,
            on_start=lambda proc: None) -> str | None:
    """Read `path` in a child process: None when it is safe to read in the daemon, else why it is not."""
    cmd = [sys.executable, "-m", "wellwatch.daemon.suspect_read", path,
           json.dumps(dataclasses.asdict(limits)), "channels" if channels else "frame"]
    with tempfile.TemporaryFile() as err:
        # stdin stays open until the child ends: its end of the pipe is how it sees the daemon die
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        on_start(proc)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return f"reading it in an isolated process took longer than {timeout_s:g} s"
        finally:
            proc.stdin.close()
        err.seek(0)
        message = err.read()[-2000:]
    if code == 0:
        return None
    if code == OUT_OF_MEMORY:
        return f"reading it in an isolated process needs more than limits.read_memory_mb = {limits.read_memory_mb:g} MB"
    if code < 0:
        return f"it killed its reader in an isolated process ({signal.Signals(-code).name})"
    # any other exit is the check's own failure (its interpreter, its imports), no verdict on the file
    last = message.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    log.warning("%s: the isolated read could not run (exit code %d: %s); the file is read as usual",
                path, code, last[0][:200])
    return None


class SuspectReads:
    """One suspect at a time, off the gate's thread; the gate collects the verdicts each poll."""

    def __init__(self, limits: FrameLimits, timeout_s: float = TIMEOUT_S):
        self.limits, self.timeout_s = limits, timeout_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="suspect")
        self._lock = threading.Lock()
        self._done: list[tuple[object, str | None]] = []
        self._child: subprocess.Popen | None = None

    def submit(self, job, channels: bool) -> Future:
        return self._pool.submit(self._check, job, channels)

    def _check(self, job, channels: bool) -> None:
        reason = verdict(job.path, self.limits, channels, self.timeout_s, on_start=self._started)
        with self._lock:
            self._child = None
            self._done.append((job, reason))

    def _started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._child = proc

    def take_done(self) -> list[tuple[object, str | None]]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        """At shutdown: stop a check in progress (the scan offers the file again at the next start)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.kill()


# --- the child ------------------------------------------------------------------------------------

def _exit_when_the_daemon_dies() -> None:
    def watch() -> None:
        while os.read(0, 4096):  # the raw fd: a buffered stdin would hold its lock at exit
            pass
        os._exit(1)  # EOF: the daemon closed the pipe or died

    threading.Thread(target=watch, daemon=True).start()


def _limit_memory(extra_mb: float) -> None:
    import resource

    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    ceiling = vm_kb * 1024 + int(extra_mb * 1e6)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))


def _child(path: str, limits_json: str, mode: str) -> int:
    _exit_when_the_daemon_dies()
    limits = FrameLimits(**json.loads(limits_json))
    try:
        check_file_size(path, os.stat(path).st_size, limits)
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, FrameReadError):
        return 0  # gone or too big: the daemon's reader says so the ordinary way
    if sys.platform.startswith("linux"):
        _limit_memory(limits.read_memory_mb)
    try:
        decode_channels(path, data) if mode == "channels" else decode_frame(path, data, limits)
    except MemoryError:
        return OUT_OF_MEMORY
    except FrameReadError as e:  # decode_frame turns every parse error into one, MemoryError included
        return OUT_OF_MEMORY if isinstance(e.__context__, MemoryError) else 0
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
