"""Pools patches from many frames into inference batches: flush at max_batch or max_delay.

Pure bookkeeping, no threads: the pipeline's inference loop drives it. A frame's patches may span
several batches; a frame is finished when all its patches have scores.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Pending:
    item: Any
    patches: np.ndarray
    t_added: float
    taken: int = 0
    scores: list[np.ndarray] = field(default_factory=list)
    scored: int = 0


class PatchBatcher:
    def __init__(self, max_batch: int, max_delay_s: float):
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queue: deque[_Pending] = deque()  # frames with patches not yet in a batch
        self._waiting = 0  # patches not yet in a batch

    @property
    def waiting_patches(self) -> int:
        return self._waiting

    def add(self, item: Any, patches: np.ndarray, now: float) -> list[tuple[Any, np.ndarray]]:
        """Queue a frame's patches. A frame with none is finished at once and returned."""
        if len(patches) == 0:
            if not isinstance(patches, np.ndarray):
                patches.release()
            return [(item, np.zeros((0, 0), np.float32))]
        self._queue.append(_Pending(item, patches, now))
        self._waiting += len(patches)
        return []

    def due(self, now: float) -> bool:
        if not self._queue:
            return False
        return self._waiting >= self.max_batch or now - self._queue[0].t_added >= self.max_delay_s

    def seconds_until_due(self, now: float) -> float | None:
        if not self._queue:
            return None
        return max(0.0, self._queue[0].t_added + self.max_delay_s - now)

    def next_batch(self) -> tuple[np.ndarray, list[tuple[_Pending, int]]]:
        """Take up to max_batch patches, oldest first. Returns the batch and who owns which rows.

        A frame's patches are an array or a lazy tile source (`preprocess.TileSet`: `gather` copies
        rows into the batch, `release` once all are taken); either way each row is copied once."""
        spans, n = [], 0
        while self._queue and n < self.max_batch:
            p = self._queue[0]
            take = min(len(p.patches) - p.taken, self.max_batch - n)
            spans.append((p, p.taken, take))
            p.taken += take
            n += take
            if p.taken == len(p.patches):
                self._queue.popleft()
        self._waiting -= n
        first = spans[0][0].patches
        if len(spans) == 1 and isinstance(first, np.ndarray):
            p, start, take = spans[0]
            return first[start:start + take], [(p, take)]  # a view: no copy at all
        batch = np.empty((n, *first.shape[1:]), np.float32 if not isinstance(first, np.ndarray) else first.dtype)
        row = 0
        for p, start, take in spans:
            if isinstance(p.patches, np.ndarray):
                batch[row:row + take] = p.patches[start:start + take]
            else:
                p.patches.gather(start, start + take, batch[row:row + take])
                if p.taken == len(p.patches):
                    p.patches.release()
            row += take
        return batch, [(p, take) for p, _, take in spans]

    @staticmethod
    def distribute(scores: np.ndarray, owners: list[tuple[_Pending, int]]) -> list[tuple[Any, np.ndarray]]:
        """Hand a batch's scores back to their frames; return the frames now fully scored."""
        finished, offset = [], 0
        for p, n in owners:
            p.scores.append(scores[offset:offset + n])
            p.scored += n
            offset += n
            if p.scored == len(p.patches):
                finished.append((p.item, np.concatenate(p.scores)))
        return finished
