"""Worker processes end when the daemon ends, however it ends (kill -9 of its pid alone included).

A spawned pool worker blocks on its call queue, whose write end it holds itself, so it never sees
its parent go, and the resource tracker lives on as long as any worker does. Each worker gets the
read end of a pipe whose only write end stays in the daemon (`lifeline()`); a thread in the worker
(`hold`) waits on it: the kernel closes the write end when the daemon dies, and the worker exits
at once. The same thread also checks the parent pid each second, as a fallback.

Not prctl(PR_SET_PDEATHSIG): Linux sends that signal when the *thread* that started the worker
ends, and pools start workers from short-lived threads (a broken pool's manager thread starts
its replacement's), which would kill healthy workers mid-frame.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection

_lock = threading.Lock()
_ends: tuple[int, Connection, Connection] | None = None  # (owner pid, read end, write end)


def lifeline() -> Connection:
    """The read end to hand to a worker (pickled into it at spawn; the write end never leaves)."""
    global _ends
    with _lock:
        if _ends is None or _ends[0] != os.getpid():
            reader, writer = multiprocessing.Pipe(duplex=False)
            _ends = (os.getpid(), reader, writer)
        return _ends[1]


def hold(line: Connection) -> None:
    """In a worker's initializer: exit as soon as the daemon is gone. Ctrl-C in a terminal reaches
    the whole process group: the daemon stops its workers itself, after draining."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            try:
                if line.poll(1.0):  # readable only at EOF: nothing is ever sent
                    line.recv_bytes()
            except (EOFError, OSError):
                break
        os._exit(0)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
