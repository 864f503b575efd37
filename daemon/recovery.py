"""Start-up after a stop or a crash: everything the daemon holds in memory comes from the journal.

The ledger (what is done), the per-well aggregates, the last seq, the snapshot state the
publisher serves and the messages committed but not yet sent. Nothing half-done survives a
crash: the journal writes results and their messages in one transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from wellwatch.core.aggregate import PlateAggregate
from wellwatch.daemon.journal import Journal, OutboxMessage
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.core.stream_schema import replaces, snapshot_key

log = logging.getLogger(__name__)

ND2_FRAME = re.compile(r"\.nd2#\d+$", re.IGNORECASE)


@dataclass
class Recovered:
    seq: int                      # the last seq handed out; the next message gets seq + 1
    last_sent: int                # the last seq the publisher sent
    snapshot_state: list[dict] = field(default_factory=list)  # the latest sent well message per well
    unsent: list[OutboxMessage] = field(default_factory=list)  # committed, to be (re)sent
    # (rel path, size, mtime_ns) -> (daemon deaths while it was being read with others, alone)
    suspects: dict[tuple[str, int, int], tuple[int, int]] = field(default_factory=dict)
    nd2_frames: set[str] = field(default_factory=set)  # "file.nd2#index" already journaled
    frames_counted: int = 0       # scored frames already done (their channel is known to be there)


def recover(journal_path: Path, ledger: FrameLedger, aggregate: PlateAggregate) -> Recovered:
    """Fill `ledger` and `aggregate` from the journal; return the rest of the state to resume."""
    journal = Journal(journal_path)  # SQLite connections stay in their thread: this one is for start-up
    try:
        n = counted = 0
        state_nd2: set[str] = set()
        for r in journal.records():
            ledger.remember(r.path, r.size, r.mtime_ns, r.sha256)
            ledger.remember_field_file(r)
            if r.state == "done" and r.channel is not None and r.live is not None:  # not a joined channel file
                aggregate.add(r.plate, r.well, r.timepoint, r.field, r.counts(), z=r.z or 0)
                counted += 1
            if ND2_FRAME.search(r.path):
                state_nd2.add(r.path)
            n += 1
        state = Recovered(journal.last_seq(), journal.last_sent_seq(), nd2_frames=state_nd2, frames_counted=counted)
        if n:
            log.info("journal %s: %d frames already recorded; last seq %d", journal_path, n, state.seq)
        if stale := journal.clear_inflight():
            log.info("%d files were on their way in at the last stop; the start-up scan finds them again", stale)
        state.suspects = journal.suspects()
        if state.suspects:
            log.warning("%d file(s) were being read when the daemon died; each is read first in an isolated "
                        "process, and quarantined only if it kills that reader or exceeds its limits",
                        len(state.suspects))
        latest: dict[tuple, dict] = {}  # the snapshot's state: one message per well, however long the run
        for message in journal.sent_payloads("well/"):
            if (key := snapshot_key(message)) is not None and replaces(message, latest.get(key)):
                latest[key] = message
        state.snapshot_state = list(latest.values())
        state.unsent = journal.unsent()
        return state
    finally:
        journal.close()
