"""One journal, one writer: an OS lock on a sidecar file beside the journal.

Two daemons writing one journal collide on its seq and frame versions (the second numbers from
what the first has not committed yet). `fcntl.flock` on `<journal>.lock` is held for the daemon's
life; the kernel releases it however the process ends (kill -9 included), so a dead holder never
blocks the next start. The file also says who holds it (pid, host, since), for the refusal message.
Read-only readers (dashboard, results, history) open the journal itself read-only and never take it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from wellwatch.core.errors import StartupError

log = logging.getLogger(__name__)


class JournalInUseError(StartupError):
    """Another live process holds the journal's writer lock."""

    def __init__(self, journal: Path, holder: dict):
        self.journal, self.holder = journal, holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
               if holder else "holder unknown")
        super().__init__(f"journal.path {journal}: in use by another wellwatch daemon ({who}); "
                         "stop that daemon, or give this one its own journal.path")


def lock_path_for(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


class JournalLock:
    """Held from construction until `release()` (or the process's end)."""

    def __init__(self, journal: str | Path):
        self.journal = Path(journal)
        self.path = lock_path_for(self.journal)
        if not self.journal.parent.is_dir():
            raise StartupError(f"journal.path {self.journal}: folder {self.journal.parent} does not exist")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StartupError(f"journal.path {self.journal}: cannot open its lock file {self.path} "
                               f"({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise JournalInUseError(self.journal, holder) from None
        self._fd: int | None = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        log.debug("journal %s: writer lock held (%s)", self.journal, self.path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
