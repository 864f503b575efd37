"""The pipeline's parts without its threads: prepare_frame, the commit builder, the ledger, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.core.aggregate import PlateAggregate
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.daemon.stages.commit import CommitBuilder
from wellwatch.daemon.messages import FailedFrame, FrameFile, ScoredFrame, StatusEvent
from wellwatch.daemon.journal import Journal
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.core.naming import FrameMeta
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.preprocess import prepare_tiles
from wellwatch.core.scoring import FrameOutputs
from wellwatch.daemon.recovery import recover
from wellwatch.core.segmentation.classical import ClassicalParams, segment_classical
from wellwatch.core.bundled_models import bundled_demo_model
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def contract():
    return OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract


@pytest.fixture(scope="module")
def frame():
    field = next(iter(iter_fields(SimulationSpec(plate_name="p", wells=("A1",), fields=1, timepoints=1, seed=3))))
    return field.images["BF"]


def test_prepare_frame_is_the_tiles_and_cells_in_one_call(contract, frame):
    plain = prepare_frame(frame, contract)
    patches, origins, empty = prepare_tiles([frame], contract)
    assert np.array_equal(plain.patches, patches) and np.array_equal(plain.tile_origins, origins[~empty])
    assert plain.n_empty == int(empty.sum()) and plain.cells is None and plain.seg_input is None
    params = ClassicalParams(texture_window=5, threshold_factor=0.6, smooth_sigma=1.0, closing_radius=0,
                             min_distance=6, min_area=60, downsample=1, dist_sigma=1.0)  # simulated BF cells
    seg = prepare_frame(frame, contract, segmentation="classical", classical=params)
    assert len(seg.cells) == segment_classical(frame, params).max() > 0 and seg.segment_s >= 0
    with pytest.raises(ValueError, match="seg_model"):
        prepare_frame(frame, contract, segmentation="model")
    with pytest.raises(ValueError, match="allowed: none, classical, model"):
        prepare_frame(frame, contract, segmentation="watershed")


def _job(rel: str, field: int = 1, sha_size: int = 10) -> FrameFile:
    return FrameFile(f"/acq/{rel}", rel, FrameMeta("p", "A1", field, 0, 0, "BF"), sha_size, 123)


def _scored(job: FrameFile, contract, sha: str, dead: int, live: int, members: tuple = ()) -> ScoredFrame:
    scores = np.zeros((dead + live, len(contract.classes)), np.float32)
    scores[:dead, contract.positive_index] = 1.0
    scores[dead:, 1 - contract.positive_index] = 1.0
    return ScoredFrame(job, sha, FrameOutputs((64, 64), np.zeros((dead + live, 2), np.int64), 2, scores),
                       members=members)


def test_commit_builder_numbers_messages_and_versions_without_threads(tmp_path, contract):
    journal = Journal(tmp_path / "j.sqlite")
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(2), seq=41)
    a, b = _job("a.tif", 1), _job("b.tif", 2)
    group = [StatusEvent("daemon", {"event": "started"}), _scored(a, contract, "s1", dead=1, live=3),
             FailedFrame(b, "s2", "damaged"), _scored(a, contract, "s1", dead=1, live=3)]
    built = builder.build(group, journal)
    assert [m.seq for m in built.messages] == [42, 43, 44, 45]  # status, frame + well, quarantine
    assert [m.payload["seq"] for m in built.messages] == [42, 43, 44, 45]
    assert [m.topic for m in built.messages] == ["status/daemon", "frame/p/A1", "well/p/A1", "status/quarantine"]
    assert built.outcomes == ["processed", "quarantined"] and [j.rel for j in built.duplicates] == ["a.tif"]
    frame_msg = built.messages[1].payload
    assert frame_msg["counts"] == {"live": 3, "dead": 1, "empty": 2} and frame_msg["version"] == 1
    assert built.messages[2].payload["fields_expected"] == 2 and built.messages[2].payload["frames"] == 1
    journal.commit(built.records, built.messages)
    again = builder.build([_scored(a, contract, "s3", dead=0, live=1)], journal)  # new content, same path
    assert again.records[0].version == 2 and again.messages[0].seq == 46
    journal.commit(again.records, again.messages)
    restored = builder.build([_scored(a, contract, "s1", dead=1, live=3)], journal)  # back to the first pixels
    assert [r.version for r in restored.records] == [3] and not restored.duplicates
    journal.commit(restored.records, restored.messages)
    assert journal.latest_sha256("a.tif") == "s1" and journal.latest_version("a.tif") == 3
    journal.close()


def test_ledger_and_recovery_agree_with_the_journal(tmp_path, contract):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(0), seq=0)
    built = builder.build([_scored(_job("a.tif"), contract, "s1", dead=2, live=2)], journal)
    journal.commit(built.records, built.messages)
    journal.mark_sent(built.messages[-1].seq)
    journal.close()

    ledger, aggregate = FrameLedger(), PlateAggregate(0)
    state = recover(path, ledger, aggregate)
    assert state.seq == state.last_sent == 2 and state.unsent == []
    assert [m["type"] for m in state.snapshot_state] == ["well"]
    assert not ledger.needs_look(("a.tif", 10, 123)) and ledger.needs_look(("a.tif", 11, 123))
    assert ledger.is_latest_content("a.tif", "s1") and not ledger.is_latest_content("a.tif", "s2")
    ledger.remember("a.tif", 11, 124, "s2")  # a new version; then the file is restored, mtime and all
    assert ledger.needs_look(("a.tif", 10, 123)) and not ledger.is_latest_content("a.tif", "s1")
    ledger.unchanged("a.tif", 11, 999)  # touched: same content, new mtime
    assert not ledger.needs_look(("a.tif", 11, 999)) and ledger.is_latest_content("a.tif", "s2")
    assert ledger.claim("b.tif") and not ledger.claim("b.tif") and not ledger.needs_look(("b.tif", 1, 1))
    ledger.release("b.tif")
    assert ledger.claim("b.tif")


def _field_job(well: str, field: int, timepoint: int, channel: str = "BF") -> FrameFile:
    rel = f"{well}--P{field:05d}--T{timepoint:05d}--{channel}.tif"
    return FrameFile(f"/acq/{rel}", rel, FrameMeta("p", well, field, timepoint, 0, channel), 10, 123)


def test_a_written_plate_caught_up_in_one_group_counts_every_field(tmp_path, contract):
    """Defect 4: a daemon starting on a written plate gets a well's files in name order (field 1 at
    every timepoint, then field 2), so field 2 of t0 arrives after t0 left memory (two timepoints are
    kept) and is refilled from the journal, while field 1 of t0 is in the same uncommitted group."""
    journal = Journal(tmp_path / "j.sqlite")
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(2), seq=0)
    group = [_scored(_field_job("A1", field, t), contract, f"s{field}{t}", dead=1, live=3)
             for field in (1, 2) for t in range(4)]
    built = builder.build(group, journal)
    journal.commit(built.records, built.messages)
    last = {m.payload["timepoint"]: m.payload for m in built.messages if m.payload["type"] == "well"}
    assert {t: (w["frames"], w["complete"]) for t, w in last.items()} == {t: (2, True) for t in range(4)}
    assert {t: w["counts"] for t, w in last.items()} == {t: {"live": 6, "dead": 2, "empty": 4} for t in range(4)}
    journal.close()


def test_an_evicted_timepoint_refilled_from_the_journal_ignores_joined_channel_files(tmp_path, contract):
    """A LIVE file journaled beside its field's BF file carries no counts: refilling an evicted
    timepoint from the journal must not put it in the BF file's place (a None count broke the sum)."""
    journal = Journal(tmp_path / "j.sqlite")
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(2), seq=0)
    for field, t in [(1, 0), (1, 1), (1, 2), (2, 0)]:  # one commit each: the refill reads the journal
        work = _scored(_field_job("A1", field, t), contract, f"s{field}{t}", dead=1, live=3,
                       members=((_field_job("A1", field, t, "LIVE"), f"live{field}{t}"),))
        built = builder.build([work], journal)
        journal.commit(built.records, built.messages)
    well = [m.payload for m in built.messages if m.payload["type"] == "well"][-1]
    assert (well["timepoint"], well["frames"], well["complete"]) == (0, 2, True)
    assert well["counts"] == {"live": 6, "dead": 2, "empty": 4}
    journal.close()


def test_a_joined_field_scored_again_for_a_rewritten_partner_is_one_new_version_of_each_file(tmp_path, contract):
    """The BF file is unchanged, its LIVE partner re-written: the field is a new version (both files,
    one seq, counts on the BF row, replacing the old ones in the well); the same field again is a
    duplicate of both files. Recovery tells the ledger which files made the field."""
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(1), seq=0)
    bf, live = _field_job("A1", 1, 0), _field_job("A1", 1, 0, "LIVE")

    def field(live_sha: str, dead: int):
        work = _scored(bf, contract, "bf1", dead=dead, live=4 - dead, members=((live, live_sha),))
        built = builder.build([work], journal)
        journal.commit(built.records, built.messages)
        return built

    field("live1", dead=1)
    again = field("live2", dead=3)
    assert [(r.path, r.version, r.sha256, r.dead) for r in again.records] == [
        (bf.rel, 2, "bf1", 3), (live.rel, 2, "live2", None)]
    assert {r.seq for r in again.records} == {again.messages[1].seq} and not again.duplicates
    well = again.messages[1].payload
    assert (well["frames"], well["counts"]["dead"]) == (1, 3)  # replaced, not added
    same = field("live2", dead=3)
    assert same.records == [] and [j.rel for j in same.duplicates] == [bf.rel, live.rel]
    journal.close()

    ledger = FrameLedger(joins_channels=True)
    recover(path, ledger, PlateAggregate(1))
    assert ledger.field_files(("p", "A1", 0, 1, 0)) == {"BF": bf.rel, "LIVE": live.rel}
