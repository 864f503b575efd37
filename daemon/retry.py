"""Frames to try again later: the read stage adds them, the gate hands out the due ones."""

from __future__ import annotations

import threading

from wellwatch.daemon.messages import FrameFile


class RetrySchedule:
    """Thread-safe: read workers add, the gate thread takes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._due: list[tuple[float, FrameFile]] = []

    def add(self, at: float, file: FrameFile) -> None:
        with self._lock:
            self._due.append((at, file))

    def take_due(self, now: float) -> list[FrameFile]:
        with self._lock:
            due = [f for t, f in self._due if t <= now]
            self._due = [(t, f) for t, f in self._due if t > now]
        return due
