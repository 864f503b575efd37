"""The commit stage (thread "commit"): outcomes -> journal rows + stream messages, numbered by seq.

`CommitStage` takes what the commit queue holds (scored and failed frames, status events, the plate
layout), as many as are waiting, and commits them in one transaction; then it tells the ledger and
the diagnostics, and puts the messages on the publisher's queue. `CommitBuilder` owns the seq
counter, the per-well aggregates and the models' identities; its `build` turns a group of outcomes
into the frame records and outbox messages one transaction writes. A multi-channel field is one
scored frame: its first channel's file carries the counts, its other channel files are journaled
beside it (state done, no counts). With a plate layout, `status/plate` announces each timepoint at
which every expected well is complete, and the whole plate once all are. A scored frame's counts come
from `core.scoring.frame_counts`, the one scoring function reprocessing uses too. The builder reads
the journal (duplicates, versions) through the connection it is given, so a test drives it with a real
journal and no threads.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from typing import Iterable
from dataclasses import dataclass, field

from wellwatch.core.aggregate import PlateAggregate, TileCounts, cell_fields, live_fraction
from wellwatch.core.contract import ModelContract
from wellwatch.core.intervals import live_fraction_fields
from wellwatch.core.scoring import frame_counts
from wellwatch.core.stream_schema import envelope, frame_topic, status_topic, well_topic
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.diagnostics import Diagnostics
from wellwatch.daemon.dose_publisher import DosePublisher, dose_message
from wellwatch.daemon.journal import FrameRecord, Journal, OutboxMessage
from wellwatch.daemon.messages import STOP, FailedFrame, FrameFile, LayoutEvent, ScoredFrame, StatusEvent

log = logging.getLogger(__name__)

_COMMIT_GROUP = 256  # outcomes per transaction at most


@dataclass
class Built:
    """What one group of outcomes becomes: one journal transaction, then these messages published."""
    records: list[FrameRecord] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # processed / quarantined, per record
    duplicates: list[FrameFile] = field(default_factory=list)  # their path's latest version has this content


class CommitBuilder:
    def __init__(self, contract: ModelContract, models: dict[str, str], aggregate: PlateAggregate, seq: int,
                 cell_type: ModelContract | None = None, dose: DosePublisher | None = None,
                 well_history: Iterable[dict] = (), cell_live_dead: ModelContract | None = None,
                 source: str | None = None, interval_level: float = 0.9):
        self.contract, self.models, self.aggregate, self.seq = contract, models, aggregate, seq
        self.interval_level = interval_level  # nominal level of the calibrated per-well intervals
        self.cell_type, self.cell_live_dead, self.source = cell_type, cell_live_dead, source
        self._pending: list[FrameRecord] = []
        # (plate, timepoint) and plates already announced complete (after a restart: all that are)
        self.announced: set = set()
        for plate, _, timepoint in list(aggregate.wells):
            if (p := aggregate.plate_progress(plate, timepoint)) is not None:
                if p["timepoint_complete"]:
                    self.announced.add((plate, timepoint))
                if p["plate_complete"]:
                    self.announced.add(plate)
        self.dose = dose  # [plate] map: dose fits go out with the well message that completes a timepoint
        if dose is not None:  # after a restart: the wells the fits stand on (fits already sent are journaled);
            for message in well_history:  # every timepoint, from the journal (the aggregate keeps the latest)
                dose.observe(message)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def build(self, group: list, journal: Journal) -> Built:
        """Number and describe a group of outcomes; `journal` answers what was committed before."""
        built = Built()
        self._pending = built.records  # this group's records: not in the journal until it commits
        latest: dict[str, tuple[int, str]] = {}  # path -> (version, sha256) assigned in this group
        for msg in group:
            if isinstance(msg, StatusEvent):
                built.messages.append(self.status_message(msg))
                continue
            if isinstance(msg, LayoutEvent):
                if self.aggregate.layout is None:
                    self.aggregate.layout = msg.layout
                summary = msg.layout.summary()
                summary["layout_file"] = summary.pop("source")  # `source` names the daemon in every message
                built.messages.append(self.status_message(StatusEvent("plate", {"event": "layout", **summary})))
                continue
            job, sha = msg.file, msg.sha256
            sha = sha or f"unread:{job.size}:{job.mtime_ns}"
            previous = latest.get(job.rel) or (journal.latest_version(job.rel), journal.latest_sha256(job.rel))
            if previous[1] == sha and not self.member_is_new(msg, latest, journal):
                built.duplicates.append(job)  # the path's latest version already holds this content
                built.duplicates.extend(member for member, _ in getattr(msg, "members", ()))
                continue
            version = previous[0] + 1
            latest[job.rel] = (version, sha)
            if isinstance(msg, FailedFrame):
                record, new = self.quarantined(msg, sha, version)
                built.outcomes.append("quarantined")
            else:
                record, new = self.scored(msg, version, journal)
                built.outcomes.append("processed")
            built.records.append(record)
            built.messages.extend(new)
            if isinstance(msg, ScoredFrame):
                for member, member_sha in msg.members:  # each scoring of a field names all its files
                    prior = latest.get(member.rel) or (journal.latest_version(member.rel),
                                                       journal.latest_sha256(member.rel))
                    latest[member.rel] = (prior[0] + 1, member_sha)
                    built.records.append(self.member_record(member, member_sha, prior[0] + 1, record))
        return built

    @staticmethod
    def member_is_new(msg, latest: dict, journal: Journal) -> bool:
        """A joined field whose scored file is unchanged is still new when another of its channel
        files was re-written: the field is scored again, every file of it a new version."""
        return any(sha != (latest.get(member.rel) or (None, journal.latest_sha256(member.rel)))[1]
                   for member, sha in getattr(msg, "members", ()))

    def member_record(self, job, sha: str, version: int, scored: FrameRecord) -> FrameRecord:
        """A channel file scored as part of another's field: journaled (done once), counted there."""
        m = job.meta
        return FrameRecord(job.rel, job.size, job.mtime_ns, sha, version, "done", f"channel of {scored.path}",
                           m.plate, m.well, m.field, m.timepoint, m.z, m.channel, None, None, None,
                           job.mtime_ns / 1e9, time.time(), scored.seq)

    def plate_messages(self, plate: str, timepoint: int) -> list[OutboxMessage]:
        """status/plate when this timepoint, or the whole plate, has just become complete."""
        progress = self.aggregate.plate_progress(plate, timepoint)
        out = []
        if progress is None:
            return out
        if progress["timepoint_complete"] and (plate, timepoint) not in self.announced:
            self.announced.add((plate, timepoint))
            out.append(self.status_message(StatusEvent("plate", {"event": "timepoint_complete", **progress})))
        if progress["plate_complete"] and plate not in self.announced:
            self.announced.add(plate)
            log.info("plate %s complete: every expected well at every timepoint", plate)
            out.append(self.status_message(StatusEvent("plate", {"event": "complete", **progress})))
        return out

    def status_message(self, event: StatusEvent) -> OutboxMessage:
        seq = self.next_seq()
        return OutboxMessage(seq, status_topic(event.kind),
                             envelope(seq, "status", self.models, source=self.source, kind=event.kind, **event.body))

    def quarantined(self, failed: FailedFrame, sha: str, version: int) -> tuple[FrameRecord, list[OutboxMessage]]:
        job, meta = failed.file, failed.file.meta
        log.error("quarantined %s: %s", job.rel, failed.reason)
        seq = self.next_seq()
        message = OutboxMessage(seq, status_topic("quarantine"), envelope(
            seq, "status", self.models, meta.plate, meta.well, meta.timepoint, source=self.source,
            kind="quarantine", path=job.rel, reason=failed.reason, attempts=job.attempt + 1))
        record = FrameRecord(job.rel, job.size, job.mtime_ns, sha, version, "quarantined", failed.reason,
                             meta.plate, meta.well, meta.field, meta.timepoint, meta.z, meta.channel,
                             None, None, None, job.mtime_ns / 1e9, time.time(), message.seq)
        return record, [message]

    def scored(self, work: ScoredFrame, version: int, journal: Journal) -> tuple[FrameRecord, list[OutboxMessage]]:
        job, meta = work.file, work.file.meta
        counts = frame_counts(work.outputs, self.contract, self.cell_type, self.cell_live_dead)
        state = self.aggregate.add(meta.plate, meta.well, meta.timepoint, meta.field, counts, z=meta.z,
                                   history=lambda: self.history(journal, meta.plate, meta.well, meta.timepoint))
        seq = self.next_seq()
        frame_msg = OutboxMessage(seq, frame_topic(meta.plate, meta.well), envelope(
            seq, "frame", self.models, meta.plate, meta.well, meta.timepoint, source=self.source,
            path=job.rel, version=version, field=meta.field, z=meta.z, channel=meta.channel,
            counts={"live": counts.live, "dead": counts.dead, "empty": counts.empty},
            live_fraction=live_fraction(counts.live, counts.dead), unit="tile", **cell_fields(counts),
            t_file=job.mtime_ns / 1e9, channels=list(work.channels) or [meta.channel],
            pixel_size_um=job.pixel_size_um, **self.calls_usable_fields()))
        seq = self.next_seq()
        well_msg = OutboxMessage(seq, well_topic(meta.plate, meta.well), envelope(
            seq, "well", self.models, meta.plate, meta.well, meta.timepoint, source=self.source,
            **self.aggregate.summary(state), **self.interval_fields(state.totals())))
        record = FrameRecord(job.rel, job.size, job.mtime_ns, work.sha256, version, "done", None,
                             meta.plate, meta.well, meta.field, meta.timepoint, meta.z, meta.channel,
                             counts.live, counts.dead, counts.empty, job.mtime_ns / 1e9, time.time(), well_msg.seq,
                             counts.cells, counts.cell_live, counts.cell_dead,
                             json.dumps(counts.cell_types) if counts.cell_types is not None else None,
                             counts.dead_p_sum, counts.cell_dead_p_sum)
        return record, [frame_msg, well_msg, *self.plate_messages(meta.plate, meta.timepoint),
                        *self.dose_messages(well_msg.payload)]

    def history(self, journal: Journal, plate: str, well: str, timepoint: int) -> list[tuple]:
        """An evicted timepoint's images, oldest first: those committed, then those of the group
        being built. Catching up on a written plate (names sorted field by field) evicts a timepoint
        and brings its next field in the same group as its first one, which the journal lacks yet."""
        key = (plate, well, timepoint)
        pending = [(r.field, r.z or 0, r.counts()) for r in self._pending
                   if r.state == "done" and r.live is not None and (r.plate, r.well, r.timepoint) == key]
        return journal.field_counts(plate, well, timepoint) + pending

    def calls_usable_fields(self) -> dict:
        """A frame's calls, marked as a calibrated model's verdict says (None: not calibrated)."""
        return {k: v for k, v in self.interval_fields(TileCounts(0, 0, 0, cell_live=0, cell_dead=0)).items()
                if k.endswith("calls_usable")}

    def interval_fields(self, t: TileCounts) -> dict:
        """Calibrated live fractions with intervals (tiles; cells from the per-cell model, else from
        the tile model's calls at centroids) and whether single calls are usable (core/intervals.py)."""
        def calibrated(contract: ModelContract | None, unit: str):  # a tile calibration says nothing of cells
            cal = contract.calibration if contract is not None else None
            return cal if cal is not None and cal.unit == unit else None

        cell_model = self.cell_live_dead or self.contract
        return {**live_fraction_fields(calibrated(self.contract, "tile"), self.interval_level, t.live, t.dead,
                                       t.dead_p_sum),
                **live_fraction_fields(calibrated(cell_model, "cell"), self.interval_level, t.cell_live, t.cell_dead,
                                       t.cell_dead_p_sum, prefix="cell_")}

    def dose_messages(self, well_payload: dict) -> list[OutboxMessage]:
        """`dose/<plate>/<compound>` for each fit this well message makes due (none without a map)."""
        out = []
        for timepoint, body in (self.dose.observe(well_payload) if self.dose is not None else []):
            seq = self.next_seq()
            out.append(OutboxMessage(seq, *dose_message(seq, self.models, well_payload["plate"], timepoint, body,
                                                                  self.source)))
        return out


class CommitStage:
    """The commit thread: groups of outcomes -> one transaction each -> the publisher's queue.

    A database error here is fatal: the daemon stops, and a restart rebuilds the in-memory state
    (aggregates, seq) from the journal, so nothing half-done survives."""

    def __init__(self, ctx: StageContext, builder: CommitBuilder, to_commit: queue.Queue, to_publish: queue.Queue,
                 diagnostics: Diagnostics):
        self.journal_path, self.ledger, self.metrics = ctx.config.journal.path, ctx.ledger, ctx.metrics
        self.builder, self.to_commit, self.to_publish, self.diagnostics = builder, to_commit, to_publish, diagnostics

    def run(self) -> None:
        journal = Journal(self.journal_path)  # this thread's own connection
        try:
            stopping = False
            while not stopping:
                group = [self.to_commit.get()]
                while len(group) < _COMMIT_GROUP:  # whatever else is waiting joins this transaction
                    try:
                        group.append(self.to_commit.get_nowait())
                    except queue.Empty:
                        break
                if group[-1] is STOP:
                    stopping = True
                    group.pop()
                self.metrics.queue_depth.labels("commit").set(self.to_commit.qsize())
                if group:
                    self.commit(group, journal)
        finally:
            journal.close()

    def commit(self, group: list, journal: Journal) -> None:
        """Aggregate, journal and announce a group of outcomes in one transaction."""
        t0 = time.perf_counter()
        built = self.builder.build(group, journal)
        for job in built.duplicates:
            self.metrics.frames.labels("duplicate").inc()
            self.ledger.unchanged(job.rel, job.size, job.mtime_ns)
        journal.commit(built.records, built.messages)
        self.diagnostics.committed(group)
        for record in built.records:
            self.ledger.remember(record.path, record.size, record.mtime_ns, record.sha256)
            self.ledger.remember_field_file(record)
            if record.state == "done" and record.live is not None:  # not a channel file joined into another
                for call in ("live", "dead", "empty"):
                    self.metrics.tiles.labels(call).inc(getattr(record, call))
                if record.version > 1:
                    log.warning("%s was re-written with new content: version %d replaces the earlier result",
                                record.path, record.version)
        for outcome in built.outcomes:
            self.metrics.frames.labels(outcome).inc()
        self.to_publish.put(built.messages)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
