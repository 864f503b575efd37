"""The completeness gate: a file is offered for reading only once it is complete.

A file is ready when its size and mtime have been the same for `settle_polls` consecutive polls.
A rename destination is ready at once: writers rename only finished files. With a `prove`
function (watch.completeness = "structure": core/files/tiff_complete.py), a file is also ready at once
when its structure proves it complete at its first look or at a look that found it grown: an
appending writer's last byte has landed, or a finished file was moved in from another folder
(inotify reports that as a creation, not a rename). A file seen at a constant size is never
accepted by structure: a pre-allocated file being filled in place looks complete, so it waits for
the settle time like any file that cannot prove itself. A zero-length file is
usually a writer that has opened but not yet written: it is held back for `empty_polls` polls,
then released so the reader can call it empty and, after retries, quarantine it. A settled file
whose structure is all there but whose last strip still ends in zeros (`zero_tail`: pre-allocated,
and the writer stalled half-way on a slow share) keeps waiting while it stays so, up to
`zero_tail_max_wait_s`; then it is released with a warning (a truly dark last row).
Either way the reader must still parse the whole file; a parse failure is retried, then quarantined.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class _Candidate:
    size: int = -1
    mtime_ns: int = -1
    stable: int = 0
    renamed: bool = False
    provable: bool = True  # False: never accepted by structure (a file that may hold several pages)
    zero_since: float | None = None  # when it was first found settled with its last strip all zero
    meta: Any = None  # what the caller knows of the file (its parsed name), handed back when ready


@dataclass(frozen=True)
class ReadyFile:
    path: str
    size: int
    mtime_ns: int
    meta: Any = None


class CompletenessGate:
    def __init__(self, settle_polls: int, empty_polls: int | None = None,
                 prove: Callable[[str], bool] | None = None, zero_tail: Callable[[str], bool] | None = None,
                 zero_tail_max_wait_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.settle_polls = settle_polls
        self.prove = prove
        self.zero_tail, self.zero_tail_max_wait_s, self._clock = zero_tail, zero_tail_max_wait_s, clock
        self.empty_polls = empty_polls if empty_polls is not None else 10 * settle_polls
        self.candidates: dict[str, _Candidate] = {}

    def offer(self, path: str, renamed: bool = False, provable: bool = True, meta: Any = None) -> None:
        c = self.candidates.setdefault(path, _Candidate(meta=meta))
        c.renamed = c.renamed or renamed
        c.provable = c.provable and provable

    def __len__(self) -> int:
        return len(self.candidates)

    def poll(self) -> list[ReadyFile]:
        ready = []
        for path, c in list(self.candidates.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del self.candidates[path]  # a temp file renamed away, or deleted: nothing to read
                continue
            except OSError:
                continue  # share hiccup: keep the candidate, try next poll
            new_or_grown = st.st_size > c.size  # c.size is -1 at the first look
            if (st.st_size, st.st_mtime_ns) == (c.size, c.mtime_ns):
                c.stable += 1
            else:
                c.size, c.mtime_ns, c.stable, c.zero_since = st.st_size, st.st_mtime_ns, 0, None
            needed = self.settle_polls if st.st_size > 0 else self.empty_polls
            proven = (self.prove is not None and c.provable and new_or_grown and st.st_size > 0 and self.prove(path))
            if (c.renamed and st.st_size > 0) or proven or (c.stable >= needed and not self._zero_tail_wait(path, c)):
                del self.candidates[path]
                ready.append(ReadyFile(path, st.st_size, st.st_mtime_ns, c.meta))
        return ready

    def _zero_tail_wait(self, path: str, c: _Candidate) -> bool:
        """True while a settled file's last strip is still all zero, up to zero_tail_max_wait_s."""
        if self.zero_tail is None or self.zero_tail_max_wait_s <= 0 or not self.zero_tail(path):
            return False
        now = self._clock()
        if c.zero_since is None:
            c.zero_since = now
        waited = now - c.zero_since
        if waited < self.zero_tail_max_wait_s:
            return True
        log.warning("%s: its last strip is still all zero after %.0f s unchanged (watch.zero_tail_max_wait_s); "
                    "read as it is (a dark last row, or a writer that stopped)", path, waited)
        return False
