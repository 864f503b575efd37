"""Join a field's channel images into the model's input channels.

A multi-channel model (DIC + phase contrast, bright field + a marker...) needs every one of its
channels from the same field (plate, well, timepoint, field, z). Microscopes write them as separate
files, one after another, or as one multi-channel frame (ND2, multi-page TIFF). `ChannelJoin` holds
each field's images until all the model's channels are there, then hands them over in the model's
order. A field still short of a channel `missing_after_s` after its first channel arrived is
reported once (the caller logs it, counts it, and publishes a status message); if the channel turns
up later the field is completed then. Nothing is dropped without a report. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
FieldKey = tuple  # (plate, well, timepoint, field, z)


@dataclass
class PendingField(Generic[T]):
    key: FieldKey
    first_seen: float
    parts: dict[str, T] = field(default_factory=dict)
    reported: bool = False


@dataclass(frozen=True)
class MissingChannels:
    key: FieldKey
    present: tuple[str, ...]
    missing: tuple[str, ...]
    waited_s: float


class ChannelJoin(Generic[T]):
    def __init__(self, channels: tuple[str, ...], missing_after_s: float, clock=time.monotonic):
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct and non-empty, got {channels!r}")
        self.channels = channels
        self.missing_after_s = missing_after_s
        self._clock = clock
        self._pending: dict[FieldKey, PendingField[T]] = {}
        self._lock = threading.Lock()

    def add(self, key: FieldKey, channel: str, part: T) -> list[T] | None:
        """Record one channel of a field; return all its parts in the model's order once complete."""
        if channel not in self.channels:
            raise ValueError(f"channel {channel!r} is not one of the model's {self.channels}")
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = PendingField(key, self._clock())
            pending.parts[channel] = part  # a re-written channel file replaces its earlier image
            if len(pending.parts) < len(self.channels):
                return None
            del self._pending[key]
            return [pending.parts[c] for c in self.channels]

    def waiting_for(self, key: FieldKey) -> tuple[str, ...]:
        """The channels a pending field still lacks; () when no part of it is waiting."""
        with self._lock:
            pending = self._pending.get(key)
            return () if pending is None else tuple(c for c in self.channels if c not in pending.parts)

    def overdue(self) -> list[MissingChannels]:
        """Fields waiting longer than missing_after_s for a channel, each reported once."""
        now = self._clock()
        out = []
        with self._lock:
            for p in self._pending.values():
                if not p.reported and now - p.first_seen >= self.missing_after_s:
                    p.reported = True
                    out.append(MissingChannels(p.key, tuple(c for c in self.channels if c in p.parts),
                                               tuple(c for c in self.channels if c not in p.parts),
                                               now - p.first_seen))
        return out

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_parts(self) -> list[Any]:
        with self._lock:
            return [part for p in self._pending.values() for part in p.parts.values()]
