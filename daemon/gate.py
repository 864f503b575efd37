"""The completeness gate: a file is offered for reading only once it has stopped changing.

A file is ready when its size and mtime have been the same for `settle_polls` consecutive polls
(and it is not empty). A rename destination is ready at once: writers rename only finished files.
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
    def __init__(self, settle_polls: int):
        self.settle_polls = settle_polls
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
            if st.st_size > 0 and (c.renamed or c.stable >= self.settle_polls):
                del self.candidates[path]
                ready.append(ReadyFile(path, st.st_size, st.st_mtime_ns))
        return ready
