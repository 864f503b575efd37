"""The training tools' one progress style.

`[task] message` lines on stderr. A running line (`update`) is rewritten in place on a terminal
and printed at most every `every_s` seconds elsewhere (a log file gets a readable trail, not a
flood); `line` always prints. Turned off, lines go to the log at INFO and running lines nowhere.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, task: str, enabled: bool = True, every_s: float = 5.0, stream=None):
        self.task, self.enabled, self.every_s = task, enabled, every_s
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self._open = False  # a running line is on screen, not yet ended
        self._last = float("-inf")

    def update(self, message: str) -> None:
        """A running line: how far a long step is."""
        if not self.enabled:
            return
        if self.live:
            print(f"\r[{self.task}] {message}\x1b[K", end="", file=self.stream, flush=True)
            self._open = True
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(f"[{self.task}] {message}", file=self.stream, flush=True)

    def line(self, message: str) -> None:
        """A lasting line: a result, a finished stage."""
        if not self.enabled:
            log.info("[%s] %s", self.task, message)
            return
        print(f"{chr(13) if self._open else ''}[{self.task}] {message}" + ("\x1b[K" if self._open else ""),
              file=self.stream, flush=True)
        self._open = False

    def __call__(self, message: str) -> None:  # usable where a callback of one string is expected
        self.line(message)
