"""One definition of a well's images and completeness (core/aggregate.py), used by the daemon's
well messages, `wellwatch results`' tables, the dashboard's history and reprocess; and a joined
channel's file belongs to its field's row, never a row of its own.

The journals here are real SQLite files written by the daemon's own commit builder."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from wellwatch.core.aggregate import PlateAggregate, image_key, well_complete
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.daemon.stages.commit import CommitBuilder
from wellwatch.core.scoring import FrameOutputs
from wellwatch.daemon.messages import FrameFile, ScoredFrame
from wellwatch.daemon.journal import Journal
from wellwatch.core.naming import FrameMeta
from wellwatch.core.bundled_models import bundled_demo_model
from wellwatch.results.journal_reader import JournalView
from wellwatch.results.tables import write_results
from wellwatch.scale.reprocess import well_rows as reprocess_well_rows

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def contract():
    return OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract


def scored(contract, rel: str, meta: FrameMeta, sha: str, members: tuple = ()) -> ScoredFrame:
    job = FrameFile(f"/acq/{rel}", rel, meta, 10, 123)
    scores = np.zeros((4, len(contract.classes)), np.float32)
    scores[:1, contract.positive_index] = 1.0
    scores[1:, 1 - contract.positive_index] = 1.0
    return ScoredFrame(job, sha, FrameOutputs((64, 64), np.zeros((4, 2), np.int64), 2, scores), members=members)


def journal_of(tmp_path, contract, works: list[ScoredFrame], images_expected: int):
    """Commit `works` as the daemon does; -> (journal path, the daemon's last well message)."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    builder = CommitBuilder(contract, {"demo": "abc"}, PlateAggregate(images_expected), seq=0)
    built = builder.build(works, journal)
    journal.commit(built.records, built.messages)
    journal.mark_sent(built.messages[-1].seq)
    journal.close()
    return path, [m.payload for m in built.messages if m.payload["type"] == "well"][-1]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_definition():
    assert image_key(2, None) == (2, 0) and image_key(None, 3) == (0, 3)
    assert well_complete(10, 10) and not well_complete(9, 10) and not well_complete(5, None)


def test_a_z_stack_is_ten_images_of_one_field_in_the_daemon_the_tables_and_the_dashboard(tmp_path, contract):
    """Defect 8: an .nd2 of 10 z planes; the layout expects 1 field x 10 planes = 10 images."""
    works = [scored(contract, f"plate.nd2#{z}", FrameMeta("p", "A1", 0, 0, z, "BF"), f"s{z}") for z in range(10)]
    journal, daemon_says = journal_of(tmp_path, contract, works, images_expected=10)
    assert (daemon_says["frames"], daemon_says["fields_expected"], daemon_says["complete"]) == (10, 10, True)

    _, wells_csv, _, _ = write_results(journal, tmp_path / "results.csv")
    [row] = read_csv(wells_csv)
    assert (row["fields"], row["images"], row["images_expected"], row["complete"]) == ("1", "10", "10", "True")

    [history] = JournalView(journal).wells()  # the dashboard's time courses from the journal
    assert (history["frames"], history["fields"], history["fields_expected"], history["complete"]) == \
        (10, 1, 10, True)
    assert history["counts"] == daemon_says["counts"]


def test_reprocess_counts_z_planes_and_keeps_every_timepoint():
    frames = [{"state": "done", "plate": "p", "well": "A1", "timepoint": t, "field": 0, "z": z, "live": 3,
               "dead": 1, "empty": 0, "cells": None, "cell_live": None, "cell_dead": None, "cell_types": None}
              for t in range(4) for z in range(10)]
    rows = reprocess_well_rows(frames, fields_expected=10)
    assert [(r["timepoint"], r["frames"], r["complete"]) for r in rows] == [(t, 10, True) for t in range(4)]


def test_a_joined_channel_is_on_its_fields_row_in_results_and_the_qc_table(tmp_path, contract):
    """BF scored with LIVE and PI joined: one row per field, not three."""
    works = []
    for field in (1, 2):
        members = tuple((FrameFile(f"/acq/A1_f{field}_{c}.tif", f"A1_f{field}_{c}.tif",
                                  FrameMeta("p", "A1", field, 0, 0, c), 10, 123), f"{c}{field}")
                        for c in ("LIVE", "PI"))
        works.append(scored(contract, f"A1_f{field}_BF.tif", FrameMeta("p", "A1", field, 0, 0, "BF"), f"bf{field}",
                            members))
    journal, daemon_says = journal_of(tmp_path, contract, works, images_expected=2)
    assert (daemon_says["frames"], daemon_says["complete"]) == (2, True)

    out, wells_csv, n_frames, _ = write_results(journal, tmp_path / "results.csv")
    rows = read_csv(out)
    assert n_frames == len(rows) == 2
    assert [(r["file"], r["channels"], r["channel_files"]) for r in rows] == [
        (f"A1_f{f}_BF.tif", "BF;LIVE;PI", f"A1_f{f}_BF.tif;A1_f{f}_LIVE.tif;A1_f{f}_PI.tif") for f in (1, 2)]
    [well] = read_csv(wells_csv)
    assert (well["fields"], well["images"], well["complete"], well["live"]) == ("2", "2", "True", "6")

    qc = JournalView(journal).frames("p", "A1")  # what the dashboard's QC table lists
    assert [(f["path"], f["channels"]) for f in qc] == [(f"A1_f{f}_BF.tif", ["BF", "LIVE", "PI"]) for f in (1, 2)]


def test_counts_of_a_joined_channel_field_are_the_daemons(tmp_path, contract):
    works = [scored(contract, "A1_f1_BF.tif", FrameMeta("p", "A1", 1, 0, 0, "BF"), "bf",
                    ((FrameFile("/acq/A1_f1_PI.tif", "A1_f1_PI.tif", FrameMeta("p", "A1", 1, 0, 0, "PI"), 10, 1),
                      "pi"),))]
    journal, daemon_says = journal_of(tmp_path, contract, works, images_expected=1)
    [history] = JournalView(journal).wells()
    assert history["counts"] == daemon_says["counts"] == {"live": 3, "dead": 1, "empty": 2}
    assert history["complete"] is daemon_says["complete"] is True
