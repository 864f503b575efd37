"""What the stage threads share, passed to each stage as one object instead of a dozen arguments."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from wellwatch.core.config import Config
from wellwatch.core.files.nd2 import Nd2Tracker
from wellwatch.daemon.channel_join import ChannelJoin
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.daemon.metrics import DaemonMetrics


class Stopping:
    """The stop flag every loop watches, and the error that stopped the daemon, if one did."""

    def __init__(self):
        self.event = threading.Event()
        self.fatal: BaseException | None = None

    def request(self) -> None:
        self.event.set()

    def fail(self, error: BaseException) -> None:
        """A bug in a stage: stop the daemon with it (the entry point decides to exit)."""
        self.fatal = error
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass(frozen=True)
class StageContext:
    """config and metrics; root: watch.root, resolved (journaled paths are relative to it); ledger:
    which files are done or on their way; join: a field's channel files waiting for each other (None:
    one file per frame); nd2: the .nd2 files' frames; stopping: the stop flag and its reason."""
    config: Config
    root: str
    metrics: DaemonMetrics
    ledger: FrameLedger
    nd2: Nd2Tracker
    join: ChannelJoin | None = None
    stopping: Stopping = field(default_factory=Stopping)
