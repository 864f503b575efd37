"""What the daemon is doing, said aloud: why files are not becoming counted frames, and progress.

The stages call small hooks (a file ignored, a frame committed); a thread of this module turns
them, at most every few seconds, into a log line, a `status/` message and metrics:

- `status/nothing_counted`: files arrived, nothing is on its way to be counted, and none became a
  counted frame for `report.nothing_counted_s` seconds. It names what was seen (the channels in
  the file names, names the preset does not match, quarantine reasons, frames smaller than one
  tile) and what the configuration expects. `resolved` follows when frames are counted again.
- `status/progress`: every `report.progress_s` seconds while frames are counted: how many, the
  last well and field, file-to-count latency of live frames, and the backlog (files that were
  already there when the daemon started, counted apart so their age is not read as latency).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from wellwatch.daemon.messages import FailedFrame, ScoredFrame, StatusEvent
from wellwatch.core.scoring import FrameOutputs
from wellwatch.daemon.metrics import DaemonMetrics

log = logging.getLogger(__name__)

_EXAMPLES = 3      # example names kept per reason
_TICK_S = 0.25     # how often the reporting thread looks


@dataclass(frozen=True)
class Expectations:
    """What the configuration expects of the files: named in every "nothing counted" message."""
    channels: tuple[str, ...]        # the file channels a field needs (channels.label_free, segment_on)
    naming: str                      # watch.naming
    tile_size: int | None            # the live/dead model's tile edge (None: no tiling)
    model: str


class Diagnostics:
    """Thread-safe: hooks are called from the gate and commit threads, `tick` from its own thread."""

    def __init__(self, expects: Expectations, metrics: DaemonMetrics, emit: Callable[[StatusEvent], None],
                 in_flight: Callable[[], int], nothing_counted_s: float = 5.0, progress_s: float = 10.0,
                 repeat_s: float = 60.0, started_at: float | None = None, counted_before: int = 0):
        self.expects, self.metrics, self.emit, self.in_flight = expects, metrics, emit, in_flight
        self.nothing_counted_s, self.progress_s, self.repeat_s = nothing_counted_s, progress_s, repeat_s
        self.started_at = time.time() if started_at is None else started_at  # wall clock: file mtimes
        self.counted_before = counted_before  # frames the journal holds already (a restart)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # not counted since the last counted frame
        self._uncounted: Counter = Counter()
        self._examples: dict[str, list[str]] = {}
        self._channels_seen: Counter = Counter()
        self._first_uncounted: float | None = None
        self._reported_at: float | None = None   # the last nothing_counted message (None: not in that state)
        self._reported_total = 0                  # uncounted files named by it
        self._pending_resolved = False            # counting resumed after a warning: say so
        # counted since the last progress line
        self._counted = 0
        self._backlog = 0
        self._latencies: list[float] = []
        self._last: tuple[str, str, int, int] | None = None
        self._total = 0
        self._progress_at = time.monotonic()

    # --- hooks (stage threads) ---------------------------------------------------------------

    def ignored(self, rel: str, reason: str, channel: str | None = None) -> None:
        """A file the gate will not read: `other_channel` (its channel is not one the model needs)
        or `unmatched_name` (the naming preset does not match it)."""
        with self._lock:
            if reason == "other_channel" and (self._total or self.counted_before):
                return  # the model's channel has been counted in this acquisition: other channels are expected
            if channel:
                self._channels_seen[channel] += 1
            self._not_counted(reason, rel)

    def committed(self, group: list) -> None:
        """Frames and failures the commit thread has journaled (ScoredFrame or FailedFrame items)."""
        now_wall = time.time()
        with self._lock:
            for item in group:
                if isinstance(item, FailedFrame):
                    self._not_counted("quarantined", f"{item.file.rel}: {item.reason}")
                    continue
                if not isinstance(item, ScoredFrame):
                    continue  # status and layout events
                shape = item.outputs.shape
                if self._smaller_than_tile(item.outputs):
                    self.metrics.frames.labels("smaller_than_tile").inc()
                    self._not_counted("smaller_than_tile",
                                      f"{item.file.rel} ({shape[-1]}x{shape[-2]} px)")
                    continue
                self._count(item.file, now_wall)

    # --- the reporting thread ----------------------------------------------------------------

    def start(self) -> "Diagnostics":
        self._thread = threading.Thread(target=self._run, name="diagnostics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        """Say what is due: "nothing counted" (rate-limited), a progress line."""
        events = []
        with self._lock:
            warning = self._nothing_counted_due(now)
            if warning is not None:
                events.append(warning)
            if self.progress_s and self._counted and now - self._progress_at >= self.progress_s:
                events.append(self._progress(now))
        for event in events:
            self.emit(event)

    # --- inside the lock ---------------------------------------------------------------------

    def _not_counted(self, reason: str, example: str) -> None:
        self._uncounted[reason] += 1
        examples = self._examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES:
            examples.append(example)
        if self._first_uncounted is None:
            self._first_uncounted = time.monotonic()

    def _smaller_than_tile(self, outputs: FrameOutputs) -> bool:
        """A tiling model's frame that gave no tile at all (not even an empty one): too small to score."""
        tile = self.expects.tile_size
        if tile is None or outputs.cells is not None:
            return False
        return len(outputs.tile_origins) + outputs.n_empty == 0 and min(outputs.shape[-2:]) < tile

    def _count(self, job, now_wall: float) -> None:
        self._counted += 1
        self._total += 1
        m = job.meta
        self._last = (m.well, str(m.plate), m.field, m.timepoint)
        t_file = job.mtime_ns / 1e9
        if t_file < self.started_at:
            self._backlog += 1  # already there at start: its age is not the pipeline's latency
        else:
            self._latencies.append(max(0.0, now_wall - t_file))
        if self._reported_at is not None:
            self.metrics.nothing_counted.set(0)
            log.info("frames are counted again (%s %s field %d)", m.plate, m.well, m.field)
            self._pending_resolved = True
        self._uncounted.clear()
        self._examples.clear()
        self._channels_seen.clear()
        self._first_uncounted = None
        self._reported_at = None
        self._reported_total = 0

    def _nothing_counted_due(self, now: float) -> StatusEvent | None:
        if self._pending_resolved:
            self._pending_resolved = False
            return StatusEvent("nothing_counted", {"event": "resolved"})
        total = sum(self._uncounted.values())
        if (not total or self._first_uncounted is None or now - self._first_uncounted < self.nothing_counted_s
                or total == self._reported_total or self.in_flight() > 0):
            return None  # nothing new, too early, or frames still on their way to be counted
        if self._reported_at is not None and now - self._reported_at < self.repeat_s:
            return None
        self._reported_at, self._reported_total = now, total
        self.metrics.nothing_counted.set(1)
        body = {"event": "warning", "files": total, "reasons": dict(self._uncounted),
                "channels_seen": sorted(self._channels_seen), "examples": {k: list(v) for k, v in self._examples.items()},
                "expects": {"channels": list(self.expects.channels), "naming": self.expects.naming,
                            "tile_size": self.expects.tile_size, "model": self.expects.model}}
        body["message"] = self.explain(body)
        log.warning("%s", body["message"])
        return StatusEvent("nothing_counted", body)

    def explain(self, body: dict) -> str:
        """One line: how many files, why each kind was not counted, what the configuration expects."""
        r, ex, expects = body["reasons"], body["examples"], body["expects"]
        parts = []
        if r.get("other_channel"):
            parts.append(f"{r['other_channel']} in channel(s) {', '.join(body['channels_seen'])}, none of which "
                         f"channels.label_free/segment_on names (expected {', '.join(expects['channels'])})")
        if r.get("unmatched_name"):
            parts.append(f"{r['unmatched_name']} whose names watch.naming = {expects['naming']!r} does not match "
                         f"(e.g. {ex['unmatched_name'][0]})")
        if r.get("quarantined"):
            parts.append(f"{r['quarantined']} quarantined (e.g. {ex['quarantined'][0]})")
        if r.get("smaller_than_tile"):
            parts.append(f"{r['smaller_than_tile']} frame(s) smaller than one {expects['tile_size']} px tile of "
                         f"model {expects['model']!r}, so no tile to score (e.g. {ex['smaller_than_tile'][0]})")
        return f"nothing counted: {body['files']} file(s) arrived but none became a counted frame: " + "; ".join(parts)

    def _progress(self, now: float) -> StatusEvent:
        seconds = now - self._progress_at
        well, plate, field_, timepoint = self._last
        lat = sorted(self._latencies)
        body = {"frames": self._counted, "seconds": round(seconds, 1), "total": self._total,
                "last": {"plate": plate, "well": well, "field": field_, "timepoint": timepoint},
                "latency_ms": ({"median": round(statistics.median(lat) * 1000, 1), "max": round(lat[-1] * 1000, 1)}
                               if lat else None),
                "backlog_frames": self._backlog, "waiting": self.in_flight(), "started_at": self.started_at}
        latency = (f"file->count {body['latency_ms']['median']:.0f} ms median, {body['latency_ms']['max']:.0f} ms max"
                   if lat else "no live frames")
        backlog = f"; {self._backlog} from the backlog of files present at start" if self._backlog else ""
        log.info("counted %d frames in %.0f s (%d in all); last %s %s field %d t%d; %s%s; %d on their way",
                 self._counted, seconds, self._total, plate, well, field_, timepoint, latency, backlog, body["waiting"])
        self._counted, self._backlog, self._latencies, self._progress_at = 0, 0, [], now
        return StatusEvent("progress", body)
