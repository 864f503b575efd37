"""The completeness gate: a file is offered for reading only once it has stopped changing.

A file is ready when its size and mtime have been the same for `settle_polls` consecutive polls.
A rename destination is ready at once: writers rename only finished files. A zero-length file is
usually a writer that has opened but not yet written: it is held back for `empty_polls` polls,
then released so the reader can call it empty and, after retries, quarantine it.
Either way the reader must still parse the whole file; a parse failure is retried, then quarantined.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class _Candidate:
    size: int = -1
    mtime_ns: int = -1
    stable: int = 0
    renamed: bool = False


@dataclass(frozen=True)
class ReadyFile:
    path: str
    size: int
    mtime_ns: int


class CompletenessGate:
    def __init__(self, settle_polls: int, empty_polls: int | None = None):
        self.settle_polls = settle_polls
        self.empty_polls = empty_polls if empty_polls is not None else 10 * settle_polls
        self.candidates: dict[str, _Candidate] = {}

    def offer(self, path: str, renamed: bool = False) -> None:
        c = self.candidates.setdefault(path, _Candidate())
        c.renamed = c.renamed or renamed

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
            if (st.st_size, st.st_mtime_ns) == (c.size, c.mtime_ns):
                c.stable += 1
            else:
                c.size, c.mtime_ns, c.stable = st.st_size, st.st_mtime_ns, 0
            needed = self.settle_polls if st.st_size > 0 else self.empty_polls
            if (c.renamed and st.st_size > 0) or c.stable >= needed:
                del self.candidates[path]
                ready.append(ReadyFile(path, st.st_size, st.st_mtime_ns))
        return ready
